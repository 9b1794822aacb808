"""The closing table of a run, in Markdown: per model and variant, as served, the worst
errors and decision agreement on the held-out realistic sets, batch-1 latency, cost per
sample at batch 32 and 256, size, and whether it is eligible and selected."""

from __future__ import annotations

from optimize.manifest import FidelityMode, Manifest, ModelRecord, Status, VariantRecord

COLUMNS = (
    "model",
    "variant",
    "max err probs",
    "p99.9 err probs",
    "max err value",
    "agreement alone, b32: normal / t3 / mixed",
    "agreement served (worst)",
    "fallbacks range / margin (normal, b32)",
    "b1 p50 us",
    "b1 p99 us",
    "us/sample b32",
    "us/sample b256",
    "KiB",
    "eligible",
    "serves",
)
HEADER = "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|"


def _worst(record: VariantRecord, mode: FidelityMode) -> tuple[float, float, float, float]:
    """Max errors, p99.9 error and the lowest agreement over every set and batch size."""
    figures = [f for f in record.fidelity if f.mode == mode]
    return (
        max(f.max_abs_error_probs for f in figures),
        max(f.p99_9_abs_error_probs for f in figures),
        max(f.max_abs_error_value for f in figures),
        min(f.agreement for f in figures),
    )


def _serves(entry: ModelRecord, record: VariantRecord) -> str:
    roles = []
    if entry.selected == record.name:
        below = f"batches < {entry.batch_min_rows}" if entry.batch_variant else "every batch"
        roles.append(f"**{below}**")
    if entry.batch_variant == record.name:
        roles.append(f"**batches >= {entry.batch_min_rows}**")
    return ", ".join(roles)


def _row(entry: ModelRecord, record: VariantRecord) -> str:
    if record.status == Status.FAILED or not record.fidelity or record.latency_us is None:
        return f"| {entry.name} | {record.name} | failed: {record.error} |" + " |" * (
            len(COLUMNS) - 3
        )
    probs, p999, value, agreement_served = _worst(record, FidelityMode.SERVED)
    alone = " / ".join(
        f"{f.agreement:.2%}"
        for case in ("normal", "student_t3", "mixed_1e3")
        if (f := record.fidelity_for(case, FidelityMode.ALONE, 32)) is not None
    )
    normal = record.fidelity_for("normal", FidelityMode.SERVED, 32)
    fallbacks = (
        f"{normal.fallback_range_rows} / {normal.fallback_margin_rows}"
        if normal and record.guard
        else "-"
    )
    cost = record.per_sample_us
    return (
        f"| {entry.name} | {record.name} | {probs:.3g} | {p999:.3g} | {value:.3g} "
        f"| {alone} | {agreement_served:.2%} | {fallbacks} "
        f"| {record.latency_us.p50:.1f} | {record.latency_us.p99:.1f} "
        f"| {cost.get('32', float('nan')):.2f} | {cost.get('256', float('nan')):.2f} "
        f"| {(record.size_bytes or 0) / 1024:.0f} | {'yes' if record.eligible else 'no'} "
        f"| {_serves(entry, record)} |"
    )


def markdown_table(manifest: Manifest) -> str:
    rows = [_row(entry, r) for entry in manifest.models.values() for r in entry.variants]
    return "\n".join([HEADER, *rows])
