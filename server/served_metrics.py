"""What the server adds to the monitor's ``/stats``, ``/metrics`` and ``/alerts``: each
model's circuit and its int8 guards. Rendered on request, nothing on the hot path.

With several fronts each has its own circuits and int8 counters; the views here are of
plain dicts so that every front's (from the shared directory) can be added up: a circuit
shows its worst state among the fronts (open, then half-open, then closed) and the times
it opened summed over them."""

from __future__ import annotations

from collections.abc import Iterable

from server.breaker import BreakerState, CircuitBreaker

INT8_FIELDS = ("int8_rows", "range_fallbacks", "margin_fallbacks")
_WORST = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

Circuits = dict[str, dict]  # model -> CircuitBreaker.snapshot()


def circuits(
    names: tuple[str, ...], breakers: list[CircuitBreaker], opened_before: dict[str, int]
) -> Circuits:
    """This front's circuits; ``opened_before``: times they opened in this slot's earlier
    lives (a front started again counts on)."""
    view = {name: b.snapshot() for name, b in zip(names, breakers, strict=True)}
    for name, snapshot in view.items():
        snapshot["opened_total"] += opened_before.get(name, 0)
    return view


def merge_circuits(views: Iterable[Circuits]) -> Circuits:
    merged: Circuits = {}
    for view in views:
        for name, snapshot in view.items():
            into = merged.get(name)
            if into is None:
                merged[name] = dict(snapshot)
                continue
            into["opened_total"] += snapshot["opened_total"]
            into["consecutive_failures"] = max(
                into["consecutive_failures"], snapshot["consecutive_failures"]
            )
            if _WORST[BreakerState(snapshot["state"])] > _WORST[BreakerState(into["state"])]:
                into["state"] = snapshot["state"]
            into["retry_after_s"] = max(into["retry_after_s"], snapshot["retry_after_s"])
    return merged


def closed(view: Circuits) -> Circuits:
    """``view`` with every state closed, its counts kept: a front that has stopped writing
    (dead, not yet started again) refuses nothing."""
    return {
        name: {**s, "state": BreakerState.CLOSED.value, "retry_after_s": 0}
        for name, s in view.items()
    }


def merge_int8(counts: Iterable[list[list[int]]]) -> list[list[int]]:
    total: list[list[int]] = []
    for per_model in counts:
        if not per_model:  # no earlier life
            continue
        if not total:
            total = [list(c) for c in per_model]
            continue
        for into, c in zip(total, per_model, strict=True):
            for i, n in enumerate(c):
                into[i] += n
    return total


def breaker_metrics(view: Circuits) -> bytes:
    """Prometheus text for the circuits, appended to the monitor's /metrics body."""
    lines = [
        "# HELP pis_circuit_state Circuit breaker state per model (1 for the current state).",
        "# TYPE pis_circuit_state gauge",
    ]
    for name, snapshot in view.items():
        for state in BreakerState:
            value = int(snapshot["state"] == state.value)
            lines.append(f'pis_circuit_state{{model="{name}",state="{state.value}"}} {value}')
    lines += [
        "# HELP pis_circuit_opened_total Times the model's circuit opened.",
        "# TYPE pis_circuit_opened_total counter",
    ]
    for name, snapshot in view.items():
        lines.append(f'pis_circuit_opened_total{{model="{name}"}} {snapshot["opened_total"]}')
    return ("\n".join(lines) + "\n").encode()


def breaker_alerts(view: Circuits) -> list[dict]:
    """A firing alert per model whose circuit is not closed, in /alerts' shape."""
    return [
        {
            "name": "circuit_open",
            "severity": "critical",
            "model": name,
            "state": snapshot["state"],
            "message": f"{name}: calls keep failing or timing out; requests get 503 until a "
            "probe succeeds",
        }
        for name, snapshot in view.items()
        if snapshot["state"] != BreakerState.CLOSED.value
    ]


def int8_stats(names: tuple[str, ...], counts: list[list[int]]) -> dict[str, dict[str, int]]:
    """Per model: rows run on int8 for batches, and the rows its range and margin guards
    recomputed in float32 (all zero when the model serves float32 only)."""
    return {
        name: dict(zip(INT8_FIELDS, model_counts, strict=True))
        for name, model_counts in zip(names, counts, strict=True)
    }


def int8_metrics(names: tuple[str, ...], counts: list[list[int]]) -> bytes:
    lines = [
        "# HELP pis_int8_rows_total Rows run on the int8 variant (batches past its size).",
        "# TYPE pis_int8_rows_total counter",
    ]
    pairs = list(zip(names, counts, strict=True))
    lines += [f'pis_int8_rows_total{{model="{name}"}} {c[0]}' for name, c in pairs]
    lines += [
        "# HELP pis_int8_guard_fallbacks_total Rows an int8 guard recomputed in float32.",
        "# TYPE pis_int8_guard_fallbacks_total counter",
    ]
    for name, c in pairs:
        lines.append(f'pis_int8_guard_fallbacks_total{{model="{name}",guard="range"}} {c[1]}')
        lines.append(f'pis_int8_guard_fallbacks_total{{model="{name}",guard="margin"}} {c[2]}')
    return ("\n".join(lines) + "\n").encode()
