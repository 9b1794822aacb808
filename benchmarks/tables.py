"""Plain-text tables for the terminal and the README (Markdown)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from benchmarks.stats import BarResult

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


def run_rows(runs: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in runs:
        lat, cpu = r["latency_us"], r["cpu"]
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items() if v) or "0"
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
