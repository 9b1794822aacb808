"""The selection policy: the lowest batch-1 p99 among the variants within tolerance."""

from __future__ import annotations

from collections.abc import Sequence

from optimize.manifest import Status, VariantName, VariantRecord


def _why_not(record: VariantRecord) -> str:
    if record.status == Status.FAILED:
        return f"{record.name} failed: {record.error}"
    return f"{record.name} excluded: {record.tolerance_detail or 'beyond tolerance'}"


def select_variant(records: Sequence[VariantRecord]) -> tuple[VariantName | None, str]:
    eligible = [r for r in records if r.servable and r.latency_us is not None]
    rejected = [_why_not(r) for r in records if r not in eligible]
    if not eligible:
        return None, "no variant built and within tolerance; " + "; ".join(rejected)
    # p50 breaks a tie of p99 (the percentiles are rounded to the nanosecond).
    best = min(eligible, key=lambda r: (r.latency_us.p99, r.latency_us.p50))  # type: ignore[union-attr]
    assert best.latency_us is not None
    among = f"{len(eligible)} variants" if len(eligible) > 1 else "the only variant"
    reason = f"lowest batch-1 p99 ({best.latency_us.p99:.1f} us) among {among} within tolerance"
    return best.name, "; ".join([reason, *rejected])
