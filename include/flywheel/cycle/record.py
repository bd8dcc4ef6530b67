"""Record: the cycle's summary row and its metrics (velocity, phase, review throughput), with
the check that its counts add up and the diagnosis of a stagnant flywheel."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime
from statistics import median
from typing import Any

import pyarrow.parquet as pq

from flywheel.config import PHASES
from flywheel.cycle import spec
from flywheel.cycle.extract import unreadable_lines
from flywheel.cycle.spec import CycleSpec
from flywheel.errors import FlywheelError
from flywheel.model import registry
from flywheel.ops.metrics import (
    StagnationDiagnosis,
    ab_promotion_metrics,
    cycle_metrics,
    days_since_last_gain,
    diagnose_stagnation,
)
from flywheel.ops.phases import classify, examples_collected
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse

log = logging.getLogger(__name__)


def record_cycle(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Write the cycle's summary row, phase and velocity metrics; check that the counts add up.

    Unreadable lines of a labels file count as rows in the window (each is quarantined)."""
    rows_in_window = pq.read_metadata(cycle.file("extract.parquet")).num_rows + len(unreadable_lines(cycle))
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
    finished_at = spec.now()
    champion_after = promo[0]["champion_after"] if promo else champion_before
    champion_after_acc = chall_acc if promoted else champ_acc
    if champion_after_acc is None:  # no challenger this cycle: the champion's last measured accuracy
        champion_after_acc = _last_accuracy(wh, champion_after, cycle.logical_date)
    collected = examples_collected(wh, cycle.logical_date)
    row = cycle_row(
        cycle, rows_in_window=rows_in_window, quarantined=quarantined, kept=kept, rejected=rejected,
        champion_before=champion_before, challenger=evals.get(challenger_role, {}).get("model_version"),
        champion_accuracy=champ_acc, challenger_accuracy=chall_acc, promoted=promoted, champion_after=champion_after,
        finished_at=finished_at, phase=classify(champion_after_acc, collected, cycle.config.phases),
    )  # fmt: skip
    wh.replace_partition("cycles", {"cycle_id": cycle.cycle_id}, rows_to_table("cycles", [row]))

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
    now = spec.now()
    wh.replace_partition("metrics", {"cycle_id": cycle.cycle_id}, rows_to_table("metrics", metric_rows(cycle, metrics, now)))
    diagnosis = _diagnose(cycle, wh, evals.get("champion"))
    wh.merge("metrics", rows_to_table("metrics", metric_rows(cycle, {
        "stagnant": float(diagnosis.stagnant), "cycles_without_gain": float(diagnosis.cycles_without_gain),
        "starved": float(diagnosis.starved), "cycles_without_challenger": float(diagnosis.cycles_without_challenger)}, now)))  # fmt: skip
    if diagnosis.stagnant or diagnosis.starved:
        log.warning("%s: flywheel %s", cycle.cycle_id, diagnosis.describe())
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()} | {
        "metrics": metrics,
        "stagnation": {"stagnant": diagnosis.stagnant, "cycles_without_gain": diagnosis.cycles_without_gain,
                       "starved": diagnosis.starved, "cycles_without_challenger": diagnosis.cycles_without_challenger,
                       "causes": diagnosis.causes, "summary": diagnosis.describe()},
    }  # fmt: skip


def cycle_row(
    cycle: CycleSpec,
    *,
    rows_in_window: int,
    quarantined: int,
    kept: int,
    rejected: int,
    champion_before: str,
    challenger: str | None,
    champion_accuracy: float | None,
    challenger_accuracy: float | None,
    promoted: bool,
    champion_after: str,
    finished_at: datetime,
    phase: str,
) -> dict[str, Any]:
    """A `cycles` row: what came in, what became of it, the models before and after, the phase."""
    return {
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
        "challenger": challenger,
        "champion_accuracy": champion_accuracy,
        "challenger_accuracy": challenger_accuracy,
        "promoted": promoted,
        "champion_after": champion_after,
        "finished_at": finished_at,
        "phase": phase,
    }


def metric_rows(cycle: CycleSpec, metrics: dict[str, float], recorded_at: datetime) -> list[dict[str, Any]]:
    """`metrics` rows: one per named value, all of the cycle."""
    return [{"cycle_id": cycle.cycle_id, "name": k, "value": v, "recorded_at": recorded_at} for k, v in metrics.items()]


def _review_throughput(cycle: CycleSpec, wh: Warehouse) -> dict[str, float]:
    """How fast people got through the cycle's review sample: items, reviews, the median time a
    review took, and the hours from the sample to its last review (none when nothing was sampled)."""
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


def _last_accuracy(wh: Warehouse, version: str, before: datetime) -> float | None:
    """The latest golden-set accuracy measured for ``version`` up to ``before``."""
    rows = wh.query(
        "SELECT e.accuracy FROM evaluations e JOIN cycles c ON c.cycle_id = e.cycle_id "
        "WHERE e.model_version = $v AND c.logical_date <= $t ORDER BY c.logical_date DESC LIMIT 1",
        {"v": version, "t": before},
    ).to_pylist()
    return rows[0]["accuracy"] if rows else None


def _diagnose(cycle: CycleSpec, wh: Warehouse, champion_eval: dict[str, Any] | None) -> StagnationDiagnosis:
    """Stagnation over this DAG's cycles up to this one, read back from their metrics."""
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
