"""Online A/B: bucketing, the ramp, metrics per arm measured from simulated users, the power
calculation, the two-proportion test, guardrails, promotion and rollback of the pointer."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.config import ExperimentConfig, load_config
from flywheel.evaluation import experiment
from flywheel.evaluation.experiment import ArmMetrics, bucket, required_sample_size
from flywheel.evaluation.monitor import monitor
from flywheel.model import registry
from flywheel.model.registry import ModelVersion
from flywheel.sim.product import serve_week
from flywheel.tables import rows_to_table

T = datetime(2026, 3, 2, tzinfo=UTC)
DAY = timedelta(days=1)


def test_bucketing_is_deterministic_uniform_and_ramps_only_add_users():
    users = [f"user-{i:04d}" for i in range(4000)]
    b = [bucket(u, "ab-1", "s") for u in users]
    assert b == [bucket(u, "ab-1", "s") for u in users]
    assert all(0 <= x < 1 for x in b)
    assert abs(sum(x < 0.2 for x in b) / len(b) - 0.2) < 0.03
    at_5 = {u for u, x in zip(users, b, strict=True) if x < 0.05}
    at_20 = {u for u, x in zip(users, b, strict=True) if x < 0.2}
    assert at_5 < at_20
    other = {u for u in users if bucket(u, "ab-2", "s") < 0.2}
    assert len(other & at_20) < 0.35 * len(at_20)  # another experiment splits users afresh


def test_required_sample_size_matches_the_normal_approximation():
    cfg = ExperimentConfig(min_detectable_effect=0.05, alpha=0.05, power=0.8)
    n = required_sample_size(0.25, cfg)
    h = 2 * math.asin(math.sqrt(0.30)) - 2 * math.asin(math.sqrt(0.25))
    # Cohen: 2 * ((z_alpha + z_power) / h)^2 per group (each arcsine-transformed rate has variance 1/n).
    assert abs(n - 2 * ((1.6449 + 0.8416) / h) ** 2) < 2
    assert required_sample_size(0.25, ExperimentConfig(min_detectable_effect=0.1)) < n


def test_p_value_and_guardrails():
    cfg = ExperimentConfig(guardrail_min_rows=30, max_acceptance_drop=0.1)
    good = ArmMetrics("a", 400, {"accepted": 200, "copied": 40, "corrected": 100, "regenerated": 60})
    bad = ArmMetrics("b", 200, {"accepted": 40, "corrected": 120, "regenerated": 40})
    assert experiment.proportion_p_value(good, bad, alternative="smaller") < 1e-6
    assert experiment.proportion_p_value(bad, good, alternative="larger") < 1e-6
    assert "acceptance 20.0% vs 60.0%" in experiment.guardrail_breaches(good, bad, cfg)[0]
    assert experiment.guardrail_breaches(bad, good, cfg) == []
    few = ArmMetrics("c", 10, {"corrected": 10})
    assert experiment.guardrail_breaches(good, few, cfg) == []  # too few rows to judge
    toxic = ArmMetrics("d", 100, {"accepted": 60}, toxic=5, errors=9)
    assert [b.split(" ")[0] for b in experiment.guardrail_breaches(good, toxic, cfg)] == ["toxic", "error"]


def _setup(wh, tmp_path, **exp):
    config = load_config().model_copy(update={"home": tmp_path}).with_overrides(
        {"simulate.requests_per_week": 7000, "simulate.malformed_rate": 0.02, **{f"experiment.{k}": v for k, v in exp.items()}}
    )
    base = registry.ensure_bootstrap_champion(wh, "stand-in-base")
    registry.register_model(wh, ModelVersion("v-new", "stand-in-base", "/adapters/v-new", parent_version=base))
    return config, base


def _run(wh, config, answers, start, days, monitor_every=1.0):
    """Serve ``days`` in chunks, running the monitor after each one: decisions in order."""
    out = []
    t = start
    while t < start + days * DAY:
        serve_week(config, wh, t, days=monitor_every, answer_for=answers.__getitem__)
        t += monitor_every * DAY
        out += monitor(wh, config, t)
    return out


def test_a_better_challenger_ramps_up_and_is_promoted(wh, tmp_path, answer_fns):
    config, base = _setup(wh, tmp_path)
    from flywheel.tables import rows_to_table

    wh.merge("cycles", rows_to_table("cycles", [{  # the cycle that started it: it kept the champion
        "cycle_id": "c1", "dag_id": "flywheel_weekly", "logical_date": T, "window_start": T, "window_end": T,
        "rows_in_window": 1, "quarantined": 0, "kept": 1, "rejected": 0, "pass_rate": 1.0, "promoted": False,
        "champion_before": base, "champion_after": base, "challenger": "v-new", "finished_at": T}]))  # fmt: skip
    exp = experiment.start_experiment(wh, cycle_id="c1", logical_date=T, champion=base, challenger="v-new",
                                      config=config.experiment)  # fmt: skip
    assert exp.traffic_share == 0.05 and experiment.running_experiment(wh, T, inclusive=True) == exp
    decisions = _run(wh, config, {base: answer_fns["half"], "v-new": answer_fns["right"]}, T, 6)
    actions = [d.action for d in decisions if d.subject == exp.experiment_id]
    assert [a for a in actions if a != "keep_running"] == ["ramp", "ramp", "promote"], [d.reason for d in decisions]
    shares = [d.traffic_share for d in decisions if d.subject == exp.experiment_id and d.action == "ramp"]
    assert shares == [0.2, 0.5]
    promoted_at = T + len(actions) * DAY
    assert registry.champion_as_of(wh, promoted_at) == base  # strictly before: not yet
    assert registry.champion_as_of(wh, promoted_at + timedelta(microseconds=1)) == "v-new"
    (row,) = wh.select("experiments").to_pylist()
    assert row["status"] == "promoted" and row["traffic_share"] == 0.5
    # The velocity metrics credit the cycle: its time to improvement runs to the A/B's promotion.
    credit = {m["name"]: m["value"] for m in wh.select("metrics", {"cycle_id": "c1"}).to_pylist()}
    assert credit == {"time_to_improvement_days": pytest.approx(len(actions)), "promoted_by_ab": 1.0}
    # Rows really were served by both arms, each share by hash of the user.
    served = wh.query("SELECT model_version, COUNT(*) AS n FROM production_logs GROUP BY 1").to_pylist()
    assert {r["model_version"] for r in served} == {base, "v-new"}
    last = decisions[[d.subject for d in decisions].index(exp.experiment_id) + len(actions) - 1]
    assert last.p_value < 0.05 and last.arms[1]["acceptance"] > last.arms[0]["acceptance"]
    # After the promotion, the monitor watches the new champion against the old one: no breach.
    after = monitor(wh, config, promoted_at + DAY)
    assert [d.action for d in after] == ["ok"]
    # A rerun of a past date writes the same decision, and changes nothing.
    first_ramp = T + (actions.index("ramp") + 1) * DAY
    again = monitor(wh, config, first_ramp)
    assert [d.action for d in again if d.subject == exp.experiment_id] == ["ramp"]
    assert wh.count("experiment_decisions") == len(actions)


def test_a_challenger_that_degrades_live_metrics_is_rolled_back(wh, tmp_path, answer_fns):
    config, base = _setup(wh, tmp_path)
    experiment.start_experiment(wh, cycle_id="c1", logical_date=T, champion=base, challenger="v-new", config=config.experiment)
    decisions = _run(wh, config, {base: answer_fns["half"], "v-new": answer_fns["wrong"]}, T, 3)
    final = [d for d in decisions if d.action != "keep_running"][-1]
    assert final.action == "rollback" and final.alert and "guardrail" in final.reason
    assert registry.current_champion(wh) == base
    assert wh.select("experiments").to_pylist()[0]["status"] == "rolled_back"
    assert [r["cycle_id"] for r in __import__("flywheel.ops.report", fromlist=["rollbacks"]).rollbacks(wh)] == ["ab-c1"]
    # Traffic afterwards is all the champion's.
    t = T + 4 * DAY
    serve_week(config, wh, t, days=1, answer_for={base: answer_fns["half"]}.__getitem__)
    assert wh.query("SELECT DISTINCT model_version FROM production_logs WHERE \"timestamp\" >= $t", {"t": t}).to_pylist() == [
        {"model_version": base}]  # fmt: skip


def test_a_degrading_champion_is_rolled_back_within_one_monitor_run(wh, tmp_path, answer_fns):
    config, base = _setup(wh, tmp_path, enabled=False)
    answers = {base: answer_fns["half"], "v-new": answer_fns["wrong"]}
    serve_week(config, wh, T - 7 * DAY, answer_for=answers.__getitem__)  # the old champion's week
    registry.record_decision(wh, cycle_id="c1", logical_date=T, champion_before=base, challenger="v-new", promoted=True,
                             reason="offline gate passed")  # fmt: skip
    decisions = _run(wh, config, answers, T, 1)
    assert [d.action for d in decisions] == ["rollback"] and decisions[0].champion_after == base
    assert registry.current_champion(wh) == base
    assert registry.model_statuses(wh)["v-new"] == "rolled_back"
    assert monitor(wh, config, T + 2 * DAY) == []  # the restored champion is not re-judged


def test_a_newer_challenger_supersedes_the_running_experiment_and_a_failed_rerun_cancels(wh, tmp_path):
    config, base = _setup(wh, tmp_path)
    registry.register_model(wh, ModelVersion("v-newer", "stand-in-base", "/a", parent_version=base))
    experiment.start_experiment(wh, cycle_id="c1", logical_date=T, champion=base, challenger="v-new", config=config.experiment)
    experiment.start_experiment(wh, cycle_id="c2", logical_date=T + 7 * DAY, champion=base, challenger="v-newer",
                                config=config.experiment)  # fmt: skip
    assert experiment.running_experiment(wh, T + DAY, inclusive=True).challenger == "v-new"
    assert experiment.running_experiment(wh, T + 7 * DAY, inclusive=True).challenger == "v-newer"
    statuses = {r["experiment_id"]: r["status"] for r in wh.select("experiments").to_pylist()}
    assert statuses == {"ab-c1": "stopped", "ab-c2": "running"}
    experiment.cancel_experiment(wh, "c2")
    assert wh.count("experiments", {"experiment_id": "ab-c2"}) == 0


def test_malformed_log_rows_are_left_out_of_the_arm_metrics(wh, tmp_path):
    from flywheel.filters.scorers import make_toxicity_scorer

    rows = [{"request_id": f"r{i}", "timestamp": T + timedelta(hours=i), "user_id": "u", "prompt": "p", "response": "x",
             "user_action": action, "model_version": "m", "task_type": "arithmetic", "quality_score": 0.5}
            for i, action in enumerate(["accepted", "copied", "corrected", "liked", None, "regenerated"])]  # fmt: skip
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    m = experiment.arm_metrics(wh, "m", T, T + DAY, toxicity=make_toxicity_scorer("profanity_check"), max_toxicity=0.5)
    assert m.n == 4 and m.rate("acceptance") == 0.5 and m.rate("regenerated") == 0.25


def test_ramp_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        ExperimentConfig(ramp=[0.5, 0.2])
