"""One flywheel cycle as a sequence of stages, each a plain function of (cycle, warehouse).

Airflow operators call these; so do the unit tests, without Airflow. Every stage is idempotent
for its logical date: its inputs and outputs live at paths derived from the cycle id, and its
warehouse writes replace the cycle's partition. A stage can therefore be cleared and rerun on
its own from the Airflow UI, and a backfill writes no duplicates.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.config import PHASES, FlywheelConfig
from flywheel.data.bootstrap import MANUAL_MODEL_VERSION
from flywheel.data.dataset import build_chat_dataset
from flywheel.data.extract import Window, as_utc, extract_window_snapshot, lagged_window
from flywheel.errors import FlywheelError, TrainingError, WindowError
from flywheel.model import registry
from flywheel.providers import prepare_base_model, task_templates
from flywheel.records import TrainingCandidate, candidate_from_row, content_fingerprint, row_to_json
from flywheel.tables import PRODUCTION_LOGS, WINDOW_SNAPSHOT, rows_to_table
from flywheel.validation import ValidationIssue, ValidationLimits, facts_from_row, validate_row
from flywheel.warehouse import Pushdown, Warehouse

log = logging.getLogger(__name__)


class InsufficientDataError(FlywheelError):
    """Too few kept examples to train on: the cycle records itself and skips training."""


@dataclass(frozen=True)
class CycleSpec:
    dag_id: str
    logical_date: datetime
    window: Window
    config: FlywheelConfig
    # Run everything, but leave the champion where it is (the decision is recorded as such).
    dry_run: bool = False
    # The phase whose capture policy the config already carries (see `flywheel.ops.phases`).
    phase: str | None = None

    @property
    def cycle_id(self) -> str:
        return f"{self.dag_id}-{self.logical_date:%Y%m%dT%H%M}"

    @property
    def work_dir(self) -> Path:
        return self.config.artefacts_root / "cycles" / self.cycle_id

    @property
    def dataset_dir(self) -> Path:
        return self.config.artefacts_root / "datasets" / self.cycle_id

    @property
    def challenger_version(self) -> str:
        return self.cycle_id

    @property
    def adapter_dir(self) -> Path:
        return self.config.artefacts_root / "adapters" / self.challenger_version

    @property
    def limits(self) -> ValidationLimits:
        return ValidationLimits.from_config(self.config.validation)

    def file(self, name: str) -> Path:
        return self.work_dir / name

    @property
    def twin_version(self) -> str:
        """The challenger's twin, trained without the window's newest days (`stage_train_twin`)."""
        return f"{self.cycle_id}-twin"

    @property
    def newest_window(self) -> Window:
        """The window's newest `evaluation.newest_window_days`: the data the twin leaves out."""
        days = self.config.evaluation.newest_window_days
        return Window(start=max(self.window.start, self.window.end - timedelta(days=days)), end=self.window.end)


def make_cycle(
    dag_id: str,
    *,
    data_interval_end: datetime | None,
    logical_date: datetime | None,
    config: FlywheelConfig,
    window_start: datetime | None = None,
    dry_run: bool = False,
) -> CycleSpec:
    """The cycle a run stands for. Its window comes from ``data_interval_end`` (see `extract`),
    unless an operator overrides it with ``window_start`` (then ``[start, start + window_days)``,
    with no lag)."""
    end = data_interval_end or logical_date
    if end is None:
        raise WindowError(
            f"{dag_id}: the run has neither a data interval nor a logical date; trigger it with a "
            "logical date (the week whose cycle should run)"
        )
    if window_start is not None:
        start = as_utc(window_start)
        window = Window(start=start, end=start + timedelta(days=config.extract.window_days))
        if window.end > as_utc(end):
            raise WindowError(
                f"{dag_id}: the window override [{window.start}, {window.end}) ends after the run's date {as_utc(end)}: "
                "its logs may not have settled yet"
            )
    else:
        window = lagged_window(end, lag_days=config.extract.lag_days, window_days=config.extract.window_days)
    return CycleSpec(dag_id, as_utc(logical_date or end), window, config, dry_run=dry_run)


def _now() -> datetime:
    return datetime.now(UTC)


def stage_extract(cycle: CycleSpec, wh: Warehouse, extra_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Snapshot the window (plus the accumulated gold set when `extract.include_gold`)."""
    wh.ensure_schema()
    extra = list(extra_rows or [])
    gold = gold_rows_before(wh, cycle.logical_date) if cycle.config.extract.include_gold else []
    rows = extract_window_snapshot(
        wh,
        cycle.window,
        cycle.file("extract.parquet"),
        batch_rows=cycle.config.warehouse.read_batch_rows,
        max_skew=cycle.limits.max_clock_skew,
        pushdown=Pushdown(tuple(cycle.config.filters.allowed_actions), cycle.config.filters.min_quality_score),
        extra_rows=extra + gold,
        superseded_ids={g["request_id"] for g in gold},
    )
    log.info("%s: %d rows in window [%s, %s) (%d gold, %d from other sources), phase policy %s",
             cycle.cycle_id, rows, cycle.window.start, cycle.window.end, len(gold), len(extra), cycle.phase)  # fmt: skip
    return {
        "cycle_id": cycle.cycle_id,
        "rows_in_window": rows,
        "gold_rows": len(gold),
        "extra_rows": len(extra),
        "phase_policy": cycle.phase,
        "window_start": cycle.window.start.isoformat(),
        "window_end": cycle.window.end.isoformat(),
        "snapshot": str(cycle.file("extract.parquet")),
    }


def stage_extract_bootstrap(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Cold start: the beta users' traffic in the window, plus manual labels and synthetic
    examples (`flywheel.data.bootstrap`). Lines of a labels file that cannot be read as a row are
    kept for `stage_validate` to quarantine with their reason."""
    from flywheel.data import bootstrap

    cfg = cycle.config.bootstrap
    templates = task_templates(cycle.config.evaluation.task_templates)
    extra = bootstrap.synthetic_rows(templates, cfg.synthetic_per_task_type, seed=cfg.synthetic_seed, created_at=cycle.window.start)
    problems: list[bootstrap.LabelProblem] = []
    if cfg.labels_path:
        labels, problems = bootstrap.read_manual_labels(cycle.config.resolve(cfg.labels_path), labelled_at=cycle.window.start)
        extra += labels
    cycle.work_dir.mkdir(parents=True, exist_ok=True)
    cycle.file("unreadable.json").write_text(json.dumps([p.__dict__ for p in problems]))
    out = stage_extract(cycle, wh, extra)
    n_manual = sum(r["model_version"] == bootstrap.MANUAL_MODEL_VERSION for r in extra)
    return out | {"manual_labels": n_manual, "synthetic": len(extra) - n_manual, "unreadable_label_lines": len(problems)}


def gold_rows_before(wh: Warehouse, logical_date: datetime) -> list[dict[str, Any]]:
    """Every gold example accepted by a cycle before ``logical_date``, as log rows."""
    rows = wh.query(
        "SELECT * FROM gold_examples WHERE logical_date < $t ORDER BY request_id", {"t": logical_date}
    ).to_pylist()
    return [
        {"request_id": g["request_id"], "timestamp": g["logical_date"], "user_id": g["labeler"] or g["source"],
         "prompt": g["prompt"], "response": g["response"], "user_action": "accepted", "correction": None,
         "task_type": g["task_type"], "quality_score": 1.0, "included_in_training": False,
         "model_version": f"gold:{g['source']}", "context": g["context"], "ingested_at": g["logical_date"]}
        for g in rows
    ]  # fmt: skip


def _unreadable(cycle: CycleSpec) -> list[dict[str, Any]]:
    path = cycle.file("unreadable.json")
    return json.loads(path.read_text()) if path.is_file() else []


def _gate(cycle: CycleSpec, wh: Warehouse, gate: str, frame: Any, expectations: list[Any]) -> dict[str, Any]:
    from flywheel import gates
    from flywheel.artefacts import ArtefactStore

    result = gates.run_gate(
        gate, frame, expectations, docs_dir=cycle.config.artefacts_root / "data_docs", run_name=f"{cycle.cycle_id}-{gate}"
    )
    # A bucket root: the pages are shared; other workers' runs are not here, so nothing is pruned.
    ArtefactStore(cycle.config).publish(cycle.config.artefacts_root / "data_docs", prune=False)
    wh.replace_partition(
        "gate_results",
        {"cycle_id": cycle.cycle_id, "gate": gate},
        rows_to_table("gate_results", [gates.result_row(result, cycle_id=cycle.cycle_id, evaluated_at=_now())]),
    )
    gates.enforce(result, cycle_id=cycle.cycle_id)  # raises GateError: the task fails, loudly
    return {"gate": gate, "success": True, "expectations": len(result.outcomes), "docs_url": result.docs_url}


def stage_gate_raw_window(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Great Expectations on the raw window: schema, nulls, enums, ranges, unique ids, volume."""
    from statistics import median

    from flywheel import gates

    if not cycle.config.gates.enabled:
        return {"gate": "raw_window", "skipped": "gates.enabled is false"}
    table = pq.read_table(cycle.file("extract.parquet"))
    recent = wh.query(
        "SELECT rows_in_window FROM cycles WHERE dag_id = $dag_id AND logical_date < $before "
        "ORDER BY logical_date DESC LIMIT $n",
        {"dag_id": cycle.dag_id, "before": cycle.logical_date, "n": cycle.config.gates.volume_history_cycles},
    ).column("rows_in_window").to_pylist()
    volume_median = float(median(recent)) if recent else None
    expectations = gates.raw_window_expectations(cycle.config, volume_median=volume_median)
    return _gate(cycle, wh, "raw_window", gates.raw_window_profile(table), expectations)


def stage_gate_training_set(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Great Expectations on the built training set: no PII, no golden overlap, balance, length."""
    from flywheel import gates
    from flywheel.artefacts import ArtefactStore
    from flywheel.data.dataset import load_chat_dataset
    from flywheel.filters import golden_index
    from flywheel.filters.pii import default_scanner

    if not cycle.config.gates.enabled:
        return {"gate": "training_set", "skipped": "gates.enabled is false"}
    f = cycle.config.filters
    data = load_chat_dataset(ArtefactStore(cycle.config).fetch(cycle.dataset_dir))
    rows = [*data["train"], *data["validation"]]
    golden = golden_index(f, golden_inputs(cycle.config))
    frame = gates.training_set_profile(
        rows, pii_scanner=default_scanner(f.pii_entities, f.pii_min_score), golden_index=golden, hasher=golden.hasher
    )
    return _gate(cycle, wh, "training_set", frame, gates.training_set_expectations(cycle.config))


def stage_validate(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Split the snapshot into valid rows and quarantined rows, each with every reason.

    A request_id seen more than once is a re-delivery when every copy has the same content (the
    first copy stays valid, the others are quarantined as duplicates) and a conflict when the
    copies differ (every copy is quarantined: there is no telling which one is true).
    """
    rows = pq.read_table(cycle.file("extract.parquet")).to_pylist()
    limits = cycle.limits
    copies: dict[str, set[str]] = {}
    for row in rows:
        rid = row.get("request_id")
        if isinstance(rid, str) and rid:
            copies.setdefault(rid, set()).add(content_fingerprint(row))
    valid: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    seen: set[str] = set()
    now = _now()
    for n, row in enumerate(rows):
        issues = validate_row(row, limits, facts_from_row(row))
        rid = row.get("request_id")
        if isinstance(rid, str) and rid in copies:
            if len(copies[rid]) > 1:
                issues.append(
                    ValidationIssue(
                        "request_id", "conflicting_duplicate", f"request_id appears {len(copies[rid])} times with different content"
                    )
                )
            elif rid in seen:
                issues.append(ValidationIssue("request_id", "duplicate_delivery", "an identical copy of this row was already read"))
            seen.add(rid)
        if not issues:
            valid.append(row)
            continue
        raw = row_to_json(redact_row_for_quarantine(row, cycle.config))
        for issue in issues:
            quarantine.append(
                {
                    "cycle_id": cycle.cycle_id,
                    "row_number": n,
                    "request_id": rid,
                    "field": issue.field,
                    "rule": issue.rule,
                    "reason": f"row {n} (request_id={rid!r}): {issue.reason}",
                    "raw_json": raw,
                    "quarantined_at": now,
                }
            )
    for k, problem in enumerate(_unreadable(cycle)):
        quarantine.append(
            {"cycle_id": cycle.cycle_id, "row_number": len(rows) + k, "request_id": None, "field": "line",
             "rule": "unreadable", "reason": f"{problem['source']} line {problem['line']}: {problem['reason']}",
             "raw_json": None, "quarantined_at": now}
        )  # fmt: skip
    wh.replace_partition("quarantine", {"cycle_id": cycle.cycle_id}, rows_to_table("quarantine", quarantine))
    pq.write_table(pa.Table.from_pylist(valid, schema=WINDOW_SNAPSHOT), cycle.file("valid.parquet"))
    n_quarantined = len({q["row_number"] for q in quarantine})
    reasons = Counter(f"{q['field']}.{q['rule']}" for q in quarantine)
    if n_quarantined:
        log.warning("%s: %d rows quarantined: %s", cycle.cycle_id, n_quarantined, dict(reasons))
    return {"valid": len(valid), "quarantined": n_quarantined, "quarantine_reasons": dict(reasons)}


def redact_row_for_quarantine(row: dict[str, Any], config: FlywheelConfig) -> dict[str, Any]:
    """The quarantined row as kept for operators: its text fields with PII redacted."""
    from flywheel.filters.pii import default_scanner

    scanner = default_scanner(config.filters.pii_entities, config.filters.pii_min_score)
    out = dict(row)
    for name in ("prompt", "response", "correction", "context", "user_id"):
        value = out.get(name)
        if isinstance(value, str) and value:
            out[name] = scanner.redact(value).text
    return out


def _candidates(path: Path) -> list[TrainingCandidate]:
    return [candidate_from_row(r) for r in pq.read_table(path).to_pylist()]


def golden_inputs(config: FlywheelConfig) -> list[str]:
    """The golden set's model inputs: what no training example may duplicate."""
    from flywheel.data.dataset import user_message
    from flywheel.evaluation.golden import golden_for

    return [user_message(t.prompt, t.context) for t in golden_for(config).tasks]


def training_history(cycle: CycleSpec, wh: Warehouse):  # -> DedupIndex
    """The fingerprints of every training set built before this cycle's logical date.

    Only strictly earlier cycles count, so a rerun or a backfill sees the same history."""
    import numpy as np

    from flywheel.filters.dedup import DedupIndex, Fingerprints, MinHasher

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


def stage_filter(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Every filter over the valid rows, streamed in batches; a decision per row and rule.

    Survivors (PII already redacted) are ranked by selection; the selected ones are the cycle's
    kept candidates (``kept.parquet``). Decisions go to the warehouse, partitioned by cycle.
    """
    from flywheel.filters import FilterChain, filter_stream

    cfg = cycle.config
    chain = FilterChain(cfg.filters, golden_inputs=golden_inputs(cfg), history=training_history(cycle, wh))
    source = pq.ParquetFile(cycle.file("valid.parquet"))
    now = _now()
    decision_tables: list[pa.Table] = []
    survivors_path = cycle.file("survivors.parquet")
    writer = pq.ParquetWriter(survivors_path, PRODUCTION_LOGS)
    try:
        stream, _, selected = filter_stream(
            (_filter_batch(batch) for batch in source.iter_batches(batch_size=cfg.warehouse.read_batch_rows)),
            chain,
            on_decisions=lambda ds: decision_tables.append(_decisions_table(cycle, ds, now)),
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


def _filter_batch(batch: pa.RecordBatch):  # -> FilterBatch
    """Valid rows as candidates; those the warehouse query's pushed-down rules rejected apart."""
    from flywheel.filters import FilterBatch

    rows = batch.to_pylist()
    return FilterBatch(
        [candidate_from_row(r) for r in rows if r["pushdown_kept"]],
        [candidate_from_row({**r, "prompt": "", "response": "", "correction": None, "context": None})
         for r in rows if not r["pushdown_kept"]],
    )  # fmt: skip


def _decisions_table(cycle: CycleSpec, decisions: list[Any], now: datetime) -> pa.Table:
    return rows_to_table("decisions", [{**d.__dict__, "cycle_id": cycle.cycle_id, "decided_at": now} for d in decisions])


def stage_build_dataset(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Kept candidates → the chat dataset, after the human review: rejected items are left out
    (a `review` decision records it), approved ones train as gold, with the reviewer's edit."""
    from flywheel.artefacts import ArtefactStore

    kept = _candidates(cycle.file("kept.parquet"))
    reviewed = _apply_reviews(cycle, wh, kept)
    kept = [c for c in kept if reviewed.get(c.request_id, True) is not False]
    kept = _keep_out_flagged_windows(cycle, wh, kept)
    minimum = cycle.config.training.min_examples
    if len(kept) < minimum:
        raise InsufficientDataError(
            f"{cycle.cycle_id}: {len(kept)} kept examples < training.min_examples={minimum}; no challenger this cycle"
        )
    training = cycle.config.training
    gold = _gold(cycle, wh, kept)
    info = build_chat_dataset(
        kept, cycle.dataset_dir, gold=gold, val_fraction=training.val_fraction,
        gold_weight=training.gold_weight, curriculum=training.curriculum,
    )  # fmt: skip
    _record_training_fingerprints(cycle, wh, kept)
    _record_gold_examples(cycle, wh, [c for c in kept if c.model_version == MANUAL_MODEL_VERSION], "manual_labels")
    _record_gold_examples(cycle, wh, [c for c in kept if reviewed.get(c.request_id)], "review", gold)
    row = {
        "dataset_id": cycle.cycle_id,
        "cycle_id": cycle.cycle_id,
        "path": ArtefactStore(cycle.config).publish(info.path),  # the local path, or its URI in a bucket
        "n_train": info.n_train,
        "n_val": info.n_val,
        "n_corrections": info.n_corrections,
        "content_hash": info.content_hash,
        "window_start": cycle.window.start,
        "window_end": cycle.window.end,
        "created_at": _now(),
    }
    wh.replace_partition("datasets", {"cycle_id": cycle.cycle_id}, rows_to_table("datasets", [row]))
    return {k: (str(v) if isinstance(v, datetime | Path) else v) for k, v in row.items()} | {
        "n_gold": len(gold), "review_rejected": sum(v is False for v in reviewed.values()),
        "review_approved": sum(v is True for v in reviewed.values()),
    }  # fmt: skip


def _gold_ids_before(wh: Warehouse, logical_date: datetime) -> set[str]:
    """Gold examples accepted before this run: old data whatever their window (the monthly
    cycle re-reads them with the accepting cycle's date as their timestamp)."""
    return set(wh.query("SELECT request_id FROM gold_examples WHERE logical_date < $t", {"t": logical_date})
               .column("request_id").to_pylist())  # fmt: skip


def _newest_ids(cycle: CycleSpec, wh: Warehouse) -> set[str]:
    """The kept candidates logged in the window's newest days, gold examples aside."""
    gold = _gold_ids_before(wh, cycle.logical_date)
    return {c.request_id for c in _candidates(cycle.file("kept.parquet"))
            if c.timestamp in cycle.newest_window and c.request_id not in gold}  # fmt: skip


def flagged_windows(wh: Warehouse, before: datetime) -> list[dict[str, Any]]:
    """Newest windows that earlier cycles' new-data checks flagged (their model was worse than
    the twin trained without them), oldest first."""
    return wh.query("SELECT cycle_id, newest_start, newest_end, reason FROM new_data_comparisons "
                    "WHERE flagged AND logical_date < $t ORDER BY newest_start", {"t": before}).to_pylist()  # fmt: skip


def _keep_out_flagged_windows(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]) -> list[TrainingCandidate]:
    """Kept candidates from a flagged window leave the dataset, each with a `flagged_window`
    decision naming the cycle that flagged it (so the cycle's counts still add up)."""
    flags = [(Window(as_utc(f["newest_start"]), as_utc(f["newest_end"])), f) for f in flagged_windows(wh, cycle.logical_date)]
    gold = _gold_ids_before(wh, cycle.logical_date) if flags else set()  # people vouched for these: they stay
    now, rows, out = _now(), [], []
    for c in kept:
        hit = None if c.request_id in gold else next((f for w, f in flags if c.timestamp in w), None)
        if hit is None:
            out.append(c)
            continue
        rows.append({"cycle_id": cycle.cycle_id, "request_id": c.request_id, "rule": "flagged_window", "kept": False,
                     "score": None, "threshold": None, "decided_at": now,
                     "reason": f"from the window [{hit['newest_start']:%Y-%m-%d}, {hit['newest_end']:%Y-%m-%d}) that "
                               f"{hit['cycle_id']} flagged: its model was worse than the twin trained without it"})  # fmt: skip
    wh.execute("DELETE FROM decisions WHERE cycle_id = $c AND rule = 'flagged_window'", {"c": cycle.cycle_id})
    if rows:
        wh.merge("decisions", rows_to_table("decisions", rows))
        log.warning("%s: %d kept candidates from flagged windows left out", cycle.cycle_id, len(rows))
    return out


def _apply_reviews(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]) -> dict[str, bool]:
    """{request_id: approved} for the kept candidates humans reviewed; each gets a `review`
    decision (so the cycle's counts stay true: a rejected one is no longer kept)."""
    from flywheel.review.items import verdicts

    if not cycle.config.review.enabled:
        return {}
    found = verdicts(wh, cycle.cycle_id)
    kept_ids = {c.request_id for c in kept}
    now = _now()
    rows = [
        {"cycle_id": cycle.cycle_id, "request_id": rid, "rule": "review", "kept": v.approved, "score": float(v.n_reviews),
         "threshold": None, "reason": (f"approved by {v.n_reviews} reviewer(s)" + (" with an edited answer" if v.edited_response else ""))
         if v.approved else f"rejected by human review ({v.n_reviews} reviewer(s))", "decided_at": now}
        for rid, v in sorted(found.items()) if rid in kept_ids
    ]  # fmt: skip
    wh.execute("DELETE FROM decisions WHERE cycle_id = $c AND rule = 'review'", {"c": cycle.cycle_id})
    if rows:
        wh.merge("decisions", rows_to_table("decisions", rows))
    return {rid: v.approved for rid, v in found.items() if rid in kept_ids}


def _gold(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]) -> dict[str, str | None]:
    """Kept rows a person vouched for, with the answer to train on when a reviewer edited it
    (None: the row's own answer): manual labels, gold examples accepted before, approved reviews."""
    from flywheel.review.items import verdicts

    known = set(wh.query("SELECT request_id FROM gold_examples WHERE logical_date < $t", {"t": cycle.logical_date})
                .column("request_id").to_pylist())  # fmt: skip
    approved = {rid: v.edited_response for rid, v in verdicts(wh, cycle.cycle_id).items() if v.approved} if cycle.config.review.enabled else {}
    out: dict[str, str | None] = {}
    for c in kept:
        if c.request_id in approved:
            out[c.request_id] = approved[c.request_id]
        elif c.model_version == MANUAL_MODEL_VERSION or c.request_id in known:
            out[c.request_id] = None
    return out


def _record_gold_examples(
    cycle: CycleSpec, wh: Warehouse, accepted: list[TrainingCandidate], source: str, edits: dict[str, str | None] | None = None
) -> None:
    """Manual labels and approved reviews that passed every filter (PII already redacted) join
    the gold set, with the reviewer's edit as the answer where there is one."""
    now = _now()
    edits = edits or {}
    rows = [
        {"request_id": c.request_id, "source": source, "cycle_id": cycle.cycle_id, "logical_date": cycle.logical_date,
         "task_type": c.task_type, "prompt": c.prompt, "context": c.context, "response": edits.get(c.request_id) or c.target,
         "labeler": c.user_id, "created_at": now}
        for c in accepted
    ]  # fmt: skip
    wh.replace_partition("gold_examples", {"cycle_id": cycle.cycle_id, "source": source}, rows_to_table("gold_examples", rows))


def stage_sample_for_review(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Send `review.sample_rate` of the window's candidates to human review (`flywheel.review.items`):
    a uniform random slice for calibration and a prioritised, stratified slice of the kept ones.
    Reviewers only ever see PII-redacted text."""
    from flywheel.review import items as review
    from flywheel.review import prioritize
    from flywheel.review.calibrate import RULES, current_thresholds

    cfg = cycle.config.review
    if not cfg.enabled:
        wh.replace_partition("review_items", {"cycle_id": cycle.cycle_id}, rows_to_table("review_items", []))
        return {"skipped": "review.enabled is false", "items": 0}
    valid = pq.read_table(cycle.file("valid.parquet")).to_pylist()
    candidates = [candidate_from_row(r) for r in valid]
    kept = _candidates(cycle.file("kept.parquet"))
    decisions = wh.select("decisions", {"cycle_id": cycle.cycle_id}).to_pylist()
    scores: dict[str, dict[str, float | None]] = {}
    rejected = set()
    for d in decisions:
        if d["rule"] in RULES:
            scores.setdefault(d["request_id"], {})[d["rule"]] = d["score"]
        if not d["kept"]:
            rejected.add(d["request_id"])
    budget = min(len(candidates), max(cfg.min_items, round(cfg.sample_rate * len(candidates))))
    uncertainty, change = _model_signals(cycle, wh, kept) if cfg.model_signals and kept else (None, None)
    priorities = prioritize.prioritise(
        kept, weights=cfg.priority_weights, filter_scores=scores, thresholds=current_thresholds(cycle.config.filters),
        window_mix=Counter(c.task_type for c in candidates), uncertainty=uncertainty, behaviour_change=change,
    )  # fmt: skip
    sample = review.draw_sample(candidates, kept, {p.request_id: p for p in priorities}, budget=budget,
                                random_share=cfg.random_share, seed=cycle.cycle_id)  # fmt: skip
    redacted = {c.request_id: c for c in kept}
    sample = review.Sample(_redacted_texts(cycle, wh, sample.random, redacted), sample.priority)
    kept_ids = {c.request_id for c in kept if c.request_id not in rejected}
    rows = review.item_rows(cycle.cycle_id, cycle.logical_date, sample, kept_ids=kept_ids, filter_scores=scores, now=_now())
    wh.replace_partition("review_items", {"cycle_id": cycle.cycle_id}, rows_to_table("review_items", rows))
    strata = Counter(f"{r['task_type']}/{r['user_action']}" for r in rows if r["slice"] == "priority")
    return {"items": len(rows), "random": len(sample.random), "priority": len(sample.priority), "candidates": len(candidates),
            "model_signals": uncertainty is not None, "priority_strata": dict(strata)}  # fmt: skip


def _model_signals(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]):
    """The champion's uncertainty on each kept answer, and how far it moved from its parent."""
    from flywheel.artefacts import ArtefactStore
    from flywheel.model.inference import load_model
    from flywheel.review.prioritize import answer_token_stats

    ensure_base_model(cycle.config, wh)
    store = ArtefactStore(cycle.config)
    champion = registry.get_model(wh, registry.champion_as_of(wh, cycle.logical_date))
    loaded = load_model(champion.base_model, champion.adapter_path, version=champion.version, store=store)
    parent = None
    if champion.parent_version:
        p = registry.get_model(wh, champion.parent_version)
        parent = load_model(p.base_model, p.adapter_path, version=p.version, store=store)
    return answer_token_stats(loaded, kept, reference=parent)


def _redacted_texts(
    cycle: CycleSpec, wh: Warehouse, picked: list[TrainingCandidate], already: dict[str, TrainingCandidate]
) -> list[TrainingCandidate]:
    """The random slice with its text, PII-redacted: rows whose text the window query withheld
    (the pushed-down rules rejected them) are read back from the warehouse by id."""
    from dataclasses import replace

    from flywheel.filters import redact_candidate
    from flywheel.filters.pii import default_scanner

    missing = {c.request_id for c in picked if c.request_id not in already and not c.prompt}
    texts: dict[str, dict[str, Any]] = {}
    if missing:
        for batch in wh.read_window("production_logs", cycle.window.start, cycle.window.end,
                                    batch_rows=cycle.config.warehouse.read_batch_rows, max_skew=cycle.limits.max_clock_skew):  # fmt: skip
            for r in batch.to_pylist():
                if r["request_id"] in missing:
                    texts[r["request_id"]] = r
    f = cycle.config.filters
    scanner = default_scanner(f.pii_entities, f.pii_min_score)
    out = []
    for c in picked:
        if c.request_id in already:
            out.append(already[c.request_id])
            continue
        src = texts.get(c.request_id)
        if src is not None:
            c = replace(c, prompt=src["prompt"], response=src["response"], correction=src["correction"], context=src["context"])
        out.append(redact_candidate(c, scanner)[0])
    return out


def stage_calibrate(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Refit the threshold filters to the random slices' verdicts of the last
    `calibration.lookback_days` (`flywheel.review.calibrate`); an adopted fit is the config version the
    next cycles run under. It runs where the cycle itself sends nothing to review too: the
    monthly cycle recalibrates on its month's weekly reviews."""
    from flywheel.review.calibrate import calibrate

    if not cycle.config.calibration.enabled:
        return {"skipped": "calibration.enabled is false"}
    return calibrate(wh, cycle_id=cycle.cycle_id, logical_date=cycle.logical_date, filters=cycle.config.filters,
                     config=cycle.config.calibration)  # fmt: skip


def _record_training_fingerprints(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]) -> None:
    """What this training set holds, as fingerprints (no text), for later cycles' dedup."""
    from flywheel.filters import interaction_text
    from flywheel.filters.dedup import MinHasher

    cfg = cycle.config.filters
    hasher = MinHasher.from_config(cfg)
    fp = hasher.fingerprint([interaction_text(c) for c in kept])
    rows = [
        {
            "cycle_id": cycle.cycle_id,
            "logical_date": cycle.logical_date,
            "request_id": c.request_id,
            "exact_key": int(fp.exact[i]),
            "signature": fp.bits[i].tobytes(),
            "fingerprint_spec": hasher.spec,
        }
        for i, c in enumerate(kept)
    ]
    wh.replace_partition("training_fingerprints", {"cycle_id": cycle.cycle_id}, rows_to_table("training_fingerprints", rows))


def ensure_base_model(config: FlywheelConfig, wh: Warehouse) -> str:
    """The base model's path or name; on the embedded default, build the tiny model if needed.

    With no champion yet (cold start), the base model becomes the first champion.
    """
    base = prepare_base_model(config)  # a built-in model is built once, again only when its config changed
    registry.ensure_bootstrap_champion(wh, base)
    return base


def stage_train(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    return _train_version(cycle, wh, version=cycle.challenger_version, dataset=_dataset_row(wh, cycle, cycle.cycle_id),
                          output_dir=cycle.adapter_dir)  # fmt: skip


def _dataset_row(wh: Warehouse, cycle: CycleSpec, dataset_id: str) -> dict[str, Any]:
    ds = wh.select("datasets", {"dataset_id": dataset_id}).to_pylist()
    if not ds:
        raise FlywheelError(f"{cycle.cycle_id}: no dataset {dataset_id} recorded; run build_dataset first")
    return ds[0]


def _train_version(
    cycle: CycleSpec, wh: Warehouse, *, version: str, dataset: dict[str, Any], output_dir: Path, window_end: datetime | None = None
) -> dict[str, Any]:
    """LoRA on ``dataset``, continuing from the champion's adapter; registered as ``version``
    with the window its data came from (the twin's ends where the newest days begin)."""
    from flywheel.artefacts import ArtefactStore
    from flywheel.model.training import train_lora_in_subprocess

    base = ensure_base_model(cycle.config, wh)
    store = ArtefactStore(cycle.config)  # a bucket root: inputs fetched here, the adapter published
    champion = registry.get_model(wh, registry.champion_as_of(wh, cycle.logical_date))
    if champion.base_model != base:
        raise registry.RegistryError(
            f"champion {champion.version} is built on {champion.base_model!r}, but training.base_model "
            f"resolves to {base!r}; an adapter cannot continue across base models"
        )
    result = train_lora_in_subprocess(
        base_model=str(store.local(base)),
        dataset_path=Path(str(store.local(dataset["path"]))),
        output_dir=output_dir,
        config=cycle.config.training,
        parent_adapter=store.local(champion.adapter_path),
        lineage={
            "cycle_id": cycle.cycle_id,
            "parent_version": champion.version,
            "dataset_hash": dataset["content_hash"],
            "window": [cycle.window.start.isoformat(), (window_end or cycle.window.end).isoformat()],
        },
    )
    store.publish(result.adapter_path)  # before it is registered: a registered adapter is fetchable
    registry.register_model(
        wh,
        registry.ModelVersion(
            version=version,
            base_model=base,
            adapter_path=store.uri(result.adapter_path),
            parent_version=champion.version,
            cycle_id=cycle.cycle_id,
            dataset_id=dataset["dataset_id"],
            dataset_hash=dataset["content_hash"],
            window_start=cycle.window.start,
            window_end=window_end or cycle.window.end,
            train_loss=result.train_loss,
            config_json=cycle.config.training.model_dump_json(),
            metrics_json=json.dumps(
                {"train_loss": result.train_loss, "steps": result.steps, "n_examples": result.n_examples,
                 "seconds": result.seconds, "resumed_from_step": result.resumed_from_step}
            ),  # fmt: skip
        ),
    )
    return {
        "version": version,
        "adapter_path": store.uri(result.adapter_path),
        "parent_version": champion.version,
        "train_loss": round(result.train_loss, 5),
        "steps": result.steps,
        "n_examples": result.n_examples,
        "seconds": result.seconds,
        "resumed_from_step": result.resumed_from_step,
    }


def stage_train_twin(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """New data vs old data, first half: the challenger's twin, trained the same way on the same
    dataset less the examples from the window's newest days (`CycleSpec.newest_window`).
    `stage_evaluate` scores it with the others and `stage_promote` compares it with the
    challenger. Nothing to do (and any earlier twin of this cycle forgotten) unless
    `evaluation.compare_new_data` is on and the window reaches further back than its newest days."""
    from flywheel.artefacts import ArtefactStore
    from flywheel.data.dataset import subset_chat_dataset

    wh.execute("DELETE FROM datasets WHERE dataset_id = $d", {"d": cycle.twin_version})
    newest = cycle.newest_window
    if not cycle.config.evaluation.compare_new_data:
        return {"skipped": "evaluation.compare_new_data is off for this run"}
    if newest.start <= cycle.window.start:
        return {"skipped": f"the window ({cycle.window.days:g} days) is no longer than evaluation.newest_window_days: "
                           "the champion stands for the twin, and the offline gate already compares with it"}  # fmt: skip
    dataset = _dataset_row(wh, cycle, cycle.cycle_id)
    newest_ids = _newest_ids(cycle, wh)
    store = ArtefactStore(cycle.config)  # a bucket root: the dataset fetched here, the twin's published
    source = store.fetch(cycle.dataset_dir)
    info = subset_chat_dataset(source, source.with_name(cycle.twin_version), drop=newest_ids)
    n_newest = dataset["n_train"] + dataset["n_val"] - info.n_train - info.n_val
    if n_newest == 0:
        return {"skipped": f"no example of the dataset is from the newest window [{newest.start:%Y-%m-%d}, {newest.end:%Y-%m-%d})"}
    if info.n_train < cycle.config.training.min_examples:
        return {"skipped": f"without the newest window only {info.n_train} examples remain "
                           f"(< training.min_examples={cycle.config.training.min_examples}): no twin to compare with"}  # fmt: skip
    row = {**dataset, "dataset_id": cycle.twin_version, "path": store.publish(info.path), "n_train": info.n_train,
           "n_val": info.n_val, "n_corrections": info.n_corrections, "content_hash": info.content_hash,
           "window_end": newest.start, "created_at": _now()}  # fmt: skip
    wh.merge("datasets", rows_to_table("datasets", [row]))
    try:
        out = _train_version(cycle, wh, version=cycle.twin_version, dataset=row, window_end=newest.start,
                             output_dir=cycle.adapter_dir.with_name(cycle.twin_version))  # fmt: skip
    except TrainingError as exc:
        # The twin is a diagnostic: its failure is reported (the operator alerts), and the cycle
        # goes on with its challenger, judged as if no twin had been asked for.
        wh.execute("DELETE FROM datasets WHERE dataset_id = $d", {"d": cycle.twin_version})
        log.error("%s: the twin could not be trained: %s", cycle.cycle_id, exc)
        return {"skipped": f"the twin could not be trained: {exc}", "failed": True}
    return out | {"n_newest": n_newest, "newest_window": [newest.start.isoformat(), newest.end.isoformat()]}


def stage_evaluate(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Champion and challenger on the golden set, each with its bootstrap interval and its score
    per item (kept for the paired comparison of the offline gate). First, the golden set must be
    the registered version, and the challenger's training set must hold none of its inputs."""
    from flywheel.artefacts import ArtefactStore
    from flywheel.evaluation.golden import golden_for
    from flywheel.evaluation.offline import (
        bootstrap_interval,
        check_golden_unchanged,
        evaluate_answer_fn,
    )
    from flywheel.model.inference import answer_fn, load_model

    ev = cycle.config.evaluation
    golden = golden_for(cycle.config)
    # A version is known by its file's name, not its absolute path: with a bucket root the
    # simulator's set lives in each worker's cache, wherever that worker keeps it.
    registered = [r for r in wh.query("SELECT path, golden_hash FROM golden_sets ORDER BY created_at").to_pylist()
                  if Path(r["path"]).name == golden.path.name]  # fmt: skip
    check_golden_unchanged(golden, registered[0]["golden_hash"] if registered else None)
    _check_training_set_decontaminated(cycle)
    champion = registry.get_model(wh, registry.champion_as_of(wh, cycle.logical_date))
    models = [("champion", champion), ("challenger", registry.get_model(wh, cycle.challenger_version))]
    if wh.count("datasets", {"dataset_id": cycle.twin_version}):  # this run trained a twin
        models.append(("twin", registry.get_model(wh, cycle.twin_version)))
    now = _now()
    rows, out = [], {"golden_hash": golden.content_hash, "golden_items": len(golden.tasks)}
    for role, mv in models:
        loaded = load_model(mv.base_model, mv.adapter_path, version=mv.version, store=ArtefactStore(cycle.config))
        result = evaluate_answer_fn(answer_fn(loaded, max_new_tokens=ev.max_new_tokens), golden)
        low, high = bootstrap_interval(result.item_scores, samples=ev.bootstrap_samples, confidence=ev.confidence,
                                       seed=ev.bootstrap_seed)  # fmt: skip
        rows.append(
            {
                "cycle_id": cycle.cycle_id,
                "model_version": mv.version,
                "role": role,
                "accuracy": result.accuracy,
                "n_items": result.n_items,
                "n_correct": result.n_correct,
                "per_task_json": json.dumps(result.per_task, sort_keys=True),
                "golden_hash": golden.content_hash,
                "evaluated_at": now,
                "accuracy_low": low,
                "accuracy_high": high,
                "scorer": result.scorer,
                "item_scores_json": json.dumps(result.item_scores),
            }
        )
        out[f"{role}_version"] = mv.version
        out[f"{role}_accuracy"] = result.accuracy
        out[f"{role}_interval"] = [round(low, 4), round(high, 4)]
    wh.replace_partition("evaluations", {"cycle_id": cycle.cycle_id}, rows_to_table("evaluations", rows))
    record_golden_set(wh, golden, cycle.cycle_id)
    return out


def _check_training_set_decontaminated(cycle: CycleSpec) -> None:
    """The set the challenger trained on holds no golden input (exact or near): verified on
    every cycle, whatever the filters and gates upstream did."""
    from flywheel.artefacts import ArtefactStore
    from flywheel.data.dataset import load_chat_dataset
    from flywheel.evaluation.offline import check_decontaminated
    from flywheel.filters import golden_index

    store = ArtefactStore(cycle.config)
    if not store.published(cycle.dataset_dir):
        return  # no dataset: the challenger was registered by other means (nothing to check)
    data = load_chat_dataset(store.fetch(cycle.dataset_dir))
    rows = [*data["train"], *data["validation"]]
    check_decontaminated([r["messages"][0]["content"] for r in rows], [r["request_id"] for r in rows],
                         golden_index(cycle.config.filters, golden_inputs(cycle.config)))  # fmt: skip


def record_golden_set(wh: Warehouse, golden: Any, cycle_id: str) -> bool:
    """Register the golden set's version (its content hash) the first time a cycle uses it.
    Returns True when this version is new."""
    if wh.count("golden_sets", {"golden_hash": golden.content_hash}):
        return False
    types = Counter(t.task_type for t in golden.tasks)
    wh.merge("golden_sets", rows_to_table("golden_sets", [{
        "golden_hash": golden.content_hash, "path": str(golden.path), "n_items": len(golden.tasks),
        "task_types_json": json.dumps(dict(sorted(types.items()))), "first_cycle_id": cycle_id, "created_at": _now(),
    }]))  # fmt: skip
    return True


def stage_promote(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """The offline gate (overall gain, no slice regression, paired bootstrap intervals), stored
    per cycle in `offline_comparisons`. A challenger that passes goes to an online A/B test
    (`experiment.enabled`): the pointer moves later, when `ab_monitor` sees a significant win.
    With experiments off, passing the gate promotes at once."""
    from flywheel.evaluation import experiment
    from flywheel.evaluation.golden import golden_for
    from flywheel.evaluation.offline import EvalResult, compare_offline

    evals = {r["role"]: r for r in wh.select("evaluations", {"cycle_id": cycle.cycle_id}).to_pylist()}
    if not {"champion", "challenger"} <= set(evals):
        raise FlywheelError(f"{cycle.cycle_id}: evaluations missing ({sorted(evals)}); run evaluate first")
    ev = cycle.config.evaluation
    golden = golden_for(cycle.config)
    results = {}
    for role, e in evals.items():
        if e["golden_hash"] != golden.content_hash or not e.get("item_scores_json"):
            raise FlywheelError(f"{cycle.cycle_id}: the {role}'s evaluation is not on golden set {golden.content_hash[:12]} "
                                "item by item; rerun evaluate_golden_set")  # fmt: skip
        results[role] = EvalResult(e["accuracy"], e["n_items"], e["n_correct"], json.loads(e["per_task_json"] or "{}"),
                                   tuple(json.loads(e["item_scores_json"])), e.get("scorer") or "exact_match")  # fmt: skip
    candidate = _compare_new_data(cycle, wh, golden, evals, results)
    champion, challenger = evals["champion"]["model_version"], evals[candidate]["model_version"]
    gate = compare_offline(golden.tasks, results["champion"], results[candidate], champion_version=champion,
                           challenger_version=challenger, config=ev)  # fmt: skip
    wh.replace_partition("offline_comparisons", {"cycle_id": cycle.cycle_id}, rows_to_table("offline_comparisons", [{
        "cycle_id": cycle.cycle_id, "champion": champion, "challenger": challenger, "golden_hash": golden.content_hash,
        "champion_accuracy": gate.champion_accuracy, "champion_low": gate.champion_interval[0],
        "champion_high": gate.champion_interval[1], "challenger_accuracy": gate.challenger_accuracy,
        "challenger_low": gate.challenger_interval[0], "challenger_high": gate.challenger_interval[1],
        "delta": gate.delta, "delta_low": gate.delta_interval[0], "delta_high": gate.delta_interval[1],
        "slices_json": gate.slices_json(), "passed": gate.passed, "reason": gate.reason, "compared_at": _now()}]))  # fmt: skip
    promoted, reason, experiment_id = gate.passed, gate.reason, None
    ab = cycle.config.experiment.enabled
    if cycle.dry_run:
        promoted, reason = False, f"dry run, champion kept; would have {'promoted' if gate.passed else 'kept the champion'}: {gate.reason}"
    elif gate.passed and ab:
        exp = experiment.start_experiment(wh, cycle_id=cycle.cycle_id, logical_date=cycle.logical_date, champion=champion,
                                          challenger=challenger, config=cycle.config.experiment)  # fmt: skip
        promoted, experiment_id = False, exp.experiment_id
        reason = f"{gate.reason}; A/B test {exp.experiment_id} started at {exp.traffic_share:.0%} of traffic (champion kept until it wins)"
    if not (gate.passed and ab) or cycle.dry_run:
        experiment.cancel_experiment(wh, cycle.cycle_id)  # a rerun leaves what a first run would
    row = registry.record_decision(
        wh,
        cycle_id=cycle.cycle_id,
        logical_date=cycle.logical_date,
        champion_before=champion,
        challenger=challenger,
        promoted=promoted,
        reason=reason,
    )
    log.info("%s: %s", cycle.cycle_id, reason)
    return {"promoted": promoted, "champion_after": row["champion_after"], "reason": reason, "gate_passed": gate.passed,
            "delta": round(gate.delta, 4), "delta_interval": [round(x, 4) for x in gate.delta_interval],
            "experiment_id": experiment_id}  # fmt: skip


def _compare_new_data(cycle: CycleSpec, wh: Warehouse, golden: Any, evals: dict[str, Any], results: dict[str, Any]) -> str:
    """New data vs old data, second half: did the window's newest days help? The challenger
    against its twin on the golden set (paired bootstrap interval, per-slice detail), stored in
    `new_data_comparisons`. Newest data that made the model worse than the twin by more than
    `evaluation.max_new_data_regression` is flagged: its examples get a `new_data_check`
    decision, later cycles keep the window out (`flagged_windows`), and the twin goes to the
    offline gate in the challenger's place. Returns the role that goes to the gate."""
    import math

    from flywheel.evaluation.offline import compare_offline

    wh.execute("DELETE FROM decisions WHERE cycle_id = $c AND rule = 'new_data_check'", {"c": cycle.cycle_id})
    if "twin" not in evals:
        wh.execute("DELETE FROM new_data_comparisons WHERE cycle_id = $c", {"c": cycle.cycle_id})
        return "challenger"
    ev, newest = cycle.config.evaluation, cycle.newest_window
    twin, challenger = evals["twin"]["model_version"], evals["challenger"]["model_version"]
    cmp = compare_offline(golden.tasks, results["twin"], results["challenger"], champion_version=twin,
                          challenger_version=challenger, config=ev)  # fmt: skip
    tolerance = ev.max_new_data_regression
    hurt = cmp.delta < -tolerance and not math.isclose(cmp.delta, -tolerance, abs_tol=1e-12)
    flagged = hurt and not cycle.dry_run  # a dry run changes nothing later cycles read
    verdict = "helped" if cmp.delta > 0 else "hurt" if cmp.delta < 0 else "no_gain"
    span = f"[{newest.start:%Y-%m-%d}, {newest.end:%Y-%m-%d})"
    ci = f"[{cmp.delta_interval[0]:+.3f}, {cmp.delta_interval[1]:+.3f}]"
    newest_ids = sorted(_newest_ids(cycle, wh))
    full, twin_set = (_dataset_row(wh, cycle, d) for d in (cycle.cycle_id, cycle.twin_version))
    n_newest = full["n_train"] + full["n_val"] - twin_set["n_train"] - twin_set["n_val"]
    reason = (f"newest window {span} ({n_newest} examples): challenger {cmp.challenger_accuracy:.4f} vs twin without it "
              f"{cmp.champion_accuracy:.4f}, {cmp.delta:+.4f} {ci}; ")  # fmt: skip
    if flagged:
        reason += f"the new data made the model worse by more than {tolerance}: window flagged and kept out, the twin goes to the gate"
    elif hurt:
        reason += f"the new data made the model worse by more than {tolerance}: a dry run, so nothing is flagged (the twin goes to the gate)"
    else:
        reason += "the new data helped" if verdict == "helped" else f"the new data did not help (within the tolerance {tolerance}): kept"
    now = _now()
    wh.replace_partition("new_data_comparisons", {"cycle_id": cycle.cycle_id}, rows_to_table("new_data_comparisons", [{
        "cycle_id": cycle.cycle_id, "logical_date": cycle.logical_date, "challenger": challenger, "twin": twin,
        "newest_start": newest.start, "newest_end": newest.end, "n_newest": n_newest,
        "challenger_accuracy": cmp.challenger_accuracy, "twin_accuracy": cmp.champion_accuracy, "delta": cmp.delta,
        "delta_low": cmp.delta_interval[0], "delta_high": cmp.delta_interval[1], "verdict": verdict, "flagged": flagged,
        "reason": reason, "compared_at": now}]))  # fmt: skip
    if not hurt:
        log.info("%s: %s", cycle.cycle_id, reason)
        return "challenger"
    log.warning("%s: %s", cycle.cycle_id, reason)
    if not flagged:
        return "twin"
    wh.merge("decisions", rows_to_table("decisions", [
        {"cycle_id": cycle.cycle_id, "request_id": rid, "rule": "new_data_check", "kept": False, "score": cmp.delta,
         "threshold": -tolerance, "reason": f"newest window {span} flagged: {cmp.delta:+.4f} {ci} against the twin", "decided_at": now}
        for rid in newest_ids]))  # fmt: skip
    return "twin"


def stage_record(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Write the cycle's summary row, phase and velocity metrics; check that the counts add up.

    Unreadable lines of a labels file count as rows in the window (each is quarantined)."""
    from flywheel.ops.metrics import ab_promotion_metrics, days_since_last_gain
    from flywheel.ops.phases import classify, examples_collected

    rows_in_window = pq.read_metadata(cycle.file("extract.parquet")).num_rows + len(_unreadable(cycle))
    counts = wh.named_query("cycle_counts", {"cycle_id": cycle.cycle_id}).to_pylist()[0]
    quarantined, kept, rejected = (int(counts[k] or 0) for k in ("quarantined", "kept", "rejected"))
    if quarantined + kept + rejected != rows_in_window:
        raise FlywheelError(
            f"{cycle.cycle_id}: counts do not add up: {rows_in_window} rows in window != "
            f"{quarantined} quarantined + {kept} kept + {rejected} rejected"
        )
    evals = {r["role"]: r for r in wh.select("evaluations", {"cycle_id": cycle.cycle_id}).to_pylist()}
    promo = wh.select("promotions", {"cycle_id": cycle.cycle_id}).to_pylist()
    champion_before = registry.champion_as_of(wh, cycle.logical_date)
    # The challenger that went to the gate: the twin when the newest window was flagged.
    gated = wh.select("offline_comparisons", {"cycle_id": cycle.cycle_id}).to_pylist()
    challenger_role = next((role for role, e in evals.items() if gated and e["model_version"] == gated[0]["challenger"]), "challenger")
    champ_acc = evals.get("champion", {}).get("accuracy")
    chall_acc = evals.get(challenger_role, {}).get("accuracy")
    promoted = bool(promo and promo[0]["promoted"])
    row = {
        "cycle_id": cycle.cycle_id,
        "dag_id": cycle.dag_id,
        "logical_date": cycle.logical_date,
        "window_start": cycle.window.start,
        "window_end": cycle.window.end,
        "rows_in_window": rows_in_window,
        "quarantined": quarantined,
        "kept": kept,
        "rejected": rejected,
        "pass_rate": kept / rows_in_window if rows_in_window else 0.0,
        "champion_before": champion_before,
        "challenger": evals.get(challenger_role, {}).get("model_version"),
        "champion_accuracy": champ_acc,
        "challenger_accuracy": chall_acc,
        "promoted": promoted,
        "champion_after": promo[0]["champion_after"] if promo else champion_before,
        "finished_at": _now(),
    }
    champion_after_acc = chall_acc if promoted else champ_acc
    if champion_after_acc is None:  # no challenger this cycle: the champion's last measured accuracy
        champion_after_acc = _last_accuracy(wh, row["champion_after"], cycle.logical_date)
    collected = examples_collected(wh, cycle.logical_date)
    row["phase"] = classify(champion_after_acc, collected, cycle.config.phases)
    wh.replace_partition("cycles", {"cycle_id": cycle.cycle_id}, rows_to_table("cycles", [row]))
    from flywheel.ops.metrics import cycle_metrics

    metrics = cycle_metrics(row, window_days=cycle.window.days)
    for r in wh.named_query("rule_pass_rates", {"cycle_id": cycle.cycle_id}).to_pylist():
        metrics[f"pass_rate.{r['rule']}"] = float(r["pass_rate"])
        metrics[f"evaluated.{r['rule']}"] = float(r["evaluated"])
    task_types = pq.read_table(cycle.file("extract.parquet"), columns=["task_type"]).column("task_type").to_pylist()
    for task_type, n in Counter(t for t in task_types if t).items():
        metrics[f"mix.{task_type}"] = n / len(task_types)
    if promoted:
        metrics["time_to_improvement_days"] = days_since_last_gain(wh, cycle.logical_date, cycle.dag_id)
    else:  # a rerun after ab_monitor promoted the challenger keeps what the monitor recorded
        metrics |= ab_promotion_metrics(wh, cycle.cycle_id, cycle.dag_id)
    metrics["examples_collected"] = float(collected)
    metrics |= _review_throughput(cycle, wh)
    metrics["phase_index"] = float(PHASES.index(row["phase"]))
    now = _now()
    wh.replace_partition(
        "metrics",
        {"cycle_id": cycle.cycle_id},
        rows_to_table("metrics", [{"cycle_id": cycle.cycle_id, "name": k, "value": v, "recorded_at": now} for k, v in metrics.items()]),
    )
    diagnosis = _diagnose(cycle, wh, evals.get("champion"))
    wh.merge("metrics", rows_to_table("metrics", [
        {"cycle_id": cycle.cycle_id, "name": "stagnant", "value": float(diagnosis.stagnant), "recorded_at": now},
        {"cycle_id": cycle.cycle_id, "name": "cycles_without_gain", "value": float(diagnosis.cycles_without_gain), "recorded_at": now},
    ]))  # fmt: skip
    if diagnosis.stagnant:
        log.warning("%s: flywheel %s", cycle.cycle_id, diagnosis.describe())
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()} | {
        "metrics": metrics,
        "stagnation": {"stagnant": diagnosis.stagnant, "cycles_without_gain": diagnosis.cycles_without_gain,
                       "causes": diagnosis.causes, "summary": diagnosis.describe()},
    }  # fmt: skip


def _review_throughput(cycle: CycleSpec, wh: Warehouse) -> dict[str, float]:
    """How fast people got through the cycle's review sample: items, reviews, the median time a
    review took, and the hours from the sample to its last review (none when nothing was sampled)."""
    from statistics import median

    items = wh.count("review_items", {"cycle_id": cycle.cycle_id})
    if not items:
        return {}
    reviews = wh.select("reviews", {"cycle_id": cycle.cycle_id}).to_pylist()
    out = {"review_items": float(items), "reviews": float(len(reviews))}
    seconds = [r["seconds_spent"] for r in reviews if r["seconds_spent"] is not None]
    if seconds:
        out["review_seconds_median"] = float(median(seconds))
    if reviews:
        first = wh.query("SELECT MIN(created_at) AS t FROM review_items WHERE cycle_id = $c", {"c": cycle.cycle_id}).to_pylist()[0]["t"]
        out["review_turnaround_hours"] = (max(r["reviewed_at"] for r in reviews) - first).total_seconds() / 3600
    return out


def stage_report(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """The cycle's report (Markdown + PNG plots) in ``reports/<cycle_id>/``. Monthly cycles
    (`extract.include_gold`) add the broader evaluation: every task type with intervals."""
    from flywheel.artefacts import ArtefactStore
    from flywheel.ops.report import write_cycle_report

    out = cycle.config.artefacts_root / "reports" / cycle.cycle_id
    path = write_cycle_report(wh, cycle.cycle_id, out, broad=cycle.config.extract.include_gold)
    store = ArtefactStore(cycle.config)
    shared = {"report_uri": store.publish(out) + "/" + path.name} if store.remote else {}
    return {"report": str(path), "plots": sorted(p.name for p in out.glob("*.png"))} | shared


def _last_accuracy(wh: Warehouse, version: str, before: datetime) -> float | None:
    """The latest golden-set accuracy measured for ``version`` up to ``before``."""
    rows = wh.query(
        "SELECT e.accuracy FROM evaluations e JOIN cycles c ON c.cycle_id = e.cycle_id "
        "WHERE e.model_version = $v AND c.logical_date <= $t ORDER BY c.logical_date DESC LIMIT 1",
        {"v": version, "t": before},
    ).to_pylist()
    return rows[0]["accuracy"] if rows else None


def _diagnose(cycle: CycleSpec, wh: Warehouse, champion_eval: dict[str, Any] | None):  # -> StagnationDiagnosis
    from flywheel.ops.metrics import diagnose_stagnation

    cycles = wh.query(
        "SELECT cycle_id FROM cycles WHERE dag_id = $d AND logical_date <= $t ORDER BY logical_date",
        {"d": cycle.dag_id, "t": cycle.logical_date},
    ).column("cycle_id").to_pylist()
    values: dict[str, dict[str, float]] = {}
    for r in wh.query(
        "SELECT m.cycle_id, m.name, m.value FROM metrics m JOIN cycles c ON c.cycle_id = m.cycle_id "
        "WHERE c.dag_id = $d AND c.logical_date <= $t",
        {"d": cycle.dag_id, "t": cycle.logical_date},
    ).to_pylist():
        values.setdefault(r["cycle_id"], {})[r["name"]] = r["value"]
    history = []
    for c in cycles:
        v = values.get(c, {})
        history.append({
            "quality_delta": v.get("quality_delta"),
            "examples_per_day": v.get("examples_per_day"),
            "filter_pass_rate": v.get("filter_pass_rate"),
            "task_mix": {k.split(".", 1)[1]: x for k, x in v.items() if k.startswith("mix.")},
        })  # fmt: skip
    if history and champion_eval:
        per_task = json.loads(champion_eval.get("per_task_json") or "{}")
        history[-1]["champion_per_task"] = {t: s["accuracy"] for t, s in per_task.items()}
    return diagnose_stagnation(history, cycle.config.velocity)
