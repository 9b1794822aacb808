"""Pure numbers: percentiles, ratios and the performance bars. No I/O, no clocks."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.targets import Target

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p99", 99.0), ("p99_9", 99.9))


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (the value at rank ceil(pct% * n)),
    so p99.9 of 1000 samples is the 999th, never an interpolation between two samples."""
    if not sorted_values:
        return math.nan
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile {pct} is outside 0..100")
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values) - 1e-9))
    return float(sorted_values[rank - 1])


def latency_summary(values_us: Sequence[float]) -> dict[str, float]:
    """``{"p50", "p99", "p99_9", "max"}`` in microseconds (NaN when there are no samples)."""
    ordered = sorted(values_us)
    out = {name: percentile(ordered, pct) for name, pct in PERCENTILES}
    out["max"] = float(ordered[-1]) if ordered else math.nan
    return out


def sample(values: Sequence[float], limit: int, seed: int = 0) -> list[float]:
    """At most ``limit`` values drawn without replacement, in their original order."""
    if len(values) <= limit:
        return [round(float(v), 1) for v in values]
    picked = sorted(random.Random(seed).sample(range(len(values)), limit))
    return [round(float(values[i]), 1) for i in picked]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either side is missing or not positive."""
    if numerator is None or denominator is None:
        return None
    if not math.isfinite(numerator) or not math.isfinite(denominator) or denominator <= 0:
        return None
    return numerator / denominator


# --- the bars ---------------------------------------------------------------------------

RunKey = tuple[str, str, int]  # (target, mode, concurrency)
# Every bar takes the same (runs indexed by RunKey, interleaved pair records), so a bar that
# needs the pairs is no special case for evaluate_bars; each reads only what it needs.


@dataclass(frozen=True, slots=True)
class BarResult:
    name: str
    met: bool | None  # None: a run it needs is missing
    detail: str

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT MET", None: "n/a"}[self.met]

    def to_json(self) -> dict[str, object]:
        return {"bar": self.name, "met": self.met, "detail": self.detail}


def index_runs(runs: Sequence[dict]) -> dict[RunKey, dict]:
    return {(r["target"], r["mode"], int(r["concurrency"])): r for r in runs}


def _p(run: dict | None, key: str) -> float | None:
    if run is None:
        return None
    value = run["latency_us"].get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def _rps(run: dict | None) -> float | None:
    return None if run is None else float(run["rps"])


def _missing(name: str, *needed: str) -> BarResult:
    return BarResult(name, None, "missing run(s): " + ", ".join(needed))


def error_count(run: dict) -> int:
    return int(sum(run.get("errors", {}).values()))


def _ours_and_floor(
    runs: dict[RunKey, dict], mode: str, key: str
) -> tuple[float | None, float | None]:
    """Latency ``key`` of ours and of raw_floor, both at 1 client in ``mode``."""
    return _p(runs.get(("ours", mode, 1)), key), _p(runs.get(("raw_floor", mode, 1)), key)


SINGLE_CLIENT_P99_OF_FLOOR = 1.5
THROUGHPUT_OF_FLOOR = 0.75
P99_9_LIMIT_US = 10_000.0
INFERENCE_OF_OPTIMIZER = 1.3


def bar_single_client(runs: dict[RunKey, dict], pairs: Sequence[dict]) -> BarResult:
    name = f"1 client cold: p99 < 500 us and <= {SINGLE_CLIENT_P99_OF_FLOOR:g}x raw_floor p99"
    ours, floor = _ours_and_floor(runs, "cold", "p99")
    if ours is None or floor is None:
        return _missing(name, "ours cold@1", "raw_floor cold@1")
    met = ours < 500.0 and ours <= SINGLE_CLIENT_P99_OF_FLOOR * floor
    return BarResult(
        name, met, f"p99 {ours:.0f} us; raw_floor p99 {floor:.0f} us (x{ours / floor:.2f})"
    )


def bar_sixteen_clients(runs: dict[RunKey, dict], pairs: Sequence[dict]) -> BarResult:
    name = "16 clients cold: rps >= 10x plain_fastapi and >= tuned_ort, p99 < 5 ms"
    ours = runs.get(("ours", "cold", 16))
    plain, tuned = runs.get(("plain_fastapi", "cold", 16)), runs.get(("tuned_ort", "cold", 16))
    if ours is None or plain is None or tuned is None:
        return _missing(name, "ours cold@16", "plain_fastapi cold@16", "tuned_ort cold@16")
    vs_plain, vs_tuned = ratio(_rps(ours), _rps(plain)), ratio(_rps(ours), _rps(tuned))
    p99 = _p(ours, "p99")
    met = (
        vs_plain is not None
        and vs_plain >= 10.0
        and vs_tuned is not None
        and vs_tuned >= 1.0
        and p99 is not None
        and p99 < 5000.0
    )
    return BarResult(
        name,
        met,
        f"rps {ours['rps']:.0f} = x{_fmt(vs_plain)} plain_fastapi, "
        f"x{_fmt(vs_tuned)} tuned_ort; p99 {_fmt(p99, 0)} us",
    )


def bar_sixty_four_clients(runs: dict[RunKey, dict], pairs: Sequence[dict]) -> BarResult:
    name = "64 clients cold: no errors, p99 < 15 ms, p99.9 < 10 ms, rps no lower than 16 clients'"
    ours, sixteen = runs.get(("ours", "cold", 64)), runs.get(("ours", "cold", 16))
    if ours is None or sixteen is None:
        return _missing(name, "ours cold@64", "ours cold@16")
    errors, p99, p99_9 = error_count(ours), _p(ours, "p99"), _p(ours, "p99_9")
    met = (
        errors == 0
        and p99 is not None
        and p99 < 15000.0
        and p99_9 is not None
        and p99_9 < P99_9_LIMIT_US
        and ours["rps"] >= sixteen["rps"]
    )
    return BarResult(
        name,
        met,
        f"{errors} errors of {ours['requests']}; p99 {_fmt(p99, 0)} us, p99.9 "
        f"{_fmt(p99_9, 0)} us; rps {ours['rps']:.0f} (16 clients {sixteen['rps']:.0f})",
    )


def bar_cache_hit(runs: dict[RunKey, dict], pairs: Sequence[dict]) -> BarResult:
    name = "cache warm: hit p50 <= raw_floor p50 + 50 us"
    ours, floor = _ours_and_floor(runs, "warm", "p50")
    if ours is None or floor is None:
        return _missing(name, "ours warm@1", "raw_floor warm@1")
    return BarResult(
        name,
        ours <= floor + 50.0,
        f"hit p50 {ours:.0f} us; raw_floor p50 {floor:.0f} us (+{ours - floor:.0f})",
    )


def bar_monitoring(runs: dict[RunKey, dict], pairs: Sequence[dict]) -> BarResult:
    """On interleaved pairs when the run has them (the median of the per-pair ratios, so
    drift between pairs cancels), else on the one cold@16 run of each."""
    name = "monitoring on vs off: throughput within 5%"
    on_rps = {p["pair"]: float(p["rps"]) for p in pairs if p["target"] == "ours"}
    off_rps = {p["pair"]: float(p["rps"]) for p in pairs if p["target"] == "ours_no_monitoring"}
    common = sorted(on_rps.keys() & off_rps.keys())
    if common:
        on = statistics.median(on_rps[k] for k in common)
        off = statistics.median(off_rps[k] for k in common)
        change = statistics.median(on_rps[k] / off_rps[k] - 1 for k in common)
        source = f"median of {len(common)} interleaved pairs: "
    else:
        on = _rps(runs.get(("ours", "cold", 16)))
        off = _rps(runs.get(("ours_no_monitoring", "cold", 16)))
        if on is None or off is None:
            return _missing(name, "ours cold@16", "ours_no_monitoring cold@16")
        change = (on - off) / off if off > 0 else math.inf
        source = ""
    return BarResult(
        name,
        abs(change) < 0.05,
        f"{source}rps on {on:.0f}, off {off:.0f} ({100 * change:+.1f}%)",
    )


def bar_floor_throughput(runs: dict[RunKey, dict], pairs: Sequence[dict]) -> BarResult:
    name = f"16 clients cold: rps >= {THROUGHPUT_OF_FLOOR:g}x raw_floor"
    ours, floor = _rps(runs.get(("ours", "cold", 16))), _rps(runs.get(("raw_floor", "cold", 16)))
    if ours is None or floor is None:
        return _missing(name, "ours cold@16", "raw_floor cold@16")
    share = ours / floor if floor > 0 else 0.0
    return BarResult(
        name, share >= THROUGHPUT_OF_FLOOR, f"rps {ours:.0f}, raw_floor {floor:.0f} (x{share:.2f})"
    )


def bar_inference_stage(runs: dict[RunKey, dict], pairs: Sequence[dict]) -> BarResult:
    """The server's own inference stage (its /stats after the 1-client run) against what the
    optimizer measured for the served artifact, both p50 at batch 1."""
    name = f"1 client: server inference p50 <= {INFERENCE_OF_OPTIMIZER:g}x the optimizer's"
    server = (runs.get(("ours", "cold", 1)) or {}).get("server") or {}
    stage = (server.get("stages_us") or {}).get("inference") or {}
    measured, recorded = stage.get("p50"), server.get("optimizer_p50_us")
    if measured is None or not recorded:
        return _missing(name, "ours cold@1 with its server stages")
    share = measured / recorded
    return BarResult(
        name,
        share <= INFERENCE_OF_OPTIMIZER,
        f"inference p50 {measured:.1f} us; optimizer p50 {recorded:.1f} us (x{share:.2f})",
    )


BARS = (
    bar_single_client,
    bar_sixteen_clients,
    bar_sixty_four_clients,
    bar_cache_hit,
    bar_monitoring,
    bar_floor_throughput,
    bar_inference_stage,
)


def evaluate_bars(runs: Sequence[dict], pairs: Sequence[dict] = ()) -> list[BarResult]:
    indexed = index_runs(runs)
    return [bar(indexed, pairs) for bar in BARS]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# --- ratios -------------------------------------------------------------------------------

BASELINES: tuple[str, ...] = tuple(t.value for t in Target if not t.is_ours)
RATIO_METRICS: tuple[str, ...] = ("rps", *(name for name, _ in PERCENTILES))


def _metric(run: dict, metric: str) -> float | None:
    return _rps(run) if metric == "rps" else _p(run, metric)


def compute_ratios(runs: Sequence[dict], subject: str = "ours") -> dict[str, float]:
    """Flat ``{"<metric>:<mode>@<concurrency>:<subject>/<baseline>": ratio}`` for every
    (mode, concurrency) that both the subject and a baseline ran. rps above 1 is better for
    the subject; latency ratios below 1 are."""
    indexed = index_runs(runs)
    out: dict[str, float] = {}
    for (target, mode, conc), mine in sorted(indexed.items()):
        if target != subject:
            continue
        for baseline in BASELINES:
            theirs = indexed.get((baseline, mode, conc))
            if theirs is None:
                continue
            for metric in RATIO_METRICS:
                value = ratio(_metric(mine, metric), _metric(theirs, metric))
                if value is not None:
                    out[f"{metric}:{mode}@{conc}:{subject}/{baseline}"] = round(value, 4)
    return out


# --- protocols ----------------------------------------------------------------------------

# For scale (the issue): a KServe 0.21 Python model server measured on this machine answered
# tritonclient binary batch-1 requests in about 1.1 ms p50; ours should be under 0.2 ms.
OIP_BINARY_P50_BAR_US = 200.0


def protocol_bars(runs: Sequence[dict]) -> list[BarResult]:
    """The protocols run's bars: OIP binary's batch-1 latency, and every run error-free."""
    name = f"OIP binary batch 1, 1 client: p50 < {OIP_BINARY_P50_BAR_US:.0f} us"
    binary = next(
        (
            r
            for r in runs
            if r.get("protocol") == "oip_binary" and r.get("batch") == 1 and r["concurrency"] == 1
        ),
        None,
    )
    p50 = _p(binary, "p50")
    bars = [
        _missing(name, "oip_binary batch 1 @1")
        if p50 is None
        else BarResult(name, p50 < OIP_BINARY_P50_BAR_US, f"p50 {p50:.0f} us")
    ]
    failed = [r for r in runs if error_count(r)]
    total = sum(error_count(r) for r in runs)
    bars.append(
        BarResult(
            "every protocol run answered without errors",
            not failed if runs else None,
            f"{total} errors in {len(failed)} of {len(runs)} runs"
            + "".join(f"; {r['target']}@{r['concurrency']}: {r['errors']}" for r in failed[:4]),
        )
    )
    return bars


def vs_native(runs: Sequence[dict], metric: str = "p50") -> dict[int, float | None]:
    """Per run (by index) its ``metric`` over the native run's at the same batch and
    clients; rps is better above 1, latency below."""
    native = {(r.get("batch"), r["concurrency"]): r for r in runs if r.get("protocol") == "native"}
    out: dict[int, float | None] = {}
    for k, r in enumerate(runs):
        base = native.get((r.get("batch"), r["concurrency"]))
        out[k] = None if base is None else ratio(_metric(r, metric), _metric(base, metric))
    return out


# --- two source trees, interleaved --------------------------------------------------------

AB_METRICS: tuple[str, ...] = ("rps", "p50", "p99", "p99_9")
AB_SIDES = ("baseline", "candidate")


def ab_summary(pairs: Sequence[dict]) -> list[dict]:
    """Per (mode, clients): how many complete pairs, each side's median of every metric, the
    candidate/baseline ratio of each pair and their median (drift between pairs cancels in
    a ratio taken within the pair)."""
    groups: dict[tuple[str, int], dict[int, dict[str, dict]]] = {}
    for record in pairs:
        key = (record["mode"], int(record["concurrency"]))
        groups.setdefault(key, {}).setdefault(record["pair"], {})[record["target"]] = record
    out = []
    for (mode, clients), by_pair in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        complete_keys = [k for k in sorted(by_pair) if set(AB_SIDES) <= set(by_pair[k])]
        complete = [by_pair[k] for k in complete_keys]
        per_pair = []
        for k, sides in zip(complete_keys, complete, strict=True):
            ratios = {
                m: ratio(_metric(sides["candidate"], m), _metric(sides["baseline"], m))
                for m in AB_METRICS
            }
            per_pair.append({"pair": k + 1, "ratio": _rounded(ratios)})
        entry: dict = {"mode": mode, "concurrency": clients, "pairs": len(complete)}
        for side in AB_SIDES:
            entry[side] = _rounded(
                {m: _median([_metric(s[side], m) for s in complete]) for m in AB_METRICS}, 1
            )
        entry["ratio"] = _rounded(
            {m: _median([p["ratio"][m] for p in per_pair]) for m in AB_METRICS}
        )
        entry["per_pair"] = per_pair
        out.append(entry)
    return out


def ab_checks(summary: Sequence[dict], tolerance: float = 0.05) -> list[BarResult]:
    """The native path keeps its figures: at 1 client p50 and p99, at more clients
    throughput, each no worse than ``tolerance`` (median of the pair ratios)."""
    bars = []
    for entry in summary:
        clients, ratios = entry["concurrency"], entry["ratio"]
        where = f"{entry['mode']}@{clients}"
        if clients == 1:
            for m in ("p50", "p99"):
                r = ratios.get(m)
                name = f"{where}: {m} within {100 * tolerance:.0f}% of the baseline"
                bars.append(_ab_bar(name, r, r is not None and r <= 1 + tolerance, entry))
        else:
            r = ratios.get("rps")
            name = f"{where}: throughput within {100 * tolerance:.0f}% of the baseline"
            bars.append(_ab_bar(name, r, r is not None and r >= 1 - tolerance, entry))
    return bars


def _ab_bar(name: str, value: float | None, met: bool, entry: dict) -> BarResult:
    if value is None:
        return BarResult(name, None, "no complete pair")
    return BarResult(
        name, met, f"candidate/baseline x{value:.3f}, median of {entry['pairs']} pairs"
    )


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _rounded(values: dict[str, float | None], digits: int = 4) -> dict[str, float | None]:
    return {k: None if v is None else round(v, digits) for k, v in values.items()}
