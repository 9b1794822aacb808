"""Plain-text tables for the terminal and the README (Markdown)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from benchmarks.stats import AB_METRICS, AB_SIDES, BarResult, vs_native

RUN_COLUMNS = (
    "target",
    "mode",
    "clients",
    "gen",
    "requests",
    "rps",
    "p50 us",
    "p99 us",
    "p99.9 us",
    "max us",
    "errors",
    "cpu s: server",
    "loadgen",
    "other",
)


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _errors(run: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in run["errors"].items() if v) or "0"


def run_rows(runs: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in runs:
        lat, cpu = r["latency_us"], r["cpu"]
        errors = _errors(r)
        pair = r.get("pair")
        rows.append(
            [
                r["target"] if pair is None else f"{r['target']} (pair {pair + 1})",
                r["mode"],
                str(r["concurrency"]),
                r["generator"],
                str(r["requests"]),
                _num(r["rps"]),
                _num(lat.get("p50")),
                _num(lat.get("p99")),
                _num(lat.get("p99_9")),
                _num(lat.get("max")),
                errors,
                _num(cpu["server_s"], 2),
                _num(cpu["loadgen_s"], 2),
                _num(cpu.get("other_s"), 2),
            ]
        )
    return rows


def inprocess_rows(records: Sequence[dict]) -> list[list[str]]:
    return [
        [
            r["model"],
            r["variant"],
            str(r["batch"]),
            _num(r["latency_us"]["p50"], 1),
            _num(r["latency_us"]["p99"], 1),
            _num(r["latency_us"]["p99_9"], 1),
            _num(r["calls_per_s"]),
            _num(r["per_sample_us"], 2),
        ]
        for r in records
    ]


INPROCESS_COLUMNS = (
    "model",
    "variant",
    "batch",
    "p50 us",
    "p99 us",
    "p99.9 us",
    "calls/s",
    "us/sample",
)


def text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(c), *(len(row[i]) for row in rows)) if rows else len(c)
        for i, c in enumerate(columns)
    ]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = [
        "  ".join(
            v.rjust(w) if i > 1 else v.ljust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join([line, "-" * len(line), *body])


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(row) + " |" for row in rows)])


def bars_text(bars: Sequence[BarResult]) -> str:
    return "\n".join(f"  [{b.verdict:7s}] {b.name}: {b.detail}" for b in bars)


def ratios_text(ratios: dict[str, float]) -> str:
    return "\n".join(f"  {key:42s} x{value:.2f}" for key, value in ratios.items())


def noise_text(runs: Sequence[dict], cores: int) -> str | None:
    """How much of the machine other processes took while we measured, when it matters."""
    measured = [r for r in runs if r["cpu"].get("other_s") is not None]
    capacity = sum(r["duration_s"] for r in measured) * cores
    if not measured or capacity <= 0:
        return None
    share = sum(r["cpu"]["other_s"] for r in measured) / capacity
    if share < 0.05:
        return None
    return (
        f"note: other processes used {100 * share:.0f}% of the {cores} cores during the runs "
        "(column 'other'); rerun on a quiet machine before trusting the figures"
    )


PROTOCOL_COLUMNS = (
    "protocol",
    "batch",
    "clients",
    "gen",
    "requests",
    "req/s",
    "rows/s",
    "p50 us",
    "p99 us",
    "p99.9 us",
    "max us",
    "errors",
    "p50 vs native",
    "server cpu us/req",
    "cpu s: server",
    "loadgen",
    "other",
)


def protocol_rows(runs: Sequence[dict]) -> list[list[str]]:
    """One row per protocol run; ``p50 vs native`` is its p50 over native's at the same
    batch and clients; ``server cpu us/req`` the server's CPU (front and workers) per
    request, which no client cost is part of."""
    versus = vs_native(runs, "p50")
    rows = []
    for k, r in enumerate(runs):
        lat, cpu = r["latency_us"], r["cpu"]
        rows.append(
            [
                _protocol_label(r),
                str(r.get("batch", 1)),
                str(r["concurrency"]),
                r["generator"],
                str(r["requests"]),
                _num(r["rps"]),
                _num(r.get("rows_per_s", r["rps"])),
                _num(lat.get("p50")),
                _num(lat.get("p99")),
                _num(lat.get("p99_9")),
                _num(lat.get("max")),
                _errors(r),
                "n/a" if versus[k] is None else f"x{versus[k]:.2f}",
                _num(1e6 * cpu["server_s"] / r["requests"] if r["requests"] else None),
                _num(cpu["server_s"], 2),
                _num(cpu["loadgen_s"], 2),
                _num(cpu.get("other_s"), 2),
            ]
        )
    return rows


def _protocol_label(run: dict) -> str:
    protocol = run.get("protocol", run["target"])
    server = run.get("server", "ours")
    return protocol if server == "ours" else f"{protocol} ({server})"


AB_COLUMNS = ("mode", "clients", "", "rps", "p50 us", "p99 us", "p99.9 us")


def _ratio_cells(ratios: dict) -> list[str]:
    return ["n/a" if ratios.get(m) is None else f"x{ratios[m]:.3f}" for m in AB_METRICS]


def ab_rows(summary: Sequence[dict]) -> list[list[str]]:
    """Per plan: each side's medians, every pair's candidate/baseline ratio, their median."""
    rows = []
    for entry in summary:
        lead = [entry["mode"], str(entry["concurrency"])]
        n = entry["pairs"]
        for side in AB_SIDES:
            values = entry[side]
            cells = [_num(values.get(m)) for m in AB_METRICS]
            rows.append([*lead, f"{side}, median of {n}", *cells])
        for pair in entry["per_pair"]:
            rows.append([*lead, f"ratio, pair {pair['pair']}", *_ratio_cells(pair["ratio"])])
        rows.append([*lead, "ratio, median of pairs", *_ratio_cells(entry["ratio"])])
    return rows


def bodies_text(runs: Sequence[dict]) -> str | None:
    """One line per kind of body the runs sent (cold: every observation distinct)."""
    seen: dict[str, None] = {}
    for run in runs:
        b = run.get("bodies")
        if b:
            what = "distinct observations" if b["distinct"] else f"{b['working_set']} repeating"
            line = (
                f"bodies ({run['mode']}): {b['model']}, {what}, values with {b['decimals']} "
                f"decimals, ~{round(b['bytes_mean'], -2):,} bytes each"
            )
            seen[line] = None
    return "\n".join(seen) or None
