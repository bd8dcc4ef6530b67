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

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

T = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
CYCLE_ID = "flywheel_weekly-20260302T0000"
WINDOW_START = T - timedelta(days=21)
POISON_RATE = 0.2


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from flywheel import registry
    from flywheel.config import load_config
    from flywheel.demo import serve_week
    from flywheel.localenv import airflow_env
    from flywheel.tinymodel import build_tiny_model, resolve_base_model
    from flywheel.warehouse import warehouse_from_config

    root = tmp_path_factory.mktemp("poison")
    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "include/config/flywheel.yaml").read_text())
    data["simulate"]["requests_per_week"] = 400
    data["evaluation"]["golden_set_size"] = 120
    # The project's default tiny model: pre-trained enough to get some golden items right, so
    # that "worse" can show.
    config_path = root / "flywheel.yaml"
    config_path.write_text(yaml.safe_dump(data))
    old = {k: os.environ.get(k) for k in ("FLYWHEEL_HOME", "FLYWHEEL_CONFIG")}
    os.environ["FLYWHEEL_HOME"] = str(root / "flywheel")
    os.environ["FLYWHEEL_CONFIG"] = str(config_path)
    try:
        config = load_config()
        build_tiny_model(config)
        wh = warehouse_from_config(config)
        wh.ensure_schema()
        base = registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
        for w in range(3):  # the window's week is poisoned; the two after it are not
            serve_week(config, wh, WINDOW_START + timedelta(weeks=w), poison_rate=POISON_RATE if w == 0 else 0.0)
        run_env = airflow_env(root / "airflow", root / "flywheel", config_path=config_path)
        airflow = str(Path(sys.executable).with_name("airflow"))
        subprocess.run([airflow, "db", "migrate"], env=run_env, check=True, capture_output=True)
        yield {"config": config, "wh": wh, "env": run_env, "airflow": airflow, "base": base}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _dags_test(env, dag_id: str, when: datetime, conf: dict | None = None) -> None:
    cmd = [env["airflow"], "dags", "test", dag_id, when.isoformat()] + (["-c", json.dumps(conf)] if conf else [])
    proc = subprocess.run(cmd, env=env["env"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _golden_accuracy(env, version: str) -> float:
    from flywheel import registry
    from flywheel.evaluate import evaluate_answer_fn, load_golden_set
    from flywheel.inference import answer_fn, load_model

    ev = env["config"].evaluation
    golden = load_golden_set(env["config"].artefacts_root, n=ev.golden_set_size, seed=ev.golden_seed)
    mv = registry.get_model(env["wh"], version)
    return evaluate_answer_fn(answer_fn(load_model(mv.base_model, mv.adapter_path), max_new_tokens=ev.max_new_tokens), golden).accuracy


def test_a_poisoned_cycle_never_leaves_a_worse_champion(env):
    from flywheel import registry

    wh = env["wh"]
    poisoned = wh.query(
        "SELECT COUNT(*) AS n FROM production_logs WHERE \"timestamp\" >= $s AND \"timestamp\" < $e AND quality_score >= 0.6 "
        "AND ((user_action = 'accepted' AND response <> '' ) OR user_action = 'corrected')", {"s": WINDOW_START, "e": WINDOW_START + timedelta(days=7)}
    ).to_pylist()[0]["n"]
    # Learn hard from the week, so that what it teaches shows on the golden set.
    _dags_test(env, "flywheel_weekly", T, {"epochs": 3, "learning_rate": 0.003})
    (cmp,) = wh.select("offline_comparisons", {"cycle_id": CYCLE_ID}).to_pylist()
    print("OFFLINE", json.dumps(cmp, default=str))
    print("PROMO", wh.select("promotions", {"cycle_id": CYCLE_ID}).to_pylist())
    print("EXPS", wh.select("experiments").to_pylist())
    print("poisoned-looking rows in window", poisoned)
    before = _golden_accuracy(env, env["base"])
    after = _golden_accuracy(env, registry.current_champion(wh))
    print("ACC", before, after)
    assert after >= before
