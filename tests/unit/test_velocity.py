"""Stagnation diagnosis: a flywheel without real gains for N cycles is named stagnant, with the
causes the metrics point to."""

from __future__ import annotations

from flywheel.config import VelocityConfig
from flywheel.ops.metrics import diagnose_stagnation

CFG = VelocityConfig(stagnation_min_delta=0.02, stagnation_cycles=3, min_examples_per_day=20, min_pass_rate=0.1)
MIX = {"arithmetic": 0.3, "uppercase": 0.2, "reverse": 0.2, "extraction": 0.25, "letter_count": 0.05}


def cycle(delta=0.0, per_day=40.0, pass_rate=0.2, mix=None, per_task=None):
    return {"quality_delta": delta, "examples_per_day": per_day, "filter_pass_rate": pass_rate,
            "task_mix": mix or MIX, "champion_per_task": per_task or {"arithmetic": 0.5}}  # fmt: skip


def test_healthy_gains_are_not_stagnation():
    d = diagnose_stagnation([cycle(0.01), cycle(0.0), cycle(0.03)], CFG)
    assert not d.stagnant and d.cycles_without_gain == 0


def test_stagnant_after_n_evaluated_cycles_without_a_real_gain():
    history = [cycle(0.05), cycle(0.01), cycle(None), cycle(-0.02), cycle(0.0)]
    d = diagnose_stagnation(history, CFG)
    assert d.stagnant and d.cycles_without_gain == 3 and not d.starved
    assert d.causes == ["no cause visible in the metrics: volume, pass rate and mix look healthy; check the model and recipe"]
    assert d.describe().startswith("stagnant for 3 evaluated cycles")
    # The cycle that trained nothing is no evidence either way: two evaluated cycles are not three.
    assert not diagnose_stagnation(history[:-1], CFG).stagnant
    assert diagnose_stagnation(history[:-1], CFG).cycles_without_gain == 2


def test_cycles_that_train_nothing_are_starved_not_stagnant():
    history = [cycle(0.05), cycle(None, per_day=5), cycle(None, per_day=5), cycle(None, per_day=5)]
    d = diagnose_stagnation(history, CFG)
    assert d.starved and not d.stagnant
    assert (d.cycles_without_challenger, d.cycles_without_gain) == (3, 0)
    assert d.describe().startswith("starved: 3 cycles in a row trained no challenger; likely causes: too little volume")
    assert not diagnose_stagnation(history[:-1], CFG).starved
    # A week that trains again ends the starvation, whatever it gained.
    assert not diagnose_stagnation([*history, cycle(0.0)], CFG).starved


def test_causes_are_named_from_the_metrics():
    shifted = {"arithmetic": 0.9, "uppercase": 0.1}
    history = [cycle(0.0), cycle(0.0, per_day=5, pass_rate=0.05), cycle(0.0, per_day=5, pass_rate=0.05, mix=shifted,
               per_task={"reverse": 0.97, "arithmetic": 0.4})]  # fmt: skip
    d = diagnose_stagnation(history, CFG)
    text = d.describe()
    assert d.stagnant and len(d.causes) == 4, d.causes
    assert "too little volume: 5.0 examples/day" in text
    assert "low filter pass rate: 5.0%" in text
    assert "saturated task types (champion >= 95%): reverse" in text
    assert "drift in the traffic mix" in text


def test_cycles_table_says_what_became_of_each_challenger(wh):
    from datetime import UTC, datetime, timedelta

    from flywheel.ops.metrics import cycles_report, format_cycles_table
    from flywheel.tables import rows_to_table

    t = datetime(2026, 3, 2, tzinfo=UTC)
    base = {"dag_id": "flywheel_weekly", "window_start": t, "window_end": t, "rows_in_window": 10, "quarantined": 0,
            "kept": 5, "rejected": 5, "pass_rate": 0.5, "champion_before": "v0", "champion_after": "v0", "finished_at": t}
    cycles = [("c-ab", "c-ab", False), ("c-offline", "c-offline", True), ("c-kept", "c-kept", False), ("c-none", None, False)]
    wh.merge("cycles", rows_to_table("cycles", [
        {**base, "cycle_id": c, "logical_date": t + timedelta(weeks=i), "challenger": chall, "promoted": promoted}
        for i, (c, chall, promoted) in enumerate(cycles)]))  # fmt: skip
    wh.merge("experiments", rows_to_table("experiments", [{"experiment_id": "ab-c-ab", "cycle_id": "c-ab", "champion": "v0",
             "challenger": "c-ab", "traffic_share": 0.0, "status": "rolled_back", "started_at": t, "updated_at": t}]))  # fmt: skip
    decisions = {line.split()[0]: line for line in format_cycles_table(cycles_report(wh)).splitlines()[2:]}
    assert "A/B rolled back" in decisions["c-ab"] and "promoted" in decisions["c-offline"]
    assert "kept champion" in decisions["c-kept"] and "no challenger" in decisions["c-none"]


def test_time_to_improvement_runs_from_the_last_gain_not_a_rollback(wh):
    from datetime import UTC, datetime, timedelta

    from flywheel.model import registry
    from flywheel.ops.metrics import days_since_last_gain

    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    registry.ensure_bootstrap_champion(wh, "base")
    registry.record_decision(wh, cycle_id="c1", logical_date=t0, champion_before="base:base", challenger="c1",
                             promoted=True, reason="offline gate passed")  # fmt: skip
    registry.record_decision(wh, cycle_id="rollback-c1", logical_date=t0 + timedelta(days=3), champion_before="c1",
                             challenger="base:base", promoted=True, reason="rollback: champion c1 breached guardrails")  # fmt: skip
    assert days_since_last_gain(wh, t0 + timedelta(days=10), "flywheel_weekly") == 10


def test_the_demo_names_the_traffic_no_cycle_has_read(wh, make_log_row):
    """What the demo tells a person to give a run triggered by hand: the logs after the last
    cycle's window, counted; nothing when every logged row was read."""
    from datetime import UTC, datetime, timedelta

    from flywheel.sim.demo import unread_traffic
    from flywheel.tables import rows_to_table

    t = datetime(2026, 3, 2, tzinfo=UTC)
    assert unread_traffic(wh) is None
    wh.merge("cycles", rows_to_table("cycles", [{"cycle_id": "c1", "dag_id": "flywheel_weekly", "logical_date": t + timedelta(days=14),
             "window_start": t - timedelta(days=7), "window_end": t, "rows_in_window": 1, "quarantined": 0, "kept": 1,
             "rejected": 0, "pass_rate": 1.0, "champion_before": "v0", "champion_after": "v0", "promoted": False,
             "finished_at": t}]))  # fmt: skip
    wh.merge("production_logs", rows_to_table("production_logs", [make_log_row("read", t - timedelta(days=1))]))
    assert unread_traffic(wh) is None
    wh.merge("production_logs", rows_to_table("production_logs", [make_log_row(f"new{i}", t + timedelta(days=i)) for i in range(3)]))
    assert unread_traffic(wh) == (t, 3)
