"""Build the dataset: the kept candidates after human review, less the windows earlier cycles
flagged, as a chat dataset; with the gold examples it adds and the fingerprints later cycles
deduplicate against."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.artefacts import ArtefactStore
from flywheel.cycle import spec
from flywheel.cycle.filtering import decision_row, kept_candidates
from flywheel.cycle.spec import CycleSpec, InsufficientDataError
from flywheel.data.bootstrap import MANUAL_MODEL_VERSION
from flywheel.data.dataset import DatasetInfo, build_chat_dataset, load_chat_dataset
from flywheel.data.extract import Window, as_utc
from flywheel.errors import FlywheelError
from flywheel.filters import interaction_text
from flywheel.filters.dedup import MinHasher
from flywheel.model import registry
from flywheel.records import TrainingCandidate
from flywheel.review.items import verdicts
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse

log = logging.getLogger(__name__)


def build_dataset(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Kept candidates → the chat dataset, after the human review: rejected items are left out
    (a `review` decision records it), approved ones train as gold, with the reviewer's edit."""
    kept = kept_candidates(cycle)
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
    carried, carried_from = _carried_rows(cycle, wh)
    info = build_chat_dataset(
        kept, cycle.dataset_dir, gold=gold, val_fraction=training.val_fraction,
        gold_weight=training.gold_weight, curriculum=training.curriculum, carried=carried,
    )  # fmt: skip
    _record_training_fingerprints(cycle, wh, kept)
    _record_gold_examples(cycle, wh, [c for c in kept if c.model_version == MANUAL_MODEL_VERSION], "manual_labels")
    _record_gold_examples(cycle, wh, [c for c in kept if reviewed.get(c.request_id)], "review", gold)
    row = dataset_row(
        cycle, info, dataset_id=cycle.cycle_id,
        path=ArtefactStore(cycle.config).publish(info.path),  # the local path, or its URI in a bucket
        window_start=cycle.window.start, window_end=cycle.window.end,
    )  # fmt: skip
    wh.replace_partition("datasets", {"cycle_id": cycle.cycle_id}, rows_to_table("datasets", [row]))
    return {k: (str(v) if isinstance(v, datetime | Path) else v) for k, v in row.items()} | {
        "n_gold": len(gold), "review_rejected": sum(v is False for v in reviewed.values()),
        "review_approved": sum(v is True for v in reviewed.values()), "n_kept": len(kept),
        "carried_from": carried_from,
    }  # fmt: skip


def pending_datasets(wh: Warehouse, cycle: CycleSpec) -> list[dict[str, Any]]:
    """Earlier cycles' datasets that the champion in force has not learnt, newest first, at most
    `training.carry_over_cycles`: built after the champion's own training cycle, and whose
    challenger was not worse than its champion on the golden set (a week that made the model
    worse, a poisoned one say, is not trained on again). A challenger that gained too little to
    be promoted alone leaves its week's examples here for the next one."""
    n = cycle.config.training.carry_over_cycles
    if n == 0:
        return []
    champion = registry.get_model(wh, registry.champion_as_of(wh, cycle.logical_date))
    trained = wh.select("cycles", {"cycle_id": champion.cycle_id}).to_pylist()
    since = as_utc(trained[0]["logical_date"]) if trained else datetime(1970, 1, 1, tzinfo=UTC)
    return wh.query(
        "SELECT d.cycle_id, d.path, c.logical_date FROM datasets d "
        "JOIN cycles c ON c.cycle_id = d.cycle_id JOIN offline_comparisons o ON o.cycle_id = d.cycle_id "
        "WHERE d.dataset_id = d.cycle_id AND c.logical_date > $since AND c.logical_date < $t AND o.delta >= 0 "
        f"ORDER BY c.logical_date DESC LIMIT {int(n)}",
        {"since": since, "t": cycle.logical_date},
    ).to_pylist()


def _carried_rows(cycle: CycleSpec, wh: Warehouse) -> tuple[tuple[list[dict[str, Any]], list[dict[str, Any]]], list[str]]:
    """The (train, validation) rows of the pending datasets (`pending_datasets`), as they were
    built (reviewed, redacted and weighted then), and the cycles they come from."""
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    store = ArtefactStore(cycle.config)
    pending = pending_datasets(wh, cycle)
    for d in pending:
        data = load_chat_dataset(Path(store.local(d["path"]) or d["path"]))
        train.extend(data["train"])
        val.extend(data["validation"])
    if pending:
        log.info("%s: %d train and %d validation rows carried over from %s", cycle.cycle_id, len(train), len(val),
                 ", ".join(d["cycle_id"] for d in pending))  # fmt: skip
    return (train, val), [d["cycle_id"] for d in pending]


def dataset_row(
    cycle: CycleSpec, info: DatasetInfo, *, dataset_id: str, path: str, window_start: datetime, window_end: datetime
) -> dict[str, Any]:
    """A `datasets` row: where a built dataset lives, what it holds and the window it came from."""
    return {"dataset_id": dataset_id, "cycle_id": cycle.cycle_id, "path": path, "n_train": info.n_train,
            "n_val": info.n_val, "n_corrections": info.n_corrections, "content_hash": info.content_hash,
            "window_start": window_start, "window_end": window_end, "created_at": spec.now()}  # fmt: skip


def recorded_dataset(wh: Warehouse, cycle: CycleSpec, dataset_id: str) -> dict[str, Any]:
    """The `datasets` row of ``dataset_id``, which a stage before this one must have built."""
    ds = wh.select("datasets", {"dataset_id": dataset_id}).to_pylist()
    if not ds:
        raise FlywheelError(f"{cycle.cycle_id}: no dataset {dataset_id} recorded; run build_dataset first")
    return ds[0]


def flagged_windows(wh: Warehouse, before: datetime) -> list[dict[str, Any]]:
    """Newest windows that earlier cycles' new-data checks flagged (their model was worse than
    the twin trained without them), oldest first."""
    return wh.query("SELECT cycle_id, newest_start, newest_end, reason FROM new_data_comparisons "
                    "WHERE flagged AND logical_date < $t ORDER BY newest_start", {"t": before}).to_pylist()  # fmt: skip


def newest_ids(cycle: CycleSpec, wh: Warehouse) -> set[str]:
    """The kept candidates logged in the window's newest days, gold examples aside."""
    gold = _gold_ids_before(wh, cycle.logical_date)
    return {c.request_id for c in kept_candidates(cycle)
            if c.timestamp in cycle.newest_window and c.request_id not in gold}  # fmt: skip


def _gold_ids_before(wh: Warehouse, logical_date: datetime) -> set[str]:
    """Gold examples accepted before this run: old data whatever their window (the monthly
    cycle re-reads them with the accepting cycle's date as their timestamp)."""
    return set(wh.query("SELECT request_id FROM gold_examples WHERE logical_date < $t", {"t": logical_date})
               .column("request_id").to_pylist())  # fmt: skip


def _keep_out_flagged_windows(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]) -> list[TrainingCandidate]:
    """Kept candidates from a flagged window leave the dataset, each with a `flagged_window`
    decision naming the cycle that flagged it (so the cycle's counts still add up)."""
    flags = [(Window(as_utc(f["newest_start"]), as_utc(f["newest_end"])), f) for f in flagged_windows(wh, cycle.logical_date)]
    gold = _gold_ids_before(wh, cycle.logical_date) if flags else set()  # people vouched for these: they stay
    now, rows, out = spec.now(), [], []
    for c in kept:
        hit = None if c.request_id in gold else next((f for w, f in flags if c.timestamp in w), None)
        if hit is None:
            out.append(c)
            continue
        rows.append(decision_row(cycle, c.request_id, "flagged_window", kept=False, decided_at=now,
                                 reason=f"from the window [{hit['newest_start']:%Y-%m-%d}, {hit['newest_end']:%Y-%m-%d}) that "
                                        f"{hit['cycle_id']} flagged: its model was worse than the twin trained without it"))  # fmt: skip
    wh.execute("DELETE FROM decisions WHERE cycle_id = $c AND rule = 'flagged_window'", {"c": cycle.cycle_id})
    if rows:
        wh.merge("decisions", rows_to_table("decisions", rows))
        log.warning("%s: %d kept candidates from flagged windows left out", cycle.cycle_id, len(rows))
    return out


def _apply_reviews(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]) -> dict[str, bool]:
    """{request_id: approved} for the kept candidates humans reviewed; each gets a `review`
    decision (so the cycle's counts stay true: a rejected one is no longer kept)."""
    if not cycle.config.review.enabled:
        return {}
    found = verdicts(wh, cycle.cycle_id)
    kept_ids = {c.request_id for c in kept}
    now = spec.now()
    rows = [
        decision_row(cycle, rid, "review", kept=v.approved, score=float(v.n_reviews), decided_at=now,
                     reason=(f"approved by {v.n_reviews} reviewer(s)" + (" with an edited answer" if v.edited_response else ""))
                     if v.approved else f"rejected by human review ({v.n_reviews} reviewer(s))")
        for rid, v in sorted(found.items()) if rid in kept_ids
    ]  # fmt: skip
    wh.execute("DELETE FROM decisions WHERE cycle_id = $c AND rule = 'review'", {"c": cycle.cycle_id})
    if rows:
        wh.merge("decisions", rows_to_table("decisions", rows))
    return {rid: v.approved for rid, v in found.items() if rid in kept_ids}


def _gold(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]) -> dict[str, str | None]:
    """Kept rows a person vouched for, with the answer to train on when a reviewer edited it
    (None: the row's own answer): manual labels, gold examples accepted before, approved reviews."""
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
    now = spec.now()
    edits = edits or {}
    rows = [
        {"request_id": c.request_id, "source": source, "cycle_id": cycle.cycle_id, "logical_date": cycle.logical_date,
         "task_type": c.task_type, "prompt": c.prompt, "context": c.context, "response": edits.get(c.request_id) or c.target,
         "labeler": c.user_id, "created_at": now}
        for c in accepted
    ]  # fmt: skip
    wh.replace_partition("gold_examples", {"cycle_id": cycle.cycle_id, "source": source}, rows_to_table("gold_examples", rows))


def _record_training_fingerprints(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]) -> None:
    """What this training set holds, as fingerprints (no text), for later cycles' dedup
    (`filtering.training_history`)."""
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
