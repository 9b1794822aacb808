"""The selection policy.

- Batch 1: the lowest batch-1 p99 among the eligible float32 variants. The batch-1 variant
  runs unguarded (the server's fused engine takes its graph as it is) and serves every
  batch below the int8 threshold, rows of different requests together, so int8 is not a
  candidate there: it would answer inputs beyond its calibrated range with saturated,
  finite numbers where float32 overflows (and the server must refuse), and dynamic int8's
  answer for a row depends on the other rows of its batch. A fresh build once picked
  dynamic int8 at batch 1 on a noisy timing and the server answered ±3.4e38 rows with 200.
- Batches: an eligible int8 variant (behind its guards) serves batches from the smallest
  measured size on which it is cheaper per sample than the batch-1 selection, by more than
  noise, at that size and every larger one.
"""

from __future__ import annotations

from collections.abc import Sequence

from optimize.manifest import Precision, Status, VariantName, VariantRecord

# Differences within this fraction are ties (run-to-run spread on this shared host); ties
# go to float32.
NOISE_FRACTION = 0.10
ROW_INDEPENDENT = frozenset({VariantName.ONNX_INT8_STATIC})


def _why_not(record: VariantRecord) -> str:
    if record.precision == Precision.INT8 and record.servable:
        return f"{record.name} serves batches only, behind its guards"
    if record.status == Status.FAILED:
        return f"{record.name} failed: {record.error}"
    if not record.within_tolerance:
        return f"{record.name} excluded: {record.tolerance_detail or 'beyond tolerance'}"
    return f"{record.name} excluded: {record.eligibility or 'not eligible'}"


def _clearly_below(candidate: float, incumbent: float) -> bool:
    return candidate < incumbent * (1.0 - NOISE_FRACTION)


def select_variant(records: Sequence[VariantRecord]) -> tuple[VariantName | None, str]:
    eligible = [
        r
        for r in records
        if r.servable and r.latency_us is not None and r.precision == Precision.FP32
    ]
    rejected = [_why_not(r) for r in records if r not in eligible]
    if not eligible:
        return None, "no variant built and eligible (float32, for batch 1); " + "; ".join(rejected)

    def p99(r: VariantRecord) -> tuple[float, float]:
        assert r.latency_us is not None
        # p50 breaks a tie of p99 (the percentiles are rounded to the nanosecond).
        return (r.latency_us.p99, r.latency_us.p50)

    best = min(eligible, key=p99)
    among = f"{len(eligible)} variants" if len(eligible) > 1 else "the only variant"
    reason = f"lowest batch-1 p99 ({p99(best)[0]:.1f} us) among {among} eligible"
    if rejected:
        reason += "; " + "; ".join(rejected)
    return best.name, reason


def _cost(record: VariantRecord, size: int) -> float:
    """us per sample at batch ``size``; infinite when it was not measured."""
    return record.per_sample_us.get(str(size), float("inf"))


def select_batch_variant(
    records: Sequence[VariantRecord], selected: VariantName | None
) -> tuple[VariantName | None, int | None, str]:
    """(variant for batches, smallest batch it serves, why)."""
    by_name = {r.name: r for r in records}
    base = by_name.get(selected) if selected is not None else None
    if base is None:
        return None, None, "no batch-1 selection to compare with"
    if base.precision == Precision.INT8:
        return None, None, f"{base.name} is int8 already and serves every batch"
    candidates = [
        r for r in records if r.servable and r.precision == Precision.INT8 and r.guard is not None
    ]
    sizes = sorted(int(s) for s in base.per_sample_us)
    if not candidates or not sizes:
        return None, None, "no int8 variant is eligible; float32 serves every batch"
    largest = sizes[-1]
    best = min(candidates, key=lambda r: _cost(r, largest))
    # Static int8 answers each row on its own; dynamic int8's answer for a row depends on
    # the rest of its batch. Within noise of the cheapest, the static one is taken.
    static = [r for r in candidates if r.name in ROW_INDEPENDENT]
    if static and best not in static:
        cheapest_static = min(static, key=lambda r: _cost(r, largest))
        if not _clearly_below(_cost(best, largest), _cost(cheapest_static, largest)):
            best = cheapest_static
    min_rows = None
    for size in reversed(sizes):
        if not _clearly_below(_cost(best, size), _cost(base, size)):
            break
        min_rows = size
    figures = ", ".join(f"batch {s}: {_cost(best, s)} vs {_cost(base, s)} us/sample" for s in sizes)
    if min_rows is None:
        why = f"{best.name} (guarded) is not clearly cheaper than {base.name}: "
        return None, None, why + figures
    why = f"{best.name} behind its guards for batches of {min_rows}+ rows, {base.name} below: "
    return best.name, min_rows, why + figures
