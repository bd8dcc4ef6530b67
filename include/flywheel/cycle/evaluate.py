"""Evaluate: champion, challenger (and twin) on the frozen golden set, item by item, once the
golden set is known to be the registered version and the training set to be free of it."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from flywheel.artefacts import ArtefactStore
from flywheel.cycle import spec
from flywheel.cycle.filtering import golden_inputs
from flywheel.cycle.spec import CycleSpec
from flywheel.data.dataset import load_chat_dataset
from flywheel.evaluation.golden import golden_for
from flywheel.evaluation.offline import (
    EvalResult,
    GoldenSet,
    bootstrap_interval,
    check_decontaminated,
    check_golden_unchanged,
    evaluate_answer_fn,
)
from flywheel.filters import golden_index
from flywheel.model import registry
from flywheel.model.inference import answer_fn, load_model
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse


def evaluate_golden_set(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Champion and challenger on the golden set, each with its bootstrap interval and its score
    per item (kept for the paired comparison of the offline gate). First, the golden set must be
    the registered version, and the challenger's training set must hold none of its inputs."""
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
    now = spec.now()
    rows, out = [], {"golden_hash": golden.content_hash, "golden_items": len(golden.tasks)}
    for role, mv in models:
        loaded = load_model(mv.base_model, mv.adapter_path, version=mv.version, store=ArtefactStore(cycle.config))
        result = evaluate_answer_fn(answer_fn(loaded, max_new_tokens=ev.max_new_tokens), golden)
        low, high = bootstrap_interval(result.item_scores, samples=ev.bootstrap_samples, confidence=ev.confidence,
                                       seed=ev.bootstrap_seed)  # fmt: skip
        rows.append(evaluation_row(cycle, mv.version, role, result, (low, high), golden_hash=golden.content_hash, evaluated_at=now))
        out[f"{role}_version"] = mv.version
        out[f"{role}_accuracy"] = result.accuracy
        out[f"{role}_interval"] = [round(low, 4), round(high, 4)]
    wh.replace_partition("evaluations", {"cycle_id": cycle.cycle_id}, rows_to_table("evaluations", rows))
    record_golden_set(wh, golden, cycle.cycle_id)
    return out


def evaluation_row(
    cycle: CycleSpec,
    model_version: str,
    role: str,
    result: EvalResult,
    interval: tuple[float, float],
    *,
    golden_hash: str,
    evaluated_at: datetime,
) -> dict[str, Any]:
    """An `evaluations` row: one model's golden-set result, with its item scores kept for the
    paired comparisons that `promote` reads back (`evaluation_result`)."""
    return {
        "cycle_id": cycle.cycle_id,
        "model_version": model_version,
        "role": role,
        "accuracy": result.accuracy,
        "n_items": result.n_items,
        "n_correct": result.n_correct,
        "per_task_json": json.dumps(result.per_task, sort_keys=True),
        "golden_hash": golden_hash,
        "evaluated_at": evaluated_at,
        "accuracy_low": interval[0],
        "accuracy_high": interval[1],
        "scorer": result.scorer,
        "item_scores_json": json.dumps(result.item_scores),
    }


def evaluation_result(row: dict[str, Any]) -> EvalResult:
    """The golden-set result an `evaluations` row holds (the inverse of `evaluation_row`)."""
    return EvalResult(row["accuracy"], row["n_items"], row["n_correct"], json.loads(row["per_task_json"] or "{}"),
                      tuple(json.loads(row["item_scores_json"])), row.get("scorer") or "exact_match")  # fmt: skip


def record_golden_set(wh: Warehouse, golden: GoldenSet, cycle_id: str) -> bool:
    """Register the golden set's version (its content hash) the first time a cycle uses it.
    Returns True when this version is new."""
    if wh.count("golden_sets", {"golden_hash": golden.content_hash}):
        return False
    types = Counter(t.task_type for t in golden.tasks)
    wh.merge("golden_sets", rows_to_table("golden_sets", [{
        "golden_hash": golden.content_hash, "path": str(golden.path), "n_items": len(golden.tasks),
        "task_types_json": json.dumps(dict(sorted(types.items()))), "first_cycle_id": cycle_id, "created_at": spec.now(),
    }]))  # fmt: skip
    return True


def _check_training_set_decontaminated(cycle: CycleSpec) -> None:
    """The set the challenger trained on holds no golden input (exact or near): verified on
    every cycle, whatever the filters and gates upstream did."""
    store = ArtefactStore(cycle.config)
    if not store.published(cycle.dataset_dir):
        return  # no dataset: the challenger was registered by other means (nothing to check)
    data = load_chat_dataset(store.fetch(cycle.dataset_dir))
    rows = [*data["train"], *data["validation"]]
    check_decontaminated([r["messages"][0]["content"] for r in rows], [r["request_id"] for r in rows],
                         golden_index(cycle.config.filters, golden_inputs(cycle.config)))  # fmt: skip
