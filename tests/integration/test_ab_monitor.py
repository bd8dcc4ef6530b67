"""The A/B monitor through real Airflow (`airflow dags test ab_monitor <date>`).

The product is simulated: users react to real answers of the model that served them, chosen per
user by the experiment's hash buckets, and `ab_monitor` reads only the production logs. The
models are stand-in answer functions whose quality differs clearly (always right, right half the
time, never right), so that each outcome is decided by measurements within a few runs: a better
challenger ramps 5% -> 20% -> 50% and is promoted after a significant test; a challenger that
degrades acceptance is rolled back with an alert; a champion that degrades live metrics after
its promotion is rolled back to its predecessor within one monitor run, and the champion asset
gets an event exactly when the pointer moves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers.flywheel_env import dags_test, flywheel_env
from tests.helpers.oracle import half_right_answers, right_answers, wrong_answers

pytestmark = pytest.mark.integration

T = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday: the cycle that started the experiment
EVERY = 2.0  # days between monitor runs here (hourly in production)
BASE, BETTER, WORSE = "base:stand-in", "v-better", "v-worse"
ANSWERS = {BASE: half_right_answers, BETTER: right_answers, WORSE: wrong_answers}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from flywheel.model import registry
    from flywheel.model.registry import ModelVersion

    def edit(cfg):
        cfg["simulate"]["requests_per_week"] = 10500
        cfg["experiment"]["min_rows_per_step"] = 40

    with flywheel_env(tmp_path_factory.mktemp("ab"), edit, reserialize=True) as env:
        wh = env["wh"]
        base = registry.ensure_bootstrap_champion(wh, "stand-in")
        assert base == BASE
        for v in (BETTER, WORSE):
            registry.register_model(wh, ModelVersion(v, "stand-in", f"/adapters/{v}", parent_version=BASE))
        yield env


def _serve(env, start: datetime, days: float = EVERY) -> None:
    from flywheel.sim.product import serve_week

    serve_week(env["config"], env["wh"], start, days=days, answer_for=ANSWERS.__getitem__)


def _monitor(env, when: datetime) -> dict:
    """One `ab_monitor` run; its task states and the monitor's XCom summary."""
    dags_test(env, "ab_monitor", when)
    code = (
        "import json, sys\n"
        "from datetime import datetime\n"
        "from airflow.models import DagRun\n"
        "from airflow.models.asset import AssetEvent, AssetModel\n"
        "from airflow.models.xcom import XComModel\n"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        "    run = next(r for r in s.query(DagRun).filter(DagRun.dag_id == 'ab_monitor') if r.logical_date == datetime.fromisoformat(sys.argv[1]))\n"
        "    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=s)}\n"
        "    x = s.query(XComModel).filter(XComModel.run_id == run.run_id, XComModel.task_id == 'monitor_experiments', XComModel.key == 'return_value').one()\n"
        "    events = [(e.extra, m.uri) for e, m in s.query(AssetEvent, AssetModel).join(AssetModel, AssetEvent.asset_id == AssetModel.id)\n"
        "              .filter(AssetEvent.source_run_id == run.run_id)]\n"
        "    print('RUN=' + json.dumps({'states': states, 'result': x.value, 'events': events}, default=str))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, when.isoformat()], env=env["env"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RUN="))[4:])
    if isinstance(out["result"], str):
        out["result"] = json.loads(out["result"])
    return out


# The three tests are one story (a promotion, then a challenger rolled back, then a champion
# rolled back), so each step is a module fixture that runs once, after the step before it, and
# keeps what the warehouse said right after it: a test asserts on its own step whichever test
# runs first, and a later step's rows cannot leak into an earlier step's checks.


@pytest.fixture(scope="module")
def promoted(env) -> dict:
    """A better challenger's A/B, monitored every EVERY days until the champion changes."""
    from flywheel.evaluation import experiment
    from flywheel.model import registry

    wh = env["wh"]
    experiment.start_experiment(wh, cycle_id="flywheel_weekly-20260302T0000", logical_date=T, champion=BASE,
                                challenger=BETTER, config=env["config"].experiment)  # fmt: skip
    runs, t = [], T
    while len(runs) < 6:
        _serve(env, t)
        t += timedelta(days=EVERY)
        runs.append(_monitor(env, t))
        if runs[-1]["result"]["champion_changed"]:
            break
    return {
        "runs": runs,
        "at": t,
        "champion": registry.current_champion(wh),
        "promotions": wh.select("promotions", {"cycle_id": "ab-flywheel_weekly-20260302T0000"}).to_pylist(),
    }


@pytest.fixture(scope="module")
def challenger_rolled_back(env, promoted) -> dict:
    """After the promotion, a worse challenger's A/B, monitored once."""
    from flywheel.evaluation import experiment
    from flywheel.model import registry

    wh = env["wh"]
    start = promoted["at"] + timedelta(days=EVERY)
    _serve(env, promoted["at"], days=EVERY)  # the new champion's first days: its watch passes
    experiment.start_experiment(wh, cycle_id="flywheel_weekly-20260316T0000", logical_date=start, champion=BETTER,
                                challenger=WORSE, config=env["config"].experiment)  # fmt: skip
    _serve(env, start)
    return {
        "run": _monitor(env, start + timedelta(days=EVERY)),
        "at": start + timedelta(days=EVERY),
        "champion": registry.current_champion(wh),
        "experiments": wh.select("experiments", {"experiment_id": "ab-flywheel_weekly-20260316T0000"}).to_pylist(),
        "alerts": wh.select("alerts").to_pylist(),
    }


def test_a_better_challenger_is_promoted_after_a_significant_ab_test(env, promoted):
    runs, t = promoted["runs"], promoted["at"]
    decisions = [r["result"]["decisions"][0] for r in runs]
    assert [d["action"] for d in decisions if d["action"] != "keep_running"] == ["ramp", "ramp", "promote"], decisions
    final = decisions[-1]
    assert final["p_value"] < env["config"].experiment.alpha
    champ, chall = final["arms"]
    assert chall["acceptance"] > champ["acceptance"] and min(champ["n"], chall["n"]) >= final["required_per_arm"]
    assert promoted["champion"] == BETTER
    (promo,) = promoted["promotions"]
    assert promo["promoted"] and promo["champion_before"] == BASE and promo["reason"].startswith("A/B win")
    # The champion asset got one event, from the promoting run only; the others skipped it.
    assert runs[-1]["states"]["publish_champion"] == "success"
    assert runs[-1]["events"] == [[{"as_of": t.isoformat(), "champion": BETTER, "previous": BASE, "action": "promote",
                                   "reason": final["reason"]}, "flywheel://registry/champion"]]  # fmt: skip
    assert all(r["states"]["publish_champion"] == "skipped" and not r["events"] for r in runs[:-1])


def test_a_challenger_that_degrades_live_metrics_is_rolled_back_with_an_alert(challenger_rolled_back):
    run = challenger_rolled_back["run"]
    by_subject = {d["subject"]: d for d in run["result"]["decisions"]}
    rollback = by_subject["ab-flywheel_weekly-20260316T0000"]
    assert rollback["action"] == "rollback" and "guardrail" in rollback["reason"], rollback
    assert by_subject["champion"]["action"] == "ok"
    assert challenger_rolled_back["champion"] == BETTER
    assert challenger_rolled_back["experiments"][0]["status"] == "rolled_back"
    alerts = [a for a in challenger_rolled_back["alerts"] if a["kind"] == "rollback"]
    assert len(alerts) == 1 and "acceptance" in alerts[0]["message"] and alerts[0]["dag_id"] == "ab_monitor"
    assert run["states"]["publish_champion"] == "skipped"  # the pointer did not move


def test_a_champion_that_degrades_live_metrics_is_rolled_back_within_one_run(env, challenger_rolled_back):
    """A worse model made champion without an A/B (the offline-only path) is caught by the next
    monitor run from its live metrics, and the pointer goes back to its predecessor."""
    from flywheel.model import registry

    wh = env["wh"]
    t = challenger_rolled_back["at"]
    registry.record_decision(wh, cycle_id="flywheel_weekly-20260323T0000", logical_date=t, champion_before=BETTER,
                             challenger=WORSE, promoted=True, reason="offline gate passed (experiments off)")  # fmt: skip
    _serve(env, t, days=1)
    run = _monitor(env, t + timedelta(days=1))
    (decision,) = run["result"]["decisions"]
    assert decision["action"] == "rollback" and decision["champion_after"] == BETTER
    assert registry.current_champion(wh) == BETTER
    assert registry.model_statuses(wh)[WORSE] == "rolled_back"
    assert run["states"]["publish_champion"] == "success"
    assert [e[0]["champion"] for e in run["events"]] == [BETTER]
    alerts = [a for a in wh.select("alerts").to_pylist() if a["kind"] == "rollback"]
    assert len(alerts) == 2 and any(f"champion {WORSE} breached" in a["message"] for a in alerts)
