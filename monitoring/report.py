"""A self-contained HTML report (charts embedded as base64 PNG) and the PNGs beside it.

    python -m monitoring.report --url http://127.0.0.1:8080 --out reports/
    python -m monitoring.report --history history/ [--benchmarks FILE.json]
                                [--manifest artifacts/manifest.json] --out reports/

Charts: latency percentiles over time, latency histogram, requests per second, error and cache
hit rates, alert timeline, the optimizer's variant comparison and (with --benchmarks) the
benchmark runs. Each chart without data says so on the image and in the page.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

try:
    import matplotlib
except ImportError as exc:  # the report is an operator's tool, not part of the server
    raise SystemExit(
        "the report needs matplotlib, an optional extra: pip install -c constraints.txt "
        "'.[report]' (make test installs it)"
    ) from exc

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg")

from monitoring.histogram import QUANTILES
from monitoring.history import read_history

# The names /stats and the history give their percentiles ("p50" -> "p50_us" in a timeline).
PERCENTILES = tuple(QUANTILES)


@dataclass
class ReportData:
    source: str
    #: per series name (a model, or "all"): rows of {t, requests, rps, error_rate,
    #: cache_hit_rate, p50_us, p95_us, p99_us, p99_9_us}
    timeline: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: per series name: {"lower_us": [...], "upper_us": [...], "count": [...]}
    histogram: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: (alert, state, start, end) with state "firing" or "pending"
    alert_spans: list[tuple[str, str, float, float]] = field(default_factory=list)
    variants: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    selected: dict[str, str | None] = field(default_factory=dict)
    benchmark_runs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- loading


def _merge_coarse(into: dict[float, list[float]], coarse: dict[str, list[float]]) -> None:
    for lower, upper, count in zip(
        coarse.get("lower_us", []),
        coarse.get("upper_us", []),
        coarse.get("count", []),
        strict=False,
    ):
        entry = into.setdefault(lower, [upper, 0.0])
        entry[1] += count


def _as_coarse(merged: dict[float, list[float]]) -> dict[str, list[float]]:
    lowers = sorted(merged)
    return {
        "lower_us": lowers,
        "upper_us": [merged[lo][0] for lo in lowers],
        "count": [merged[lo][1] for lo in lowers],
    }


def from_history(directory: Path) -> ReportData:
    data = ReportData(source=f"history snapshots in {directory}")
    histograms: dict[str, dict[float, list[float]]] = {}
    alert_points: list[tuple[float, dict[str, str]]] = []
    for record in read_history(directory):
        t = float(record["t"])
        interval = float(record.get("interval_s") or 10.0)
        for model, entry in (record.get("models") or {}).items():
            requests = entry.get("requests", 0)
            total = (entry.get("latency_us") or {}).get("total") or {}
            data.timeline.setdefault(model, []).append(
                {
                    "t": t,
                    "requests": requests,
                    "rps": requests / interval,
                    "error_rate": entry.get("error_rate"),
                    "cache_hit_rate": entry.get("cache_hit_rate"),
                    **{f"{p}_us": total.get(p) for p in PERCENTILES},
                }
            )
            _merge_coarse(histograms.setdefault(model, {}), entry.get("histogram_us") or {})
        alert_points.append((t, record.get("alerts") or {}))
    data.histogram = {model: _as_coarse(merged) for model, merged in histograms.items()}
    data.alert_spans = _spans(alert_points)
    if not data.timeline:
        data.notes.append(f"No history snapshots found in {directory}.")
    return data


def _spans(points: Sequence[tuple[float, dict[str, str]]]) -> list[tuple[str, str, float, float]]:
    """Turn per-snapshot alert states into (alert, state, start, end) spans."""
    spans: list[tuple[str, str, float, float]] = []
    open_spans: dict[str, tuple[str, float]] = {}
    last_t = points[-1][0] if points else 0.0
    for t, states in points:
        for alert in set(open_spans) | set(states):
            state = states.get(alert, "inactive")
            current = open_spans.get(alert)
            if current is not None and current[0] != state:
                spans.append((alert, current[0], current[1], t))
                del open_spans[alert]
            if state in ("pending", "firing") and alert not in open_spans:
                open_spans[alert] = (state, t)
    for alert, (state, start) in open_spans.items():
        spans.append((alert, state, start, last_t))
    return spans


def _get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return orjson.loads(response.read())


def from_server(url: str) -> ReportData:
    base = url.rstrip("/")
    data = ReportData(source=f"live server {base}")
    stats = _get_json(f"{base}/stats")
    alerts = _get_json(f"{base}/alerts")
    now = float(stats.get("generated_at") or datetime.now(UTC).timestamp())
    rows = []
    for point in stats.get("timeline") or []:
        requests = point.get("requests", 0)
        rows.append(
            {
                "t": point["t"],
                "requests": requests,
                "rps": point.get("rps"),
                "error_rate": point["errors"] / requests if requests else None,
                "cache_hit_rate": point["cached"] / point["ok"] if point.get("ok") else None,
                **{f"{p}_us": point.get(f"{p}_us") for p in PERCENTILES},
            }
        )
    if rows:
        data.timeline["all"] = rows
    histogram = stats.get("histogram_us") or {}
    if histogram.get("count"):
        data.histogram["all (since start)"] = histogram
    for entry in alerts.get("resolved") or []:
        start = entry.get("fired_at") or entry.get("active_since") or now
        data.alert_spans.append((entry["alert"], "firing", start, entry.get("resolved_at") or now))
    for entry in alerts.get("firing") or []:
        data.alert_spans.append((entry["alert"], "firing", entry.get("fired_at") or now, now))
    for entry in alerts.get("pending") or []:
        data.alert_spans.append((entry["alert"], "pending", entry.get("active_since") or now, now))
    if not rows:
        data.notes.append(f"The server at {base} has answered no request yet.")
    window = stats.get("window_s")
    data.notes.append(
        f"A live server keeps per-second points for its last {window} s window only; "
        "run the server with a history directory and use --history for longer spans."
    )
    return data


def add_manifest(data: ReportData, path: Path) -> None:
    manifest = orjson.loads(path.read_bytes())
    models = manifest.get("models") or {}
    if isinstance(models, list):
        models = {entry.get("name", str(i)): entry for i, entry in enumerate(models)}
    for name, entry in models.items():
        data.variants[name] = list(entry.get("variants") or [])
        data.selected[name] = entry.get("selected")


def add_benchmarks(data: ReportData, path: Path) -> None:
    document = orjson.loads(path.read_bytes())
    data.benchmark_runs = list(document.get("runs") or [])


# ---------------------------------------------------------------- charts


def _no_data(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, wrap=True)
    ax.set_axis_off()


def _times(rows: Iterable[dict[str, Any]]) -> list[datetime]:
    return [datetime.fromtimestamp(row["t"], tz=UTC) for row in rows]


def _plot_timeline(ax: Any, data: ReportData, lines: Sequence[tuple[str, str, str]]) -> bool:
    """One line per series and (row key, style, label suffix), skipping missing values;
    False if nothing was drawn."""
    drawn = False
    for series, rows in sorted(data.timeline.items()):
        times = _times(rows)
        for key, style, suffix in lines:
            points = [
                (t, r[key]) for t, r in zip(times, rows, strict=True) if r.get(key) is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=f"{series} {suffix}")
                drawn = True
    return drawn


def chart_percentiles(ax: Any, data: ReportData) -> bool:
    styles = {"p50": "-", "p95": "--", "p99": "-.", "p99_9": ":"}
    lines = [(f"{p}_us", style, p.replace("_", ".")) for p, style in styles.items()]
    if not _plot_timeline(ax, data, lines):
        _no_data(ax, "No data: no request was recorded in this period.")
        return False
    ax.set_yscale("log")
    ax.set_ylabel("latency (us)")
    ax.set_title("Latency percentiles over time (total server time)")
    ax.legend(fontsize=7, ncol=2)
    return True


def chart_histogram(ax: Any, data: ReportData) -> bool:
    drawn = False
    for series, coarse in sorted(data.histogram.items()):
        if not coarse.get("count"):
            continue
        lowers, uppers, counts = coarse["lower_us"], coarse["upper_us"], coarse["count"]
        widths = [hi - lo for lo, hi in zip(lowers, uppers, strict=True)]
        ax.bar(lowers, counts, width=widths, align="edge", alpha=0.6, label=series)
        drawn = True
    if not drawn:
        _no_data(ax, "No data: no latency was recorded.")
        return False
    ax.set_xscale("log")
    ax.set_xlabel("total server time (us)")
    ax.set_ylabel("requests")
    ax.set_title("Latency histogram")
    ax.legend(fontsize=8)
    return True


def _rate_chart(ax: Any, data: ReportData, keys: Sequence[str], title: str, unit: str) -> bool:
    if not _plot_timeline(ax, data, [(key, "-", key.replace("_", " ")) for key in keys]):
        _no_data(ax, f"No data: {title.lower()} needs recorded requests.")
        return False
    ax.set_title(title)
    ax.set_ylabel(unit)
    ax.legend(fontsize=8)
    return True


def chart_rps(ax: Any, data: ReportData) -> bool:
    return _rate_chart(ax, data, ["rps"], "Requests per second", "requests/s")


def chart_rates(ax: Any, data: ReportData) -> bool:
    drawn = _rate_chart(
        ax, data, ["error_rate", "cache_hit_rate"], "Error rate and cache hit rate", "fraction"
    )
    if drawn:
        ax.set_ylim(-0.02, 1.02)
    return drawn


def chart_alerts(ax: Any, data: ReportData) -> bool:
    if not data.alert_spans:
        _no_data(ax, "No alert was pending or firing in this period.")
        return False
    names = sorted({span[0] for span in data.alert_spans})
    for alert, state, start, end in data.alert_spans:
        y = names.index(alert)
        left = datetime.fromtimestamp(start, tz=UTC)
        width = datetime.fromtimestamp(max(end, start + 1.0), tz=UTC) - left
        color = "tab:red" if state == "firing" else "tab:orange"
        ax.barh(y, width, left=left, color=color, height=0.5)
    ax.set_yticks(range(len(names)), names)
    times = [row["t"] for rows in data.timeline.values() for row in rows]
    if times:  # show the alerts against the whole period, not just their own span
        first = min([min(times)] + [span[2] for span in data.alert_spans])
        last = max([max(times)] + [span[3] for span in data.alert_spans])
        ax.set_xlim(datetime.fromtimestamp(first, tz=UTC), datetime.fromtimestamp(last, tz=UTC))
    ax.set_title("Alert timeline (orange: pending, red: firing)")
    return True


def chart_variants(fig: Any, data: ReportData) -> bool:
    models = [m for m, variants in data.variants.items() if variants]
    if not models:
        _no_data(fig.add_subplot(1, 1, 1), "No optimizer manifest given (--manifest).")
        return False
    axes = fig.subplots(len(models), 2, squeeze=False)
    for row, model in enumerate(models):
        variants = data.variants[model]
        names = [v.get("name", "?") for v in variants]
        latency = [v.get("latency_us") or {} for v in variants]
        positions = range(len(names))
        lat_ax, size_ax = axes[row]
        for offset, key in ((-0.2, "p50"), (0.2, "p99")):
            values = [entry.get(key) or 0.0 for entry in latency]
            lat_ax.bar([p + offset for p in positions], values, width=0.4, label=key)
        sizes = [(v.get("size_bytes") or 0) / 1024 for v in variants]
        size_ax.bar(positions, sizes, color="tab:green")
        selected = data.selected.get(model)
        labels = [
            f"{n.replace('_', chr(10))}\n({_verdict(v)})" + (" *" if n == selected else "")
            for n, v in zip(names, variants, strict=True)
        ]
        for ax in (lat_ax, size_ax):
            ax.set_xticks(list(positions), labels, fontsize=7)
        lat_ax.set_title(f"{model}: batch-1 latency (us), * = served")
        lat_ax.legend(fontsize=7)
        size_ax.set_title(f"{model}: artifact size (KiB)")
    return True


def _verdict(variant: dict[str, Any]) -> str:
    if variant.get("status", "ok") != "ok":
        return str(variant.get("status"))
    if variant.get("within_tolerance") is False:
        return "out of tolerance"
    return "ok"


def chart_benchmarks(ax: Any, data: ReportData) -> bool:
    runs = [run for run in data.benchmark_runs if run.get("latency_us")]
    if not runs:
        _no_data(ax, "No benchmark result given (--benchmarks).")
        return False
    labels = [f"{r.get('target')}\n{r.get('mode')} c{r.get('concurrency')}" for r in runs]
    positions = range(len(runs))
    for offset, key in ((-0.2, "p50"), (0.2, "p99")):
        ax.bar(
            [p + offset for p in positions],
            [r["latency_us"].get(key) or 0 for r in runs],
            width=0.4,
            label=key,
        )
    ax.set_xticks(list(positions), labels, fontsize=7)
    ax.set_ylabel("latency (us)")
    ax.set_title("Benchmark runs")
    ax.legend(fontsize=8)
    return True


CHARTS: tuple[tuple[str, str, Any, bool], ...] = (
    ("latency_percentiles", "Latency percentiles over time", chart_percentiles, False),
    ("latency_histogram", "Latency histogram", chart_histogram, False),
    ("requests_per_second", "Requests per second", chart_rps, False),
    ("error_and_cache_hit_rates", "Error and cache hit rates", chart_rates, False),
    ("alert_timeline", "Alert timeline", chart_alerts, False),
    ("variant_comparison", "Optimizer variant comparison", chart_variants, True),
    ("benchmarks", "Benchmark runs", chart_benchmarks, False),
)


def render(data: ReportData, out_dir: Path) -> Path:
    """Write every chart as PNG and ``report.html`` embedding them; returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, title, draw, whole_figure in CHARTS:
        if name == "benchmarks" and not data.benchmark_runs:
            continue
        height = 3.2 * max(len(data.variants), 1) if whole_figure else 4.0
        fig = plt.figure(figsize=(10, height), dpi=90)
        drawn = draw(fig if whole_figure else fig.add_subplot(1, 1, 1), data)
        fig.tight_layout()
        png = out_dir / f"{name}.png"
        fig.savefig(png)
        plt.close(fig)
        encoded = base64.b64encode(png.read_bytes()).decode()
        note = "" if drawn else '<p class="nodata">No data for this chart.</p>'
        sections.append(
            f"<section><h2>{html.escape(title)}</h2>{note}"
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}"></section>'
        )
    has_data = any(data.timeline.values())
    banner = (
        ""
        if has_data
        else (
            '<p class="nodata"><strong>No data:</strong> no request was recorded in the period '
            "this report covers.</p>"
        )
    )
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in data.notes)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Policy inference server report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
img{{max-width:100%}} .nodata{{color:#a33}}</style></head>
<body><h1>Policy inference server report</h1>
<p>Source: {html.escape(data.source)}. Generated {generated}.</p>
{banner}<ul>{notes}</ul>
{"".join(sections)}
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    source.add_argument("--history", type=Path, help="the server's history directory")
    parser.add_argument("--benchmarks", type=Path, help="a benchmark result JSON")
    parser.add_argument("--manifest", type=Path, help="the optimizer's manifest.json")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        data = from_server(args.url) if args.url else from_history(args.history)
        if args.manifest:
            add_manifest(data, args.manifest)
        if args.benchmarks:
            add_benchmarks(data, args.benchmarks)
    except (OSError, urllib.error.URLError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = render(data, args.out)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
