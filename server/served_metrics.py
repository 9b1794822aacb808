"""What the server adds to the monitor's ``/stats``, ``/metrics`` and ``/alerts``: each
model's circuit and its int8 guards. Rendered on request, nothing on the hot path."""

from __future__ import annotations

from server.breaker import BreakerState, CircuitBreaker

INT8_FIELDS = ("int8_rows", "range_fallbacks", "margin_fallbacks")


def breaker_metrics(names: tuple[str, ...], breakers: list[CircuitBreaker]) -> bytes:
    """Prometheus text for the circuits, appended to the monitor's /metrics body."""
    lines = [
        "# HELP pis_circuit_state Circuit breaker state per model (1 for the current state).",
        "# TYPE pis_circuit_state gauge",
    ]
    for name, breaker in zip(names, breakers, strict=True):
        for state in BreakerState:
            value = int(breaker.state is state)
            lines.append(f'pis_circuit_state{{model="{name}",state="{state.value}"}} {value}')
    lines += [
        "# HELP pis_circuit_opened_total Times the model's circuit opened.",
        "# TYPE pis_circuit_opened_total counter",
    ]
    for name, breaker in zip(names, breakers, strict=True):
        lines.append(f'pis_circuit_opened_total{{model="{name}"}} {breaker.opened}')
    return ("\n".join(lines) + "\n").encode()


def breaker_alerts(names: tuple[str, ...], breakers: list[CircuitBreaker]) -> list[dict]:
    """A firing alert per model whose circuit is not closed, in /alerts' shape."""
    return [
        {
            "name": "circuit_open",
            "severity": "critical",
            "model": name,
            "state": breaker.state.value,
            "message": f"{name}: calls keep failing or timing out; requests get 503 until a "
            "probe succeeds",
        }
        for name, breaker in zip(names, breakers, strict=True)
        if breaker.state is not BreakerState.CLOSED
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
