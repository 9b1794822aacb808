"""Latency regression detection, live (the ``latency_regression`` alert) and as a CI command.

A regression needs both statistical significance and a minimum effect, so noise of a loaded
2-core machine and the huge sample counts of a live window (where any shift is "significant")
do not raise it. Two one-sided checks, each at alpha/2:

* center: Mann-Whitney U (new slower than base) and a median ratio >= 1 + ``min_effect``;
* tail: more new samples than chance above (1 + ``min_effect_tail``) x an upper confidence bound
  of the base p99 (a distribution-free order-statistic bound), by a binomial test against the
  1% that lie above p99 when nothing changed.

Base and new may be raw samples (benchmark ``samples_us``) or log-linear bucket counts (the
live window). When a baseline is only a few percentiles (the optimizer's measurement, or a
benchmark run without samples), exceedance tests against those percentiles, or plain ratios with
a stated tolerance, are used instead.

    python -m monitoring.regress BASELINE.json NEW.json     # exit 1 on a significant regression
    python -m monitoring.regress --simulate --trials 2000   # false-alarm rate on unchanged data
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from monitoring.config import RegressionConfig
from monitoring.distributions import (
    binned_mann_whitney_greater,
    binom_ppf,
    binom_sf,
    mann_whitney_greater,
)
from monitoring.histogram import BUCKET_EDGES, BUCKET_MIDPOINTS, bin_counts

# One set of defaults for the live detector and the CLI: the live one's.
DEFAULT_ALPHA = RegressionConfig.alpha
DEFAULT_MIN_EFFECT = RegressionConfig.min_effect
DEFAULT_MIN_EFFECT_TAIL = RegressionConfig.min_effect_tail
DEFAULT_MIN_SAMPLES = RegressionConfig.min_samples
#: Without samples only percentiles can be compared; repeated runs of the same build on this
#: 2-core machine differ by up to ~20% at p50 and more at p99, hence these tolerances.
DEFAULT_TOLERANCE_P50 = 0.25
DEFAULT_TOLERANCE_P99 = 0.50


@dataclass(frozen=True)
class Verdict:
    regression: bool
    method: str
    reason: str
    n_base: int = 0
    n_new: int = 0
    p_center: float | None = None
    p_tail: float | None = None
    ratio_p50: float | None = None
    ratio_p99: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Samples:
    def __init__(self, values: Sequence[float] | np.ndarray) -> None:
        self.values = np.sort(np.asarray(values, dtype=np.float64))
        self.n = int(self.values.size)

    def order_stat(self, rank: int) -> float:
        """The rank-th smallest value, 1-based."""
        return float(self.values[min(max(rank, 1), self.n) - 1])

    def count_above(self, threshold: float) -> int:
        return int(self.n - np.searchsorted(self.values, threshold, side="right"))

    def counts(self) -> np.ndarray:
        return bin_counts(self.values)


class _Binned:
    def __init__(self, counts: np.ndarray) -> None:
        self.bins = np.asarray(counts, dtype=np.int64)
        self.cumulative = np.cumsum(self.bins)
        self.n = int(self.cumulative[-1])

    def order_stat(self, rank: int) -> float:
        rank = min(max(rank, 1), self.n)
        return float(BUCKET_MIDPOINTS[int(np.searchsorted(self.cumulative, rank))])

    def count_above(self, threshold: float) -> int:
        """Observations in buckets lying wholly above ``threshold`` (conservative)."""
        first = int(np.searchsorted(BUCKET_EDGES[:-1], threshold, side="right"))
        return int(self.bins[first:].sum())

    def counts(self) -> np.ndarray:
        return self.bins


_Dist = _Samples | _Binned


def _quantile(dist: _Dist, q: float) -> float:
    return dist.order_stat(math.ceil(q * dist.n))


def _center_p(base: _Dist, new: _Dist) -> float:
    if isinstance(base, _Samples) and isinstance(new, _Samples):
        return mann_whitney_greater(new.values, base.values)
    return binned_mann_whitney_greater(new.counts(), base.counts())


def _tail_p(base: _Dist, new: _Dist, alpha: float, min_effect_tail: float) -> float:
    # rank of an upper (1 - alpha/4) confidence bound of the base p99
    rank = binom_ppf(1.0 - alpha / 4.0, base.n, 0.99) + 1
    threshold = (1.0 + min_effect_tail) * base.order_stat(rank)
    exceed = new.count_above(threshold)
    return binom_sf(exceed - 1, new.n, 0.01)


def _compare(
    base: _Dist,
    new: _Dist,
    *,
    alpha: float,
    min_effect: float,
    min_effect_tail: float,
    min_samples: int,
    method: str,
) -> Verdict:
    if base.n < min_samples or new.n < min_samples:
        return Verdict(
            False,
            method,
            f"too few samples to judge (base {base.n}, new {new.n}, need {min_samples} each)",
            base.n,
            new.n,
        )
    ratio_p50 = _quantile(new, 0.5) / max(_quantile(base, 0.5), 1e-9)
    ratio_p99 = _quantile(new, 0.99) / max(_quantile(base, 0.99), 1e-9)
    p_center = _center_p(base, new)
    p_tail = _tail_p(base, new, alpha, min_effect_tail)
    center = p_center < alpha / 2 and ratio_p50 >= 1.0 + min_effect
    tail = p_tail < alpha / 2
    if center or tail:
        which = " and ".join(
            name for name, hit in (("median", center), ("tail (p99)", tail)) if hit
        )
        reason = f"{which} significantly slower: p50 x{ratio_p50:.3f}, p99 x{ratio_p99:.3f}"
    else:
        reason = f"no significant slow-down: p50 x{ratio_p50:.3f}, p99 x{ratio_p99:.3f}"
    return Verdict(
        center or tail, method, reason, base.n, new.n, p_center, p_tail, ratio_p50, ratio_p99
    )


def compare_samples(
    base_us: Sequence[float] | np.ndarray,
    new_us: Sequence[float] | np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    min_effect_tail: float = DEFAULT_MIN_EFFECT_TAIL,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Verdict:
    """Is ``new_us`` significantly and materially slower than ``base_us`` (raw samples)?"""
    return _compare(
        _Samples(base_us),
        _Samples(new_us),
        alpha=alpha,
        min_effect=min_effect,
        min_effect_tail=min_effect_tail,
        min_samples=min_samples,
        method="mann-whitney + p99 exceedance (samples)",
    )


def compare_histograms(
    base_counts: np.ndarray,
    new_counts: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    min_effect_tail: float = DEFAULT_MIN_EFFECT_TAIL,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Verdict:
    """The same test on log-linear bucket counts (``monitoring.histogram``)."""
    return _compare(
        _Binned(base_counts),
        _Binned(new_counts),
        alpha=alpha,
        min_effect=min_effect,
        min_effect_tail=min_effect_tail,
        min_samples=min_samples,
        method="mann-whitney + p99 exceedance (histograms)",
    )


def compare_to_quantiles(
    baseline_us: Mapping[str, float],
    new: np.ndarray | Sequence[float],
    *,
    binned: bool = True,
    alpha: float = DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
    min_effect_tail: float = DEFAULT_MIN_EFFECT_TAIL,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Verdict:
    """New data (bucket counts, or samples with ``binned=False``) against a baseline known only
    by its percentiles {"p50": .., "p99": ..}: if nothing changed, at most 50% of new values lie
    above (1 + min_effect) x p50 and at most 1% above (1 + min_effect_tail) x p99; binomial
    tests say whether significantly more do."""
    dist: _Dist = _Binned(np.asarray(new)) if binned else _Samples(new)
    method = "quantile exceedance vs baseline percentiles"
    if dist.n < min_samples:
        return Verdict(False, method, f"too few samples ({dist.n} < {min_samples})", 0, dist.n)
    p_values: dict[str, float] = {}
    for key, share, effect in (("p50", 0.5, min_effect), ("p99", 0.01, min_effect_tail)):
        if key in baseline_us and baseline_us[key] > 0:
            exceed = dist.count_above((1.0 + effect) * float(baseline_us[key]))
            p_values[key] = binom_sf(exceed - 1, dist.n, share)
    ratio_p50 = _ratio(_quantile(dist, 0.5), baseline_us.get("p50"))
    ratio_p99 = _ratio(_quantile(dist, 0.99), baseline_us.get("p99"))
    hits = [key for key, p in p_values.items() if p < alpha / 2]
    reason = (
        f"{' and '.join(hits)} significantly above baseline" if hits else "within the baseline"
    ) + f": p50 x{_fmt(ratio_p50)}, p99 x{_fmt(ratio_p99)}"
    return Verdict(
        bool(hits),
        method,
        reason,
        0,
        dist.n,
        p_values.get("p50"),
        p_values.get("p99"),
        ratio_p50,
        ratio_p99,
    )


def compare_percentiles(
    base: Mapping[str, float],
    new: Mapping[str, float],
    *,
    tolerance_p50: float = DEFAULT_TOLERANCE_P50,
    tolerance_p99: float = DEFAULT_TOLERANCE_P99,
) -> Verdict:
    """Only percentiles on both sides: a regression is p50 more than ``tolerance_p50`` or p99
    more than ``tolerance_p99`` above the base (no statistics possible)."""
    ratio_p50 = _ratio(new.get("p50"), base.get("p50"))
    ratio_p99 = _ratio(new.get("p99"), base.get("p99"))
    over = []
    if ratio_p50 is not None and ratio_p50 > 1.0 + tolerance_p50:
        over.append(f"p50 x{ratio_p50:.3f} > x{1 + tolerance_p50:.2f}")
    if ratio_p99 is not None and ratio_p99 > 1.0 + tolerance_p99:
        over.append(f"p99 x{ratio_p99:.3f} > x{1 + tolerance_p99:.2f}")
    reason = (
        "; ".join(over)
        if over
        else f"within tolerance: p50 x{_fmt(ratio_p50)}, p99 x{_fmt(ratio_p99)}"
    )
    return Verdict(
        bool(over),
        "percentile ratio",
        reason,
        ratio_p50=ratio_p50,
        ratio_p99=ratio_p99,
    )


def _ratio(new: float | None, base: float | None) -> float | None:
    if new is None or base is None or base <= 0:
        return None
    return float(new) / float(base)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------- benchmark files (the CLI)

RunKey = tuple[str, str, int]


def _runs(document: Mapping[str, Any], path: Path) -> dict[RunKey, Mapping[str, Any]]:
    if document.get("kind") != "benchmark" or not isinstance(document.get("runs"), list):
        raise ValueError(f"{path}: not a benchmark result (needs kind=benchmark and runs)")
    runs: dict[RunKey, Mapping[str, Any]] = {}
    for run in document["runs"]:
        key = (str(run.get("target")), str(run.get("mode")), int(run.get("concurrency", 0)))
        runs[key] = run
    return runs


def compare_runs(
    base_run: Mapping[str, Any], new_run: Mapping[str, Any], args: argparse.Namespace
) -> Verdict:
    base_samples, new_samples = base_run.get("samples_us"), new_run.get("samples_us")
    if base_samples and new_samples:
        return compare_samples(
            base_samples,
            new_samples,
            alpha=args.alpha,
            min_effect=args.min_effect,
            min_effect_tail=args.min_effect_tail,
            min_samples=args.min_samples,
        )
    return compare_percentiles(
        base_run.get("latency_us") or {},
        new_run.get("latency_us") or {},
        tolerance_p50=args.tolerance_p50,
        tolerance_p99=args.tolerance_p99,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.regress",
        description="Compare a new benchmark result with a stored one; exit 1 on a significant "
        "latency regression, 2 on unusable input, 0 otherwise.",
    )
    parser.add_argument("baseline", nargs="?", type=Path, help="stored benchmark JSON")
    parser.add_argument("new", nargs="?", type=Path, help="new benchmark JSON")
    parser.add_argument(
        "--target",
        action="append",
        help="targets whose regression fails the check (repeatable; default: ours; 'all')",
    )
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--min-effect", type=float, default=DEFAULT_MIN_EFFECT)
    parser.add_argument("--min-effect-tail", type=float, default=DEFAULT_MIN_EFFECT_TAIL)
    parser.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES)
    parser.add_argument("--tolerance-p50", type=float, default=DEFAULT_TOLERANCE_P50)
    parser.add_argument("--tolerance-p99", type=float, default=DEFAULT_TOLERANCE_P99)
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="instead: measure the false-alarm rate on unchanged simulated traffic",
    )
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def false_alarm_rate(
    *,
    trials: int = 1000,
    samples: int = 2000,
    seed: int = 0,
    binned: bool = False,
    distribution: str = "lognormal",
) -> float:
    """Share of trials flagged when base and new come from one distribution (seeded)."""
    rng = np.random.default_rng(seed)
    flagged = 0
    for _ in range(trials):
        base, new = (_draw(rng, distribution, samples) for _ in range(2))
        if binned:
            verdict = compare_histograms(bin_counts(base), bin_counts(new))
        else:
            verdict = compare_samples(base, new)
        flagged += verdict.regression
    return flagged / trials


def _draw(rng: np.random.Generator, distribution: str, n: int) -> np.ndarray:
    if distribution == "lognormal":  # a typical latency shape: median 300 us, long right tail
        return rng.lognormal(mean=math.log(300.0), sigma=0.5, size=n)
    if distribution == "bimodal":  # cache hits at ~40 us, misses at ~400 us
        hits = rng.random(n) < 0.3
        return np.where(hits, rng.normal(40.0, 5.0, n), rng.lognormal(math.log(400.0), 0.3, n))
    raise ValueError(f"unknown distribution {distribution!r}: use lognormal or bimodal")


def _simulate(args: argparse.Namespace) -> int:
    for distribution in ("lognormal", "bimodal"):
        for binned in (False, True):
            rate = false_alarm_rate(
                trials=args.trials,
                samples=args.samples,
                seed=args.seed,
                binned=binned,
                distribution=distribution,
            )
            kind = "histograms" if binned else "samples"
            print(
                f"{distribution:9s} {kind:10s} n={args.samples} trials={args.trials}: "
                f"false-alarm rate {rate:.4f} (alpha {DEFAULT_ALPHA})"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.simulate:
        return _simulate(args)
    if args.baseline is None or args.new is None:
        print("usage: python -m monitoring.regress BASELINE.json NEW.json", file=sys.stderr)
        return 2
    try:
        base_runs = _runs(orjson.loads(args.baseline.read_bytes()), args.baseline)
        new_runs = _runs(orjson.loads(args.new.read_bytes()), args.new)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    targets = set(args.target or ["ours"])
    matched = sorted(set(base_runs) & set(new_runs))
    if not matched:
        print("error: no run of the new result matches one of the baseline", file=sys.stderr)
        return 2
    failed = False
    report = []
    for key in matched:
        verdict = compare_runs(base_runs[key], new_runs[key], args)
        gating = "all" in targets or key[0] in targets
        failed |= verdict.regression and gating
        report.append(
            {"target": key[0], "mode": key[1], "concurrency": key[2], "gating": gating}
            | verdict.to_dict()
        )
        if not args.json:
            mark = "REGRESSION" if verdict.regression else "ok"
            print(f"{mark:10s} {key[0]}/{key[1]}/c{key[2]} ({verdict.method}): {verdict.reason}")
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
