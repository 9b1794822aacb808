"""``python -m benchmarks inprocess|http|compare|protocols|ab|show|ray-paths|front-cap|
capacity`` (see README, sections Performance, Ray Serve and Capacity)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from benchmarks.bodies import Mode
from benchmarks.capacity import add_capacity_arguments, cmd_capacity
from benchmarks.httpbench import HttpSettings, plans, run_target
from benchmarks.loadgen import pick_generator, wrk_path
from benchmarks.results import RESULTS_DIR, busy_machine_warning, new_document, write_document
from benchmarks.stats import (
    BarResult,
    ab_checks,
    ab_summary,
    compute_ratios,
    evaluate_bars,
    protocol_bars,
)
from benchmarks.tables import (
    AB_COLUMNS,
    INPROCESS_COLUMNS,
    PROTOCOL_COLUMNS,
    RUN_COLUMNS,
    ab_rows,
    bars_text,
    bodies_text,
    inprocess_rows,
    markdown_table,
    noise_text,
    protocol_rows,
    ratios_text,
    run_rows,
    text_table,
)
from benchmarks.targets import LaunchOptions, Target
from benchmarks.wire import Protocol


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write counts like 1,16,64") from None


def _mode_list(text: str) -> list[Mode]:
    try:
        return [Mode(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write cold, warm or cold,warm") from None


def _protocol_list(text: str) -> list[Protocol]:
    try:
        return [Protocol(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        names = ",".join(p.value for p in Protocol)
        raise argparse.ArgumentTypeError(f"{text!r}: write some of {names}") from None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="optimizer output directory (default: artifacts)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"result JSON path (default: {RESULTS_DIR.name}/<command>-<time>.json)",
    )


def _http_options(parser: argparse.ArgumentParser, duration: float | None) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=duration,
        help="seconds per measured run (wrk rounds up to whole seconds)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds of warm-up load before each run (default 1, quick 0.5)",
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when on PATH (auto), or the Python one",
    )
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=1,
        help="wrk threads (default 1: leave the cores to the server)",
    )
    parser.add_argument(
        "--noisy-retries",
        type=int,
        default=1,
        help="measure a run again when other processes took >10%% of the CPU (default 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="our server's --workers (default: the server's own default)",
    )
    parser.add_argument(
        "--fronts",
        type=int,
        default=None,
        help="our server's --fronts (default: the server's own default, 1)",
    )
    parser.add_argument(
        "--cache-size",
        type=int,
        default=None,
        help="our server's --cache-size (0 turns its cache off)",
    )
    parser.add_argument(
        "--server-args",
        type=shlex.split,
        default=[],
        help="more flags for our server, in one string: --server-args '--busy-poll-us 0'",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    inproc = sub.add_parser("inprocess", help="every optimizer variant, called in-process")
    _common(inproc)
    inproc.add_argument(
        "--max-time", type=float, default=1.0, help="seconds per variant and batch size (default 1)"
    )
    inproc.add_argument("--max-calls", type=int, default=20_000)

    http = sub.add_parser("http", help="one server on loopback under keep-alive load")
    _common(http)
    http.add_argument("--target", choices=[t.value for t in Target], default="ours")
    http.add_argument("--concurrency", type=_int_list, default=[1, 16, 64])
    http.add_argument(
        "--mode",
        type=_mode_list,
        default=[Mode.COLD],
        help="cold (every observation distinct), warm (64 repeating) or both",
    )
    _http_options(http, duration=10.0)

    compare = sub.add_parser("compare", help="ours and the baselines, ratios and bars")
    _common(compare)
    compare.add_argument(
        "--quick",
        action="store_true",
        help="fewer runs, 2 s each: the whole comparison in about a minute",
    )
    compare.add_argument(
        "--no-inprocess", action="store_true", help="skip the in-process variant table"
    )
    _http_options(compare, duration=None)

    paths = sub.add_parser(
        "ray-paths", help="direct vs Ray Serve HTTP (default proxy, HAProxy) vs handle"
    )
    _common(paths)
    paths.add_argument("--concurrency", type=_int_list, default=[1, 16])
    paths.add_argument("--duration", type=float, default=5.0, help="seconds per run")

    front = sub.add_parser("front-cap", help="the front process's CPU share at full load")
    _common(front)
    front.add_argument("--workers", type=_int_list, default=[1, 2])
    front.add_argument("--clients", type=int, default=64)
    front.add_argument("--duration", type=float, default=5.0)
    front.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")

    capacity = sub.add_parser("capacity", help="replicas a target load needs, from results")
    add_capacity_arguments(capacity)
    protocols = sub.add_parser(
        "protocols", help="our server through native /infer, OIP JSON, OIP binary and gRPC"
    )
    _common(protocols)
    protocols.add_argument(
        "--protocols",
        type=_protocol_list,
        default=list(Protocol),
        help="which protocols (default: " + ",".join(p.value for p in Protocol) + ")",
    )
    protocols.add_argument(
        "--batch", type=_int_list, default=[1, 64], help="observations per request (1,64)"
    )
    protocols.add_argument("--concurrency", type=_int_list, default=[1, 16])
    protocols.add_argument(
        "--no-grpc-floor",
        action="store_true",
        help="skip the gRPC floor (grpc.aio answering a constant, same client)",
    )
    _http_options(protocols, duration=5.0)

    ab = sub.add_parser(
        "ab", help="our server from two source trees, native /infer in interleaved pairs"
    )
    _common(ab)
    ab.add_argument(
        "--baseline-tree",
        type=Path,
        required=True,
        help="root of the checkout to compare against (git worktree add DIR COMMIT)",
    )
    ab.add_argument(
        "--candidate-tree",
        type=Path,
        default=None,
        help="root of the checkout under test (default: this one)",
    )
    ab.add_argument("--concurrency", type=_int_list, default=[1, 16])
    ab.add_argument(
        "--mode", type=_mode_list, default=[Mode.COLD], help="cold (default), warm or both"
    )
    ab.add_argument(
        "--rounds", type=int, default=4, help="pairs per plan, order reversed each (default 4)"
    )
    ab.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="how much worse the candidate may be, as a fraction (default 0.05)",
    )
    _http_options(ab, duration=5.0)

    show = sub.add_parser("show", help="print a saved result's tables and bars again")
    show.add_argument("file", type=Path)
    show.add_argument("--markdown", action="store_true", help="Markdown tables (README)")
    return parser


def _settings(args: argparse.Namespace, quick: bool = False) -> HttpSettings:
    duration = args.duration if args.duration is not None else (2.0 if quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    return HttpSettings(
        duration_s=duration,
        generator=pick_generator(args.generator),
        logs_dir=RESULTS_DIR / "logs",
        warmup_s=warmup,
        wrk_threads=args.wrk_threads,
        noisy_retries=args.noisy_retries,
    )


def _launch(args: argparse.Namespace) -> LaunchOptions:
    return LaunchOptions(
        artifacts=args.artifacts.resolve(),
        workers=args.workers,
        cache_size=args.cache_size,
        fronts=args.fronts,
        server_args=tuple(args.server_args),
    )


def _print_runs(document: dict) -> None:
    if document["runs"]:
        print(text_table(RUN_COLUMNS, run_rows(document["runs"])))
    if document.get("pairs"):
        print("\nmonitoring on/off, interleaved pairs (both servers up, order reversed each pair):")
        print(text_table(RUN_COLUMNS, run_rows(document["pairs"])))
    bodies = bodies_text(document["runs"])
    if bodies:
        print(bodies)
    if document["inprocess"]:
        print()
        print(text_table(INPROCESS_COLUMNS, inprocess_rows(document["inprocess"])))


def _print_noise(document: dict) -> None:
    runs = document["runs"] + document.get("pairs", [])
    noise = noise_text(runs, document["machine"]["cores"] or 1)
    if noise:
        print(noise)


def _warn_if_busy() -> None:
    warning = busy_machine_warning()
    if warning:
        print(warning)


def cmd_inprocess(args: argparse.Namespace) -> int:
    from benchmarks.inprocess import run_inprocess

    document = new_document()
    document["inprocess"] = run_inprocess(
        args.artifacts.resolve(), max_calls=args.max_calls, max_time_s=args.max_time
    )
    _print_runs(document)
    print(f"\nwrote {write_document(document, args.out, 'inprocess')}")
    return 0


def cmd_http(args: argparse.Namespace) -> int:
    settings = _settings(args)
    document = new_document(wrk_path())
    print(f"load generator: {settings.generator}")
    _warn_if_busy()
    document["runs"] = run_target(
        Target(args.target), plans(args.mode, args.concurrency), settings, _launch(args)
    )
    document["ratios"] = compute_ratios(document["runs"])
    _print_runs(document)
    _print_noise(document)
    print(f"\nwrote {write_document(document, args.out, 'http')}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from benchmarks.compare import CompareOptions, run_compare

    settings = _settings(args, quick=args.quick)
    document = new_document(wrk_path())
    print(f"load generator: {settings.generator}; {settings.duration_s:g} s per run")
    _warn_if_busy()
    options = CompareOptions(
        quick=args.quick, settings=settings, launch=_launch(args), inprocess=not args.no_inprocess
    )
    run_compare(options, document)
    print()
    _print_runs(document)
    print("\nratios (ours / baseline; rps above 1 and latency below 1 favour ours):")
    print(ratios_text(document["ratios"]) or "  none (ours did not run)")
    print("\nbars:")
    print(bars_text(evaluate_bars(document["runs"], document["pairs"])))
    _print_noise(document)
    print(f"\nwrote {write_document(document, args.out, 'compare')}")
    return 1 if document.get("failures") else 0


def cmd_ray_paths(args: argparse.Namespace) -> int:
    from benchmarks.raypaths import run_paths

    document = new_document()
    _warn_if_busy()
    document["runs"] = run_paths(args.artifacts.resolve(), args.concurrency, args.duration)
    print()
    _print_runs(document)
    print(f"\nwrote {write_document(document, args.out, 'ray-paths')}")
    return 0


def cmd_front_cap(args: argparse.Namespace) -> int:
    from benchmarks.frontcap import measure_front

    document = new_document(wrk_path())
    generator = pick_generator(args.generator)
    print(f"load generator: {generator}; {args.clients} clients, {args.duration:g} s")
    _warn_if_busy()
    document["front_cap"] = measure_front(
        args.artifacts.resolve(), args.workers, args.clients, args.duration, generator
    )
    print(f"\nwrote {write_document(document, args.out, 'front-cap')}")
    return 0


def _print_protocols(document: dict, markdown: bool = False) -> None:
    runs = document["runs"]
    if markdown:
        print(markdown_table(PROTOCOL_COLUMNS, protocol_rows(runs)))
        print()
        _print_bars_markdown(protocol_bars(runs))
        return
    print(text_table(PROTOCOL_COLUMNS, protocol_rows(runs)))
    print("\nbars:")
    print(bars_text(protocol_bars(runs)))
    _print_noise(document)


def _print_bars_markdown(bars: list[BarResult]) -> None:
    for bar in bars:
        print(f"- **{bar.verdict}**: {bar.name} ({bar.detail})")


def cmd_protocols(args: argparse.Namespace) -> int:
    from benchmarks.protocols import protocol_plans, run_protocols

    settings = _settings(args)
    run_plans = protocol_plans(args.protocols, args.batch, args.concurrency)
    document = new_document(wrk_path())
    document["command"] = "protocols"
    print(f"load generator: {settings.generator} (HTTP), grpc.aio (gRPC)")
    _warn_if_busy()
    document["runs"] = run_protocols(
        run_plans, settings, _launch(args), grpc_floor=not args.no_grpc_floor
    )
    document["bars"] = [bar.to_json() for bar in protocol_bars(document["runs"])]
    print()
    _print_protocols(document)
    print(f"\nwrote {write_document(document, args.out, 'protocols')}")
    return 0


def _print_ab(document: dict, markdown: bool = False) -> None:
    ab = document["ab"]
    checks = ab_checks(ab["summary"], ab["tolerance"])
    trees = ", ".join(f"{label}: {t['path']} at {t['commit']}" for label, t in ab["trees"].items())
    if markdown:
        print(markdown_table(RUN_COLUMNS, run_rows(document["pairs"])))
        print()
        print(markdown_table(AB_COLUMNS, ab_rows(ab["summary"])))
        print()
        _print_bars_markdown(checks)
        return
    print(text_table(RUN_COLUMNS, run_rows(document["pairs"])))
    print(f"\n{trees}")
    print(text_table(AB_COLUMNS, ab_rows(ab["summary"])))
    print("\nchecks (candidate vs baseline, median of the pair ratios):")
    print(bars_text(checks))
    _print_noise(document)


def cmd_ab(args: argparse.Namespace) -> int:
    from benchmarks.ab import run_ab, trees

    if not 0 <= args.tolerance < 1:
        raise ValueError(f"tolerance {args.tolerance}: write a fraction such as 0.05")
    pair = trees(args.baseline_tree, args.candidate_tree)
    settings = _settings(args)
    run_plans = plans(args.mode, args.concurrency)
    document = new_document(wrk_path())
    document["command"] = "ab"
    document["ab"] = {
        "trees": {tree.label: tree.describe() for tree in pair},
        "rounds": args.rounds,
        "tolerance": args.tolerance,
    }
    for label, tree in document["ab"]["trees"].items():
        print(f"{label}: {tree['path']} at {tree['commit']}")
    print(f"load generator: {settings.generator}; {settings.duration_s:g} s per run")
    _warn_if_busy()
    document["pairs"] = run_ab(pair, run_plans, args.rounds, settings, _launch(args))
    document["ab"]["summary"] = ab_summary(document["pairs"])
    document["bars"] = [b.to_json() for b in ab_checks(document["ab"]["summary"], args.tolerance)]
    print()
    _print_ab(document)
    print(f"\nwrote {write_document(document, args.out, 'ab')}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    document = orjson.loads(args.file.read_bytes())
    if document.get("command") == "protocols":
        _print_protocols(document, args.markdown)
        return 0
    if document.get("command") == "ab":
        _print_ab(document, args.markdown)
        return 0
    runs, pairs = document.get("runs", []), document.get("pairs", [])
    if args.markdown:
        print(markdown_table(RUN_COLUMNS, run_rows(runs + pairs)))
        print()
        _print_bars_markdown(evaluate_bars(runs, pairs))
        return 0
    _print_runs(document)
    print("\nbars:")
    print(bars_text(evaluate_bars(runs, pairs)))
    _print_noise(document)
    return 0


COMMANDS = {
    "inprocess": cmd_inprocess,
    "http": cmd_http,
    "compare": cmd_compare,
    "ray-paths": cmd_ray_paths,
    "front-cap": cmd_front_cap,
    "capacity": cmd_capacity,
    "protocols": cmd_protocols,
    "ab": cmd_ab,
    "show": cmd_show,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
