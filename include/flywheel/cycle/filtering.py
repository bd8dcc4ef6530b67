"""Filter: every rule of the chain over the cycle's valid rows, a decision per row and rule,
and the kept candidates that the review sample and the dataset start from."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.config import FlywheelConfig
from flywheel.cycle import spec
from flywheel.cycle.spec import CycleSpec
from flywheel.data.dataset import user_message
from flywheel.evaluation.golden import golden_for
from flywheel.filters import FilterBatch, FilterChain, FilterDecision, filter_stream
from flywheel.filters.dedup import DedupIndex, Fingerprints, MinHasher
from flywheel.records import TrainingCandidate, candidate_from_row
from flywheel.tables import PRODUCTION_LOGS, rows_to_table
from flywheel.warehouse import Warehouse


def filter_candidates(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Every filter over the valid rows, streamed in batches; a decision per row and rule.

    Survivors (PII already redacted) are ranked by selection; the selected ones are the cycle's
    kept candidates (``kept.parquet``). Decisions go to the warehouse, partitioned by cycle.
    """
    cfg = cycle.config
    chain = FilterChain(cfg.filters, golden_inputs=golden_inputs(cfg), history=training_history(cycle, wh))
    source = pq.ParquetFile(cycle.file("valid.parquet"))
    now = spec.now()
    decision_tables: list[pa.Table] = []
    survivors_path = cycle.file("survivors.parquet")
    writer = pq.ParquetWriter(survivors_path, PRODUCTION_LOGS)
    try:
        stream, _, selected = filter_stream(
            (filter_batch(batch) for batch in source.iter_batches(batch_size=cfg.warehouse.read_batch_rows)),
            chain,
            on_decisions=lambda ds: decision_tables.append(decisions_table(cycle, ds, now)),
            on_survivors=lambda ss: writer.write_table(
                pa.Table.from_pylist([s.candidate.to_row() for s in ss], schema=PRODUCTION_LOGS)
            ),
        )
    finally:
        writer.close()
    n_candidates = stream.candidates
    decisions = pa.concat_tables(decision_tables) if decision_tables else rows_to_table("decisions", [])
    wh.replace_partition("decisions", {"cycle_id": cycle.cycle_id}, decisions)

    kept_writer = pq.ParquetWriter(cycle.file("kept.parquet"), PRODUCTION_LOGS)
    try:
        for batch in pq.ParquetFile(survivors_path).iter_batches(batch_size=cfg.warehouse.read_batch_rows):
            table = pa.Table.from_batches([batch])
            mask = pa.array([rid in selected for rid in table.column("request_id").to_pylist()], pa.bool_())
            kept_writer.write_table(table.filter(mask))
    finally:
        kept_writer.close()
    survivors_path.unlink()

    rejected_rows = pc.invert(decisions.column("kept"))
    rejected_by = Counter(decisions.column("rule").filter(rejected_rows).to_pylist())
    return {
        "candidates": n_candidates,
        "kept": len(selected),
        "rejected": n_candidates - len(selected),
        "rejected_by_rule": dict(rejected_by),
    }


def kept_candidates(cycle: CycleSpec) -> list[TrainingCandidate]:
    """The candidates `filter_candidates` kept, PII already redacted."""
    return [candidate_from_row(r) for r in pq.read_table(cycle.file("kept.parquet")).to_pylist()]


def decision_row(
    cycle: CycleSpec,
    request_id: str,
    rule: str,
    *,
    kept: bool,
    reason: str,
    decided_at: datetime,
    score: float | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """A `decisions` row for a rule applied after the chain (review, flagged window, new-data
    check): each row's fate stays in the one table the cycle's counts are read from."""
    return {"cycle_id": cycle.cycle_id, "request_id": request_id, "rule": rule, "kept": kept, "score": score,
            "threshold": threshold, "reason": reason, "decided_at": decided_at}  # fmt: skip


def golden_inputs(config: FlywheelConfig) -> list[str]:
    """The golden set's model inputs: what no training example may duplicate."""
    return [user_message(t.prompt, t.context) for t in golden_for(config).tasks]


def training_history(cycle: CycleSpec, wh: Warehouse) -> DedupIndex:
    """The fingerprints of every training set built before this cycle's logical date.

    Only strictly earlier cycles count, so a rerun or a backfill sees the same history."""
    cfg = cycle.config.filters
    hasher = MinHasher.from_config(cfg)
    index = DedupIndex(hasher, cfg.near_dup_threshold)
    if not cfg.dedup_against_history:
        return index
    rows = wh.query(
        "SELECT cycle_id, request_id, exact_key, signature FROM training_fingerprints "
        "WHERE logical_date < $before AND fingerprint_spec = $spec ORDER BY logical_date, request_id",
        {"before": cycle.logical_date, "spec": hasher.spec},
    )
    if rows.num_rows:
        sig = np.frombuffer(b"".join(rows.column("signature").to_pylist()), dtype=np.uint8)
        fp = Fingerprints(
            rows.column("exact_key").to_numpy().astype(np.int64), sig.reshape(rows.num_rows, hasher.num_perm)
        )
        labels = [f"request {r} (trained in {c})" for c, r in zip(rows.column("cycle_id").to_pylist(), rows.column("request_id").to_pylist(), strict=True)]
        index.add(fp, labels)
    return index


def filter_batch(batch: pa.RecordBatch) -> FilterBatch:
    """Valid rows as candidates; those the warehouse query's pushed-down rules rejected apart."""
    rows = batch.to_pylist()
    return FilterBatch(
        [candidate_from_row(r) for r in rows if r["pushdown_kept"]],
        [candidate_from_row({**r, "prompt": "", "response": "", "correction": None, "context": None})
         for r in rows if not r["pushdown_kept"]],
    )  # fmt: skip


def decisions_table(cycle: CycleSpec, decisions: list[FilterDecision], now: datetime) -> pa.Table:
    return rows_to_table("decisions", [{**d.__dict__, "cycle_id": cycle.cycle_id, "decided_at": now} for d in decisions])
