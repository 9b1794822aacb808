"""Command line of ``python -m optimize``: flags to one ``OptimizeConfig``, then the pipeline.

Progress goes to stderr (unless ``--quiet``); ``--json`` prints a summary on stdout.
Exit status: 0 when every model has a selected variant, 1 when one has none, 2 for bad
arguments or a checkpoint that cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optimize.config import DEFAULT_TOL_FP32, DEFAULT_TOL_INT8, KNOWN_MODELS, OptimizeConfig
from optimize.manifest import MANIFEST_NAME, Manifest, Tolerance, VariantName


def _variant_list(text: str) -> tuple[VariantName, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = [v.value for v in VariantName]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return tuple(VariantName(n) for n in names)


def _model_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in KNOWN_MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(unknown) or '(none given)'}; "
            f"write e.g. --models {','.join(KNOWN_MODELS)}"
        )
    return names


def _tolerance(text: str) -> Tolerance:
    try:
        probs, value = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write PROBS,VALUE, e.g. 1e-5,1e-4 (largest absolute errors allowed)"
        ) from None
    if not (probs > 0 and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: both tolerances must be positive")
    return Tolerance(probs=probs, value=value)


def _checkpoint(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or name not in KNOWN_MODELS or not path:
        raise argparse.ArgumentTypeError(
            f"{text!r}: write MODEL=PATH with MODEL one of {', '.join(KNOWN_MODELS)}, "
            "e.g. --checkpoint tactical=weights/tactical.safetensors"
        )
    return name, Path(path)


def _at_least(minimum: int, unit: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: at least {minimum} {unit} are needed")
        return value

    return parse


def _tolerance_text(tol: Tolerance) -> str:
    return f"{tol.probs:g},{tol.value:g}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m optimize",
        description="Build, verify and time each model's variants; select the fastest "
        "within tolerance; write the artifacts and manifest.json.",
    )
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="output directory")
    p.add_argument("--models", type=_model_list, default=KNOWN_MODELS, help="comma-separated")
    p.add_argument(
        "--variants",
        type=_variant_list,
        default=tuple(VariantName),
        help=f"comma-separated subset of {', '.join(VariantName)} "
        "(eager_fp32, the reference, is always built)",
    )
    p.add_argument(
        "--checkpoint",
        type=_checkpoint,
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="weights to optimize instead of the seeded default (repeatable)",
    )
    p.add_argument(
        "--tol-fp32",
        type=_tolerance,
        default=DEFAULT_TOL_FP32,
        metavar="PROBS,VALUE",
        help=f"max abs error for fp32 variants (default {_tolerance_text(DEFAULT_TOL_FP32)})",
    )
    p.add_argument(
        "--tol-int8",
        type=_tolerance,
        default=DEFAULT_TOL_INT8,
        metavar="PROBS,VALUE",
        help=f"max abs error for int8 variants (default {_tolerance_text(DEFAULT_TOL_INT8)})",
    )
    p.add_argument(
        "--calls",
        type=_at_least(10, "calls"),
        default=OptimizeConfig.calls,
        help="timed batch-1 calls per variant (default %(default)s)",
    )
    p.add_argument(
        "--fidelity-rows",
        type=_at_least(1000, "rows"),
        default=OptimizeConfig.fidelity_rows,
        help="rows per held-out realistic set (standard normal, Student-t(3)); default %(default)s",
    )
    p.add_argument(
        "--calibration-rows",
        type=_at_least(64, "rows"),
        default=OptimizeConfig.calibration_rows,
        help="standard-normal rows that calibrate static int8 (default %(default)s)",
    )
    p.add_argument(
        "--int8-batches",
        action="store_true",
        help="let the server serve batches with an eligible int8 variant behind its guards "
        "where it is measured cheaper (default: measured and recorded, not enabled)",
    )
    p.add_argument("--onnx-exporter", choices=("dynamo", "legacy"), default="dynamo")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument(
        "--table",
        action="store_true",
        help="print the fidelity and cost table (Markdown) on stdout",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    # Test hook: make a variant's build raise, to exercise the fallback path for real.
    p.add_argument(
        "--fail-variant", type=VariantName, action="append", default=[], help=argparse.SUPPRESS
    )
    return p


def config_from_args(args: argparse.Namespace) -> OptimizeConfig:
    return OptimizeConfig(
        out_dir=args.out,
        models=args.models,
        variants=args.variants,
        checkpoints=dict(args.checkpoint),
        tolerance_fp32=args.tol_fp32,
        tolerance_int8=args.tol_int8,
        calls=args.calls,
        warmup_calls=min(OptimizeConfig.warmup_calls, args.calls),
        fidelity_rows=args.fidelity_rows,
        calibration_rows=args.calibration_rows,
        int8_batches=args.int8_batches,
        onnx_exporter=args.onnx_exporter,
        fail_variants=frozenset(args.fail_variant),
    )


def summary(manifest: Manifest, out_dir: Path, total_s: float) -> dict[str, Any]:
    models = {}
    for name, record in manifest.models.items():
        models[name] = {
            "selected": record.selected,
            "selection_reason": record.selection_reason,
            "batch_variant": record.batch_variant,
            "batch_min_rows": record.batch_min_rows,
            "batch_selection_reason": record.batch_selection_reason,
            "fallbacks": [{"variant": f.variant, "error": f.error} for f in record.fallbacks],
            "variants": {
                v.name.value: {
                    "status": v.status.value,
                    "within_tolerance": v.within_tolerance,
                    "max_abs_error_probs": v.max_abs_error_probs,
                    "max_abs_error_value": v.max_abs_error_value,
                    "latency_us": v.latency_us.as_dict() if v.latency_us else None,
                    "per_sample_us": v.per_sample_us,
                    "eligible": v.eligible,
                    "eligibility": v.eligibility,
                    "agreement": v.agreement_summary(),
                    "error": v.error,
                }
                for v in record.variants
            },
        }
    return {
        "ok": all(r.selected is not None for r in manifest.models.values()),
        "manifest": str(out_dir / MANIFEST_NAME),
        "wall_time_s": round(total_s, 2),
        "models": models,
    }


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = build_parser().parse_args(argv)
    config = config_from_args(args)

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    # Imported here so that --help and argument errors answer without loading torch.
    from models.policy import CheckpointMismatch
    from optimize.pipeline import run_optimizer

    try:
        manifest = run_optimizer(config, progress=progress)
    except (CheckpointMismatch, FileNotFoundError, KeyError) as exc:
        print(f"python -m optimize: {exc}", file=sys.stderr)
        return 2
    total_s = time.perf_counter() - started
    result = summary(manifest, config.out_dir, total_s)
    progress(f"wrote {result['manifest']} in {total_s:.1f}s")
    if args.json:
        print(json.dumps(result, indent=2))
    if args.table:
        from optimize.table import markdown_table

        print(markdown_table(manifest))
    if not result["ok"]:
        missing = [n for n, r in manifest.models.items() if r.selected is None]
        print(f"python -m optimize: no servable variant for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
