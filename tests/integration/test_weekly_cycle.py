"""One full weekly cycle through real Airflow (`airflow dags test`) on the embedded default.

The product's traffic is simulated with the project's tiny model, a few malformed rows are
written into the window on purpose, and the DAG runs in a temporary AIRFLOW_HOME. The checks
are on real outcomes: warehouse row counts, a quarantine that holds the bad rows with reasons,
an adapter that a fresh process loads with `PeftModel.from_pretrained`, a champion that moves
only when the challenger evaluated better, and reruns that add no duplicate rows.

The homes are built and the first weekly run made once per module; every test that reads or
changes the flywheel's state starts from that run (`first_run` puts both homes back as the run
left them), so a rerun, a corrupted week or a second cycle in one test is never seen by another,
whichever order they run in.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from tests.helpers.airflow_server import free_port
from tests.helpers.flywheel_env import dags_test, flywheel_env
from tests.helpers.log_rows import log_row

pytestmark = pytest.mark.integration

DAG_ID = "flywheel_weekly"
LOGICAL_DATE = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
WINDOW_START = LOGICAL_DATE - timedelta(days=21)
WINDOW_END = LOGICAL_DATE - timedelta(days=14)
CYCLE_ID = "flywheel_weekly-20260302T0000"
TABLES_PER_CYCLE = (
    "quarantine", "decisions", "datasets", "evaluations", "promotions", "cycles", "metrics", "gate_results",
    "training_fingerprints",
)  # fmt: skip


def _malformed_rows() -> pa.Table:
    from flywheel.tables import PRODUCTION_LOGS

    ts = WINDOW_START + timedelta(days=2)
    good = log_row(None, ts, user_id="user-bad", response="APPLE", ingested_at=ts, prompt=(
        "Please rewrite the word apple in capital letters for the heading of my school poster, I want it to stand out."))
    rows = [
        {**good, "request_id": "bad-missing-prompt", "prompt": None},
        {**good, "request_id": "bad-action", "user_action": "liked"},
        {**good, "request_id": "bad-score", "quality_score": 1.7},
    ]
    return pa.Table.from_pylist(rows, schema=PRODUCTION_LOGS)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Temporary homes, a small config, a built tiny model, and three weeks of traffic."""
    from flywheel.model import registry
    from flywheel.sim.product import serve_week
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model

    def edit(cfg):
        cfg["simulate"]["requests_per_week"] = 300
        cfg["review"]["enabled"] = False  # the review stage has its own test (tests/browser/test_operator_path.py)
        cfg["evaluation"]["golden_set_size"] = 80
        # The offline-only path: a challenger that passes the gate is promoted at once (the A/B
        # path is tested in test_ab_monitor and test_negative_flywheel).
        cfg["experiment"]["enabled"] = False
        cfg["tiny_model"].update({"pretrain_examples": 600, "pretrain_epochs": 2})
        cfg["alerts"].update({"email_to": ["ml-oncall@example.com"], "airflow_base_url": "http://airflow.test:8080"})

    with flywheel_env(tmp_path_factory.mktemp("cycle"), edit, reserialize=True) as env:
        config, wh = env["config"], env["wh"]
        build_tiny_model(config)
        base = registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
        for w in range(3):
            serve_week(config, wh, WINDOW_START + timedelta(weeks=w))
        wh.merge("production_logs", _malformed_rows())
        yield env | {"base": base}


def _dags_test(env: dict, conf: dict | None = None) -> subprocess.CompletedProcess:
    return dags_test(env, DAG_ID, LOGICAL_DATE, conf)


def _cycle_counts(wh) -> dict[str, int]:
    counts = {t: wh.count(t, {"cycle_id": CYCLE_ID}) for t in TABLES_PER_CYCLE}
    counts["production_logs"] = wh.count("production_logs")
    counts["models"] = wh.count("models")
    return counts


def _expected_window(wh):
    """What the window holds, computed independently of the pipeline."""
    from flywheel.validation import validate_row

    rows = wh.query(
        'SELECT * FROM production_logs WHERE COALESCE("timestamp", ingested_at) >= $s '
        'AND COALESCE("timestamp", ingested_at) < $e',
        {"s": WINDOW_START, "e": WINDOW_END},
    ).to_pylist()
    bad = {r["request_id"] for r in rows if validate_row(r)}
    return len(rows), bad


HOMES = ("flywheel", "airflow")  # the warehouse and artefacts; Airflow's metadata DB and logs


@pytest.fixture(scope="module")
def first_run_homes(env, tmp_path_factory) -> dict:
    """The weekly run of LOGICAL_DATE, made once; a copy of both homes as it left them, and its
    counts."""
    _dags_test(env)
    copy = tmp_path_factory.mktemp("after-first-run")
    for home in HOMES:
        shutil.copytree(env["root"] / home, copy / home, symlinks=True)
    return {"copy": copy, "counts": _cycle_counts(env["wh"])}


@pytest.fixture
def first_run(env, first_run_homes) -> dict[str, int]:
    """The state the first run left, put back in place (no process holds a file between tests:
    the warehouse opens a connection per call and Airflow runs in subprocesses); its counts."""
    for home in HOMES:
        shutil.rmtree(env["root"] / home)
        shutil.copytree(first_run_homes["copy"] / home, env["root"] / home, symlinks=True)
    return first_run_homes["counts"]


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


def test_the_run_reads_its_real_duration(env, first_run_homes):
    """A cycle for a past week started when it ran, not at its logical date: the grid shows how
    long it took (apache/airflow#66127, worked around in scripts/airflow_dags_test.py)."""
    proc = subprocess.run([env["airflow"], "dags", "list-runs", DAG_ID, "-o", "json"], env=env["env"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    runs = [r for r in json.loads(proc.stdout[proc.stdout.index("["):]) if r["logical_date"].startswith(f"{LOGICAL_DATE:%Y-%m-%d}")]
    assert runs, proc.stdout[-2000:]
    started, ended = (datetime.fromisoformat(runs[0][k]) for k in ("start_date", "end_date"))
    assert started.date() > LOGICAL_DATE.date() and timedelta(0) < ended - started < timedelta(hours=1)


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

    # Every kept row passed every rule it met; every rejected one failed at least one.
    decisions = wh.select("decisions", {"cycle_id": CYCLE_ID}).to_pylist()
    assert {d["rule"] for d in decisions} == {
        "user_action", "length", "quality_score", "pii", "toxicity", "grounding", "decontamination", "dedup", "selection"
    }  # fmt: skip
    by_req: dict[str, list[bool]] = {}
    for d in decisions:
        by_req.setdefault(d["request_id"], []).append(d["kept"])
    assert len(by_req) == cycle["kept"] + cycle["rejected"]
    assert sum(all(v) for v in by_req.values()) == cycle["kept"]
    # Both gates ran and passed; per-rule pass rates are in the metrics table.
    gates = {r["gate"]: r for r in wh.select("gate_results", {"cycle_id": CYCLE_ID}).to_pylist()}
    assert set(gates) == {"raw_window", "training_set"} and all(g["success"] for g in gates.values())
    metrics = {r["name"]: r["value"] for r in wh.select("metrics", {"cycle_id": CYCLE_ID}).to_pylist()}
    assert 0 < metrics["pass_rate.user_action"] < 1 and "pass_rate.selection" in metrics


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
    from flywheel.model import registry

    wh = env["wh"]
    evals = {r["role"]: r for r in wh.select("evaluations", {"cycle_id": CYCLE_ID}).to_pylist()}
    assert set(evals) == {"champion", "challenger"}
    assert evals["champion"]["model_version"] == env["base"]
    assert evals["champion"]["golden_hash"] == evals["challenger"]["golden_hash"]
    better = evals["challenger"]["accuracy"] > evals["champion"]["accuracy"]
    promo = wh.select("promotions", {"cycle_id": CYCLE_ID}).to_pylist()[0]
    assert promo["promoted"] == better
    assert registry.current_champion(wh) == (CYCLE_ID if better else env["base"])
    # "Which data trained the champion?", answered from the warehouse alone.
    lineage = registry.training_data(wh, registry.current_champion(wh))
    if better:
        (data,) = lineage
        dataset = wh.select("datasets", {"cycle_id": CYCLE_ID}).to_pylist()[0]
        assert data.dataset_hash == dataset["content_hash"]
        assert data.n_examples == dataset["n_train"] + dataset["n_val"]
        assert (data.window_start, data.window_end) == (WINDOW_START, WINDOW_END)
    else:
        assert lineage == []  # the base model: no flywheel data
    assert registry.model_statuses(wh)[CYCLE_ID] == ("champion" if better else "candidate")


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
    from flywheel.model import registry

    wh = env["wh"]
    _dags_test(env, {"min_improvement": 1.0})
    promo = wh.select("promotions", {"cycle_id": CYCLE_ID}).to_pylist()
    assert len(promo) == 1
    assert promo[0]["promoted"] is False
    assert promo[0]["champion_after"] == env["base"]
    assert registry.current_champion(wh) == env["base"]
    assert wh.select("cycles", {"cycle_id": CYCLE_ID}).column("promoted")[0].as_py() is False


# --- New data vs old data, on demand ------------------------------------------------------

NEW_DATA_DATE = LOGICAL_DATE + timedelta(weeks=2)  # with window_days 14: the second and third weeks
NEW_DATA_CYCLE = "flywheel_weekly-20260316T0000"


@pytest.mark.slow  # about two minutes of LoRA; the twin's logic is unit-tested in test_new_data
def test_compare_new_data_trains_a_twin_without_the_newest_week(env, first_run):
    """Trigger a two-week window with `compare_new_data`: the twin is trained (a real LoRA run)
    on the dataset less the newest week, scored on the golden set beside the challenger, and the
    comparison and its verdict are stored and reported; the gate judges whichever went on."""
    wh = env["wh"]
    dags_test(env, DAG_ID, NEW_DATA_DATE, {"window_days": 14, "compare_new_data": True})
    states = _task_states(env, NEW_DATA_DATE)
    assert states["run"] == "success" and states["train_twin_without_newest_window"] == "success", states
    twin = f"{NEW_DATA_CYCLE}-twin"
    newest = (NEW_DATA_DATE - timedelta(days=21), NEW_DATA_DATE - timedelta(days=14))
    full, twin_ds = (wh.select("datasets", {"dataset_id": d}).to_pylist()[0] for d in (NEW_DATA_CYCLE, twin))
    # The twin's examples are the challenger's less those of the newest week.
    from flywheel.data.dataset import load_chat_dataset

    ids = {d: {r["request_id"] for split in ("train", "validation") for r in load_chat_dataset(Path(ds["path"]))[split]}
           for d, ds in ((NEW_DATA_CYCLE, full), (twin, twin_ds))}  # fmt: skip
    ts = {r["request_id"]: r["timestamp"] for r in wh.select("production_logs").to_pylist()}
    left_out = ids[NEW_DATA_CYCLE] - ids[twin]
    assert ids[twin] < ids[NEW_DATA_CYCLE] and left_out and all(newest[0] <= ts[i] < newest[1] for i in left_out)
    assert not any(newest[0] <= ts[i] < newest[1] for i in ids[twin])
    (model,) = wh.select("models", {"version": twin}).to_pylist()
    assert model["dataset_hash"] == twin_ds["content_hash"] and Path(model["adapter_path"], "adapter_config.json").exists()
    roles = {r["role"]: r for r in wh.select("evaluations", {"cycle_id": NEW_DATA_CYCLE}).to_pylist()}
    assert set(roles) == {"champion", "challenger", "twin"} and roles["twin"]["model_version"] == twin
    (c,) = wh.select("new_data_comparisons", {"cycle_id": NEW_DATA_CYCLE}).to_pylist()
    assert c["n_newest"] == len(left_out) and (c["newest_start"], c["newest_end"]) == newest
    assert c["challenger_accuracy"] == roles["challenger"]["accuracy"] and c["twin_accuracy"] == roles["twin"]["accuracy"]
    assert c["delta"] == pytest.approx(c["challenger_accuracy"] - c["twin_accuracy"])
    assert c["verdict"] == ("helped" if c["delta"] > 0 else "hurt" if c["delta"] < 0 else "no_gain")
    assert c["flagged"] == (c["delta"] < -env["config"].evaluation.max_new_data_regression - 1e-12)
    (gate,) = wh.select("offline_comparisons", {"cycle_id": NEW_DATA_CYCLE}).to_pylist()
    assert gate["challenger"] == (twin if c["flagged"] else NEW_DATA_CYCLE)
    report = (env["root"] / "flywheel" / "artefacts" / "reports" / NEW_DATA_CYCLE / "report.md").read_text()
    assert "## New data vs old data" in report and f"`{twin}`" in report


# --- A gate that fails in a real run ------------------------------------------------------

BROKEN_DATE = LOGICAL_DATE + timedelta(weeks=1)  # reads the week after LOGICAL_DATE's window
BROKEN_CYCLE = "flywheel_weekly-20260309T0000"


def _task_states(env: dict, logical_date: datetime) -> dict[str, str]:
    code = (
        "import json, sys\n"
        "from airflow.models import DagRun\n"
        "from airflow.utils.session import create_session\n"
        "from datetime import datetime\n"
        "with create_session() as s:\n"
        "    runs = s.query(DagRun).filter(DagRun.dag_id == sys.argv[1]).all()\n"
        "    run = next(r for r in runs if r.logical_date == datetime.fromisoformat(sys.argv[2]))\n"
        "    print('STATES=' + json.dumps({'run': str(run.state), **{ti.task_id: str(ti.state) for ti in run.get_task_instances(session=s)}}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, DAG_ID, logical_date.isoformat()], env=env["env"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("STATES="))[7:])


class _SmtpSink:
    """A local SMTP server (aiosmtpd) on loopback that keeps what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[bytes] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(envelope.content)
        return "250 OK"

    def connection_env(self) -> dict[str, str]:
        conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
                "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "flywheel@localhost", "timeout": 10}}
        return {"AIRFLOW_CONN_FLYWHEEL_SMTP": json.dumps(conn)}


def test_a_failed_gate_fails_the_run_and_nothing_downstream_runs(env, first_run):
    """A broken source (a fifth of a week's rows with an unknown action) fails the raw gate,
    and the alert reaches operators by e-mail (a local SMTP sink started here)."""
    import email
    from email import policy

    from flywheel.model import registry
    from flywheel.tables import PRODUCTION_LOGS

    wh = env["wh"]
    champion_before = registry.current_champion(wh)
    start = BROKEN_DATE - timedelta(days=21)
    rows = wh.query(
        "SELECT * FROM production_logs WHERE \"timestamp\" >= $s AND \"timestamp\" < $e ORDER BY request_id",
        {"s": start, "e": start + timedelta(days=7)},
    ).to_pylist()
    assert len(rows) > 100
    broken = [{**r, "user_action": "thumbs_up"} for r in rows[: len(rows) // 5]]
    wh.merge("production_logs", pa.Table.from_pylist(broken, schema=PRODUCTION_LOGS))

    sink = _SmtpSink()
    sink.controller.start()
    try:
        proc = dags_test(env, DAG_ID, BROKEN_DATE, extra_env=sink.connection_env(), check=False)
    finally:
        sink.controller.stop()
    output = proc.stdout + proc.stderr
    states = _task_states(env, BROKEN_DATE)
    assert states["run"] == "failed", states
    assert states["extract_window"] == "success"
    assert states["gate_raw_window"] == "failed"
    for task in ("validate_and_quarantine", "filter_candidates", "build_dataset", "gate_training_set",
                 "train_lora", "evaluate_golden_set", "promote_if_better"):
        assert states[task] == "upstream_failed", (task, states)
    # The failure names the expectation, loudly, and the alert reached the warehouse.
    assert "expect_column_values_to_be_in_set(user_action)" in output
    (gate,) = wh.select("gate_results", {"cycle_id": BROKEN_CYCLE, "gate": "raw_window"}).to_pylist()
    assert gate["success"] is False
    assert "user_action" in gate["failed_json"]
    alerts = [a for a in wh.select("alerts").to_pylist() if a["task_id"] == "gate_raw_window"]
    assert alerts, "the failure notifier must record an alert"
    assert alerts[0]["kind"] == "gate_failed" and "expect_column_values_to_be_in_set(user_action)" in alerts[0]["message"]
    assert alerts[0]["link"] and alerts[0]["link"].startswith("file://")
    # The e-mail: one message, to the configured address, naming the DAG, the gate and what
    # failed, with links to the Data Docs page and the run.
    assert len(sink.messages) == 1, output[-3000:]
    mail = email.message_from_bytes(sink.messages[0], policy=policy.default)
    assert mail["To"] == "ml-oncall@example.com" and mail["From"] == "flywheel@localhost"
    assert mail["Subject"] == "[flywheel] flywheel_weekly.gate_raw_window: gate failed"
    body = mail.get_body(preferencelist=("html", "plain")).get_content()
    assert "expect_column_values_to_be_in_set(user_action)" in body
    assert alerts[0]["link"] in body
    assert "http://airflow.test:8080/dags/flywheel_weekly/runs/" in body
    # ... and to the broken rows: quarantined with their reasons before the gate failed the run.
    assert f"http://airflow.test:8080/flywheel/quarantine?cycle_id={BROKEN_CYCLE}" in body
    assert f"http://airflow.test:8080/flywheel/gates/{BROKEN_CYCLE}/raw_window" in body
    bad = wh.query("SELECT DISTINCT request_id FROM quarantine WHERE cycle_id = $c AND rule = 'allowed_values'",
                   {"c": BROKEN_CYCLE}).column("request_id").to_pylist()  # fmt: skip
    assert {r["request_id"] for r in broken} <= set(bad)
    # Nothing was trained, evaluated or promoted for the broken week; the champion stands.
    assert wh.count("models", {"cycle_id": BROKEN_CYCLE}) == 0
    assert wh.count("promotions", {"cycle_id": BROKEN_CYCLE}) == 0
    assert registry.current_champion(wh) == champion_before
