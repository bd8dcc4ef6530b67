"""Promote: the offline gate between champion and challenger, after the new-data check between
the challenger and its twin; a challenger that passes goes to an A/B test or straight in."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any

from flywheel.cycle import spec
from flywheel.cycle.dataset import newest_ids, recorded_dataset
from flywheel.cycle.evaluate import evaluation_result
from flywheel.cycle.filtering import decision_row
from flywheel.cycle.spec import CycleSpec
from flywheel.errors import FlywheelError
from flywheel.evaluation import experiment, serving
from flywheel.evaluation.golden import golden_for
from flywheel.evaluation.offline import EvalResult, GoldenSet, OfflineComparison, compare_offline
from flywheel.model import registry
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse

log = logging.getLogger(__name__)


def promote_if_better(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """The offline gate (overall gain, no slice regression, paired bootstrap intervals), stored
    per cycle in `offline_comparisons`. A challenger that passes goes to an online A/B test
    (`experiment.enabled`): the pointer moves later, when `ab_monitor` sees a significant win.
    With experiments off, passing the gate promotes at once."""
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
        results[role] = evaluation_result(e)
    candidate = compare_new_data(cycle, wh, golden, evals, results)
    champion, challenger = evals["champion"]["model_version"], evals[candidate]["model_version"]
    gate = compare_offline(golden.tasks, results["champion"], results[candidate], champion_version=champion,
                           challenger_version=challenger, config=ev)  # fmt: skip
    wh.replace_partition("offline_comparisons", {"cycle_id": cycle.cycle_id},
                         rows_to_table("offline_comparisons", [offline_comparison_row(cycle, gate, golden_hash=golden.content_hash,
                                                                                       compared_at=spec.now())]))  # fmt: skip
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
    manifest, _ = serving.publish_manifest(wh, cycle.config, reason=f"{cycle.cycle_id}: {reason}")
    return {"promoted": promoted, "champion_after": row["champion_after"], "reason": reason, "gate_passed": gate.passed,
            "delta": round(gate.delta, 4), "delta_interval": [round(x, 4) for x in gate.delta_interval],
            "experiment_id": experiment_id, "serving_manifest": manifest["version"]}  # fmt: skip


def offline_comparison_row(cycle: CycleSpec, gate: OfflineComparison, *, golden_hash: str, compared_at: datetime) -> dict[str, Any]:
    """An `offline_comparisons` row: the offline gate's verdict with every interval it rests on."""
    return {
        "cycle_id": cycle.cycle_id,
        "champion": gate.champion_version,
        "challenger": gate.challenger_version,
        "golden_hash": golden_hash,
        "champion_accuracy": gate.champion_accuracy,
        "champion_low": gate.champion_interval[0],
        "champion_high": gate.champion_interval[1],
        "challenger_accuracy": gate.challenger_accuracy,
        "challenger_low": gate.challenger_interval[0],
        "challenger_high": gate.challenger_interval[1],
        "delta": gate.delta,
        "delta_low": gate.delta_interval[0],
        "delta_high": gate.delta_interval[1],
        "slices_json": gate.slices_json(),
        "passed": gate.passed,
        "reason": gate.reason,
        "compared_at": compared_at,
    }


def compare_new_data(
    cycle: CycleSpec, wh: Warehouse, golden: GoldenSet, evals: dict[str, Any], results: dict[str, EvalResult]
) -> str:
    """New data vs old data, second half: did the window's newest days help? The challenger
    against its twin on the golden set (paired bootstrap interval, per-slice detail), stored in
    `new_data_comparisons`. Newest data that made the model worse than the twin by more than
    `evaluation.max_new_data_regression` is flagged: its examples get a `new_data_check`
    decision, later cycles keep the window out (`dataset.flagged_windows`), and the twin goes to
    the offline gate in the challenger's place. Returns the role that goes to the gate."""
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
    newest_in_window = sorted(newest_ids(cycle, wh))
    full, twin_set = (recorded_dataset(wh, cycle, d) for d in (cycle.cycle_id, cycle.twin_version))
    n_newest = full["n_train"] + full["n_val"] - twin_set["n_train"] - twin_set["n_val"]
    reason = (f"newest window {span} ({n_newest} examples): challenger {cmp.challenger_accuracy:.4f} vs twin without it "
              f"{cmp.champion_accuracy:.4f}, {cmp.delta:+.4f} {ci}; ")  # fmt: skip
    if flagged:
        reason += f"the new data made the model worse by more than {tolerance}: window flagged and kept out, the twin goes to the gate"
    elif hurt:
        reason += f"the new data made the model worse by more than {tolerance}: a dry run, so nothing is flagged (the twin goes to the gate)"
    else:
        reason += "the new data helped" if verdict == "helped" else f"the new data did not help (within the tolerance {tolerance}): kept"
    now = spec.now()
    wh.replace_partition("new_data_comparisons", {"cycle_id": cycle.cycle_id}, rows_to_table("new_data_comparisons", [
        new_data_comparison_row(cycle, cmp, n_newest=n_newest, verdict=verdict, flagged=flagged, reason=reason, compared_at=now)]))  # fmt: skip
    if not hurt:
        log.info("%s: %s", cycle.cycle_id, reason)
        return "challenger"
    log.warning("%s: %s", cycle.cycle_id, reason)
    if not flagged:
        return "twin"
    wh.merge("decisions", rows_to_table("decisions", [
        decision_row(cycle, rid, "new_data_check", kept=False, score=cmp.delta, threshold=-tolerance, decided_at=now,
                     reason=f"newest window {span} flagged: {cmp.delta:+.4f} {ci} against the twin")
        for rid in newest_in_window]))  # fmt: skip
    return "twin"


def new_data_comparison_row(
    cycle: CycleSpec, cmp: OfflineComparison, *, n_newest: int, verdict: str, flagged: bool, reason: str, compared_at: datetime
) -> dict[str, Any]:
    """A `new_data_comparisons` row. ``cmp`` compares the twin (in the champion's place) with the
    challenger, so the twin's accuracy is the comparison's champion accuracy."""
    newest = cycle.newest_window
    return {
        "cycle_id": cycle.cycle_id,
        "logical_date": cycle.logical_date,
        "challenger": cmp.challenger_version,
        "twin": cmp.champion_version,
        "newest_start": newest.start,
        "newest_end": newest.end,
        "n_newest": n_newest,
        "challenger_accuracy": cmp.challenger_accuracy,
        "twin_accuracy": cmp.champion_accuracy,
        "delta": cmp.delta,
        "delta_low": cmp.delta_interval[0],
        "delta_high": cmp.delta_interval[1],
        "verdict": verdict,
        "flagged": flagged,
        "reason": reason,
        "compared_at": compared_at,
    }
