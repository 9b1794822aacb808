"""The selection policy.

- Batch 1: the lowest batch-1 p99 among the eligible variants; an int8 variant must beat
  the best float32 one by more than measurement noise at p99 and p50, or float32 is kept.
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
    if record.status == Status.FAILED:
        return f"{record.name} failed: {record.error}"
    if not record.within_tolerance:
        return f"{record.name} excluded: {record.tolerance_detail or 'beyond tolerance'}"
    return f"{record.name} excluded: {record.eligibility or 'not eligible'}"


def _clearly_below(candidate: float, incumbent: float) -> bool:
    return candidate < incumbent * (1.0 - NOISE_FRACTION)


def select_variant(records: Sequence[VariantRecord]) -> tuple[VariantName | None, str]:
    eligible = [r for r in records if r.servable and r.latency_us is not None]
    rejected = [_why_not(r) for r in records if r not in eligible]
    if not eligible:
        return None, "no variant built and eligible; " + "; ".join(rejected)

    def p99(r: VariantRecord) -> tuple[float, float]:
        assert r.latency_us is not None
        # p50 breaks a tie of p99 (the percentiles are rounded to the nanosecond).
        return (r.latency_us.p99, r.latency_us.p50)

    best = min(eligible, key=p99)
    fp32 = [r for r in eligible if r.precision == Precision.FP32]
    tie_note = ""
    if best.precision == Precision.INT8 and fp32:
        best_fp32 = min(fp32, key=p99)
        # int8 must be clearly faster at the median too: a p99 of a short run is noise.
        if not all(map(_clearly_below, p99(best), p99(best_fp32))):
            tie_note = (
                f" ({best.name}'s p99/p50 {p99(best)[0]:.1f}/{p99(best)[1]:.1f} us are not "
                f"both {NOISE_FRACTION:.0%} below: a tie, which goes to float32)"
            )
            best = best_fp32
    among = f"{len(eligible)} variants" if len(eligible) > 1 else "the only variant"
    reason = f"lowest batch-1 p99 ({p99(best)[0]:.1f} us) among {among} eligible{tie_note}"
    return best.name, "; ".join([reason, *rejected])


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
