"""The negative flywheel: a week of poisoned feedback must never leave a worse champion.

A fifth of the users in the cycle's window are poisoners: they approve wrong answers and "fix"
right answers into wrong ones, and the product's automatic quality estimate believes them, so
their rows pass the quality filter. The weekly cycle runs through real Airflow with A/B tests on
(the default) and trains on that window with the project's tiny model. The defences are then
measured, not assumed: the challenger trained on the poisoned week is evaluated on the golden
set (paired bootstrap interval, per-slice gate), and the champion after the cycle, and after
`ab_monitor` has judged whatever the cycle started, is never worse on the golden set than the
champion before it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers.flywheel_env import dags_test, flywheel_env

# About 5 minutes on 2 cores (the default tiny model is built and trained for 3 epochs): left out
# of `make test`; `make test-all` runs it. `make test` covers the rollback within one monitor run
# (test_ab_monitor) and the offline gate on worse challengers (unit tests of `flywheel.evaluation.offline`).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
CYCLE_ID = "flywheel_weekly-20260302T0000"
WINDOW_START = T - timedelta(days=21)
POISON_RATE = 0.2


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from flywheel.model import registry
    from flywheel.sim.product import serve_week
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model

    def edit(cfg):
        cfg["simulate"]["requests_per_week"] = 400
        cfg["evaluation"]["golden_set_size"] = 120
        # The defences measured here are the filters, the offline gate and the A/B; the human
        # review (which would also catch poisoned rows) has its own test (tests/browser/test_operator_path.py), and
        # with nobody reviewing, the cycle would wait out the review deadline.
        cfg["review"]["enabled"] = False
        # The project's default tiny model: pre-trained enough to get some golden items right,
        # so that "worse" can show.

    with flywheel_env(tmp_path_factory.mktemp("poison"), edit) as env:
        config, wh = env["config"], env["wh"]
        build_tiny_model(config)
        base = registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
        for w in range(3):  # the window's week is poisoned; the two after it are not
            serve_week(config, wh, WINDOW_START + timedelta(weeks=w), poison_rate=POISON_RATE if w == 0 else 0.0)
        yield env | {"base": base}


def _dags_test(env, dag_id: str, when: datetime, conf: dict | None = None) -> None:
    dags_test(env, dag_id, when, conf)


def _poisoners(config) -> set[str]:
    from flywheel.sim.traffic import _users

    return {u.user_id for u in _users(config.simulate.seed, poison_rate=POISON_RATE) if u.poisoner}


def test_a_poisoned_cycle_never_leaves_a_worse_champion(env):
    from flywheel.evaluation import experiment
    from flywheel.model import registry
    from flywheel.sim.product import serve_week

    wh, base = env["wh"], env["base"]
    poisoners = _poisoners(env["config"])
    window = {"s": WINDOW_START, "e": WINDOW_START + timedelta(days=7)}
    in_window = wh.query('SELECT user_id FROM production_logs WHERE "timestamp" >= $s AND "timestamp" < $e', window).column(
        "user_id").to_pylist()  # fmt: skip
    assert sum(u in poisoners for u in in_window) > 0.1 * len(in_window)
    # Learn hard from the week, so that what it teaches shows on the golden set.
    _dags_test(env, "flywheel_weekly", T, {"epochs": 3, "learning_rate": 0.003})
    kept = wh.query("SELECT DISTINCT d.request_id, l.user_id FROM decisions d JOIN production_logs l USING (request_id) "
                    "WHERE d.cycle_id = $c AND d.rule = 'selection' AND d.kept", {"c": CYCLE_ID}).to_pylist()  # fmt: skip
    print(f"poisoned rows kept for training: {sum(r['user_id'] in poisoners for r in kept)} of {len(kept)}")
    (gate,) = wh.select("offline_comparisons", {"cycle_id": CYCLE_ID}).to_pylist()
    assert gate["champion_low"] <= gate["champion_accuracy"] <= gate["champion_high"]
    assert gate["delta_low"] <= gate["delta"] <= gate["delta_high"]
    if not gate["passed"]:
        # Caught offline: nothing goes live.
        assert registry.current_champion(wh) == base and wh.count("experiments") == 0
        return
    # Better on the golden set despite the poison (the filters and honest corrections won): it
    # must now also win live. The product serves both arms with the real models, and ab_monitor
    # judges through Airflow; whatever it decides, no worse model becomes champion.
    assert gate["challenger_accuracy"] > gate["champion_accuracy"]
    assert registry.current_champion(wh) == base and experiment.running_experiment(wh, T, inclusive=True)
    t = T
    for _ in range(3):
        serve_week(env["config"], wh, t, days=2)
        t += timedelta(days=2)
        _dags_test(env, "ab_monitor", t)
    champion = registry.current_champion(wh)
    assert champion in (base, CYCLE_ID)
    accuracy = {base: gate["champion_accuracy"], CYCLE_ID: gate["challenger_accuracy"]}
    assert accuracy[champion] >= accuracy[base]


def test_a_worse_challenger_is_rejected_offline(env):
    """A recipe that wrecks the adapter (a learning rate a thousand times too high) trains a
    challenger that is worse on the golden set: the offline gate rejects it, nothing goes live,
    and the champion stays where it was."""
    from flywheel.model import registry

    wh = env["wh"]
    when = T + timedelta(weeks=1)  # reads the clean week after the poisoned one
    cycle_id = "flywheel_weekly-20260309T0000"
    before = registry.current_champion(wh)
    _dags_test(env, "flywheel_weekly", when, {"epochs": 3, "learning_rate": 0.5})
    (gate,) = wh.select("offline_comparisons", {"cycle_id": cycle_id}).to_pylist()
    assert gate["champion"] == before and gate["challenger"] == cycle_id
    assert gate["champion_accuracy"] > 0, "the champion must get some golden items right for 'worse' to show"
    assert gate["challenger_accuracy"] < gate["champion_accuracy"] and gate["delta_high"] < 0
    assert gate["passed"] is False and "offline gate failed" in gate["reason"]
    (promo,) = wh.select("promotions", {"cycle_id": cycle_id}).to_pylist()
    assert promo["promoted"] is False and promo["champion_after"] == before
    assert wh.count("experiments", {"cycle_id": cycle_id}) == 0
    assert registry.current_champion(wh) == before
