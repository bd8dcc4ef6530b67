"""One full weekly cycle through real Airflow (`airflow dags test`) on the embedded default.

The product's traffic is simulated with the project's tiny model, a few malformed rows are
written into the window on purpose, and the DAG runs in a temporary AIRFLOW_HOME. The checks
are on real outcomes: warehouse row counts, a quarantine that holds the bad rows with reasons,
an adapter that a fresh process loads with `PeftModel.from_pretrained`, a champion that moves
only when the challenger evaluated better, and reruns that add no duplicate rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

pytestmark = pytest.mark.integration

DAG_ID = "flywheel_weekly"
LOGICAL_DATE = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
WINDOW_START = LOGICAL_DATE - timedelta(days=21)
WINDOW_END = LOGICAL_DATE - timedelta(days=14)
CYCLE_ID = "flywheel_weekly-20260302T0000"
TABLES_PER_CYCLE = ("quarantine", "decisions", "datasets", "evaluations", "promotions", "cycles", "metrics")


def _malformed_rows() -> pa.Table:
    from flywheel.schema import PRODUCTION_LOGS

    ts = WINDOW_START + timedelta(days=2)
    good = {
        "timestamp": ts,
        "user_id": "user-bad",
        "prompt": "Please rewrite the word apple in capital letters for the heading of my school poster, I want it to stand out.",
        "response": "APPLE",
        "user_action": "accepted",
        "correction": None,
        "task_type": "uppercase",
        "quality_score": 0.9,
        "included_in_training": False,
        "model_version": "base:tiny-llama",
        "context": None,
        "ingested_at": ts,
    }
    rows = [
        {**good, "request_id": "bad-missing-prompt", "prompt": None},
        {**good, "request_id": "bad-action", "user_action": "liked"},
        {**good, "request_id": "bad-score", "quality_score": 1.7},
    ]
    return pa.Table.from_pylist(rows, schema=PRODUCTION_LOGS)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Temporary homes, a small config, a built tiny model, and three weeks of traffic."""
    from flywheel import registry
    from flywheel.config import load_config
    from flywheel.demo import serve_week
    from flywheel.localenv import airflow_env
    from flywheel.tinymodel import build_tiny_model, resolve_base_model
    from flywheel.warehouse import warehouse_from_config

    root = tmp_path_factory.mktemp("cycle")
    cfg_data = yaml.safe_load((Path(__file__).resolve().parents[2] / "include/config/flywheel.yaml").read_text())
    cfg_data["simulate"]["requests_per_week"] = 300
    cfg_data["evaluation"]["golden_set_size"] = 80
    cfg_data["tiny_model"].update({"pretrain_examples": 600, "pretrain_epochs": 2})
    config_path = root / "flywheel.yaml"
    config_path.write_text(yaml.safe_dump(cfg_data))

    import os

    old = {k: os.environ.get(k) for k in ("FLYWHEEL_HOME", "FLYWHEEL_CONFIG")}
    os.environ["FLYWHEEL_HOME"] = str(root / "flywheel")
    os.environ["FLYWHEEL_CONFIG"] = str(config_path)
    try:
        config = load_config()
        build_tiny_model(config)
        wh = warehouse_from_config(config)
        wh.ensure_schema()
        base = registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
        for w in range(3):
            serve_week(config, wh, WINDOW_START + timedelta(weeks=w))
        wh.merge("production_logs", _malformed_rows())
        run_env = airflow_env(root / "airflow", root / "flywheel", config_path=config_path)
        airflow = str(Path(sys.executable).with_name("airflow"))
        subprocess.run([airflow, "db", "migrate"], env=run_env, check=True, capture_output=True)
        # Parse the DAG files into the metadata DB, as the dag-processor would.
        subprocess.run([airflow, "dags", "reserialize"], env=run_env, check=True, capture_output=True)
        yield {"config": config, "wh": wh, "env": run_env, "airflow": airflow, "base": base, "root": root}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _dags_test(env: dict, conf: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [env["airflow"], "dags", "test", DAG_ID, LOGICAL_DATE.isoformat()]
    if conf:
        cmd += ["-c", json.dumps(conf)]
    proc = subprocess.run(cmd, env=env["env"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _cycle_counts(wh) -> dict[str, int]:
    counts = {t: wh.count(t, {"cycle_id": CYCLE_ID}) for t in TABLES_PER_CYCLE}
    counts["production_logs"] = wh.count("production_logs")
    counts["models"] = wh.count("models")
    return counts


def _expected_window(wh):
    """What the window holds, computed independently of the pipeline."""
    from flywheel.schema import validate_row

    rows = wh.query(
        'SELECT * FROM production_logs WHERE COALESCE("timestamp", ingested_at) >= $s '
        'AND COALESCE("timestamp", ingested_at) < $e',
        {"s": WINDOW_START, "e": WINDOW_END},
    ).to_pylist()
    bad = {r["request_id"] for r in rows if validate_row(r)}
    return len(rows), bad


@pytest.fixture(scope="module")
def first_run(env):
    _dags_test(env)
    return _cycle_counts(env["wh"])


def test_dag_is_listed_with_docs_tags_and_params(env):
    proc = subprocess.run(
        [env["airflow"], "dags", "list", "-o", "json"], env=env["env"], capture_output=True, text=True, check=True
    )
    listed = {d["dag_id"]: d for d in json.loads(proc.stdout[proc.stdout.index("[") :])}
    assert DAG_ID in listed, proc.stdout[-2000:]
    details = subprocess.run(
        [env["airflow"], "dags", "details", DAG_ID, "-o", "json"], env=env["env"], capture_output=True, text=True, check=True
    )
    info = json.loads(details.stdout[details.stdout.index("[") :])[0]
    assert "flywheel" in str(info["tags"])
    assert "ml-platform" in str(info["owners"])
    assert info["timetable_summary"] == "0 0 * * 1"
    # Docs and params as the UI sees them: the DAG serialized into the metadata DB.
    code = (
        "import json\n"
        "from airflow.models.serialized_dag import SerializedDagModel\n"
        "d = SerializedDagModel.get_dag('flywheel_weekly')\n"
        "print('DAG=' + json.dumps({'doc': d.doc_md, 'params': sorted(d.params)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env["env"], capture_output=True, text=True, check=True)
    dag = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("DAG="))[4:])
    assert "Weekly flywheel cycle" in dag["doc"]
    assert {"lag_days", "epochs", "min_quality_score"} <= set(dag["params"])


def test_cycle_counts_add_up_and_bad_rows_are_quarantined(env, first_run):
    wh = env["wh"]
    cycle = wh.select("cycles", {"cycle_id": CYCLE_ID}).to_pylist()
    assert len(cycle) == 1
    cycle = cycle[0]
    n_window, bad_ids = _expected_window(wh)
    assert cycle["rows_in_window"] == n_window > 300  # a week of traffic + the injected rows
    assert cycle["quarantined"] == len(bad_ids) >= 3
    assert cycle["quarantined"] + cycle["kept"] + cycle["rejected"] == n_window
    assert 0 < cycle["kept"] < n_window

    quarantine = {(r["request_id"], r["field"], r["rule"]): r for r in wh.select("quarantine", {"cycle_id": CYCLE_ID}).to_pylist()}
    assert ("bad-missing-prompt", "prompt", "required") in quarantine
    assert ("bad-action", "user_action", "allowed_values") in quarantine
    assert ("bad-score", "quality_score", "range") in quarantine
    reason = quarantine[("bad-score", "quality_score", "range")]["reason"]
    assert "1.7" in reason and "bad-score" in reason
    assert json.loads(quarantine[("bad-action", "user_action", "allowed_values")]["raw_json"])["user_action"] == "liked"

    # Every kept row passed all three rules; every rejected one failed at least one.
    decisions = wh.select("decisions", {"cycle_id": CYCLE_ID}).to_pylist()
    assert {d["rule"] for d in decisions} == {"user_action", "length", "quality_score"}
    assert len(decisions) == 3 * (cycle["kept"] + cycle["rejected"])


def test_challenger_adapter_loads_in_a_fresh_process(env, first_run):
    wh = env["wh"]
    model = wh.select("models", {"version": CYCLE_ID}).to_pylist()
    assert len(model) == 1 and model[0]["parent_version"] == env["base"]
    adapter = Path(model[0]["adapter_path"])
    assert (adapter / "adapter_config.json").is_file()
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from peft import PeftModel\n"
        "base, adapter = sys.argv[1], sys.argv[2]\n"
        "tok = AutoTokenizer.from_pretrained(base)\n"
        "m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)\n"
        "assert any('lora_' in n for n, _ in m.named_parameters())\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'reverse cat'}], add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "out = m.generate(**ids, max_new_tokens=4, do_sample=False)\n"
        "print('LOADED', out.shape[1] > ids['input_ids'].shape[1])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, model[0]["base_model"], str(adapter)],
        env=env["env"], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED True" in proc.stdout


def test_champion_moves_only_when_the_challenger_is_better(env, first_run):
    from flywheel import registry

    wh = env["wh"]
    evals = {r["role"]: r for r in wh.select("evaluations", {"cycle_id": CYCLE_ID}).to_pylist()}
    assert set(evals) == {"champion", "challenger"}
    assert evals["champion"]["model_version"] == env["base"]
    assert evals["champion"]["golden_hash"] == evals["challenger"]["golden_hash"]
    better = evals["challenger"]["accuracy"] > evals["champion"]["accuracy"]
    promo = wh.select("promotions", {"cycle_id": CYCLE_ID}).to_pylist()[0]
    assert promo["promoted"] == better
    assert registry.current_champion(wh) == (CYCLE_ID if better else env["base"])


def test_rerun_of_the_same_logical_date_adds_no_duplicates(env, first_run):
    wh = env["wh"]
    before = {r["cycle_id"]: r for r in wh.select("cycles").to_pylist()}
    dataset_hash = wh.select("datasets", {"cycle_id": CYCLE_ID}).column("content_hash")[0].as_py()
    _dags_test(env)
    assert _cycle_counts(wh) == first_run
    after = {r["cycle_id"]: r for r in wh.select("cycles").to_pylist()}
    assert after.keys() == before.keys() == {CYCLE_ID}
    for key in ("rows_in_window", "quarantined", "kept", "rejected", "champion_before"):
        assert after[CYCLE_ID][key] == before[CYCLE_ID][key], key
    assert wh.select("datasets", {"cycle_id": CYCLE_ID}).column("content_hash")[0].as_py() == dataset_hash


def test_a_challenger_that_is_not_better_is_not_promoted(env, first_run):
    """Rerun the date with a margin no challenger can beat: the champion stays the base."""
    from flywheel import registry

    wh = env["wh"]
    _dags_test(env, {"min_improvement": 1.0})
    promo = wh.select("promotions", {"cycle_id": CYCLE_ID}).to_pylist()
    assert len(promo) == 1
    assert promo[0]["promoted"] is False
    assert promo[0]["champion_after"] == env["base"]
    assert registry.current_champion(wh) == env["base"]
    assert wh.select("cycles", {"cycle_id": CYCLE_ID}).column("promoted")[0].as_py() is False
