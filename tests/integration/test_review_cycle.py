"""A weekly cycle waits for human review deferred, holding no worker slot, then goes on.

Real Airflow components on a temporary AIRFLOW_HOME (SQLite, LocalExecutor): the api-server
(REST API v2 and the execution API), scheduler, dag-processor and triggerer. The run is
triggered through the REST API with a token from Airflow's login; the test watches the
`wait_for_review` task reach the deferred state while the default pool runs nothing, then the
simulated reviewers (the simulator's oracle) review the sample, and the run finishes with the
reviews applied to its dataset. Training is skipped (`skip_training`) to keep it short: review
changes what is trained on, not how.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.helpers.airflow_server import free_port
from tests.helpers.simulated_product import for_simulated_product

pytestmark = pytest.mark.integration

DAG_ID = "flywheel_weekly"
LOGICAL_DATE = datetime(2026, 3, 2, tzinfo=UTC)
CYCLE_ID = "flywheel_weekly-20260302T0000"
COMPONENTS = (["api-server"], ["scheduler"], ["dag-processor"], ["triggerer"])


def _wait(what: str, check, timeout: float, procs, logs: Path):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for p in procs:
            assert p.poll() is None, f"{p.args} exited while waiting for {what}:\n" + "\n".join(
                f.read_text()[-2000:] for f in logs.glob("*.log"))  # fmt: skip
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(2)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    import httpx

    from flywheel.config import load_config
    from flywheel.model import registry
    from flywheel.sim.localenv import airflow_env
    from flywheel.sim.product import serve_week
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model
    from flywheel.warehouse import warehouse_from_config

    root = tmp_path_factory.mktemp("review")
    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "include/config/flywheel.yaml").read_text())
    for_simulated_product(data)
    data["simulate"]["requests_per_week"] = 300
    data["evaluation"]["golden_set_size"] = 60
    data["tiny_model"].update({"pretrain_examples": 400, "pretrain_epochs": 1})
    data["review"].update({"poll_seconds": 2, "reviewers_per_item": 1, "required_share": 0.9})
    config_path = root / "flywheel.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path).model_copy(update={"home": root / "flywheel"})
    build_tiny_model(config)
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
    truth: dict[str, str] = {}
    serve_week(config, wh, LOGICAL_DATE - timedelta(days=21), truth=truth)

    port = free_port()
    env = airflow_env(root / "airflow", root / "flywheel", config_path=config_path) | {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "operator:admin",
        # Only the run this test triggers: no scheduled runs when the DAG is unpaused.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__CORE__PARALLELISM": "2",
    }
    af = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([af, "db", "migrate"], env=env, check=True, capture_output=True)
    logs = root / "logs"
    logs.mkdir()
    procs = []
    for args in COMPONENTS:
        out = (logs / f"{args[0]}.log").open("w")
        procs.append(subprocess.Popen([af, *args], env=env, stdout=out, stderr=subprocess.STDOUT))
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            try:
                return httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait("the api-server", healthy, 180, procs, logs)
        password = json.loads((root / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())["operator"]
        token = httpx.post(f"{base}/auth/token", json={"username": "operator", "password": password}).json()["access_token"]
        client = httpx.Client(base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        _wait("the DAG to be parsed", lambda: client.get(f"/dags/{DAG_ID}").status_code == 200, 240, procs, logs)
        yield {"client": client, "wh": wh, "truth": truth, "procs": procs, "logs": logs}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _tis(client, run_id: str) -> dict[str, dict]:
    body = client.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()
    return {t["task_id"]: t for t in body["task_instances"]}


def test_the_cycle_defers_while_people_review_then_goes_on(airflow):
    from flywheel.sim.reviewers import run_simulated_reviewers

    client, wh, procs, logs = airflow["client"], airflow["wh"], airflow["procs"], airflow["logs"]
    assert client.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
    resp = client.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": LOGICAL_DATE.isoformat(), "conf": {"skip_training": True}})
    assert resp.status_code == 200, resp.text
    run_id = resp.json()["dag_run_id"]

    def deferred():
        tis = _tis(client, run_id)
        failed = {k: t["state"] for k, t in tis.items() if t["state"] in ("failed", "upstream_failed")}
        assert not failed, failed
        return tis if tis.get("wait_for_review", {}).get("state") == "deferred" else None

    tis = _wait("wait_for_review to defer", deferred, 420, procs, logs)
    # Deferred: the trigger holds the wait, the pool runs nothing, nothing after it started.
    assert tis["sample_for_review"]["state"] == "success"
    assert tis["build_dataset"]["state"] in (None, "none")
    pool = client.get("/pools/default_pool").json()
    assert pool["running_slots"] == 0 and pool["deferred_slots"] == 1, pool
    items = wh.count("review_items", {"cycle_id": CYCLE_ID})
    assert items >= 10 and wh.count("reviews") == 0
    # The task's "Review" button opens the Review page while the run waits.
    links = client.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/wait_for_review/links").json()["extra_links"]
    assert links["Review"].endswith("/flywheel/review/"), links
    time.sleep(6)  # it stays deferred while nobody reviews (three polls of the trigger)
    assert _tis(client, run_id)["wait_for_review"]["state"] == "deferred"

    # The reviewers (the simulator's oracle, with noise) work through the batch.
    written = run_simulated_reviewers(wh, airflow["truth"], reviewers=["sim-reviewer"], reviewers_per_item=1, noise=0.1)
    assert written == items

    def finished():
        state = client.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]
        return state if state in ("success", "failed") else None

    assert _wait("the run to finish", finished, 420, procs, logs) == "success", _tis(client, run_id)
    tis = _tis(client, run_id)
    assert tis["wait_for_review"]["state"] == "success" and tis["calibrate_filters"]["state"] == "success"
    assert tis["train_lora"]["state"] == "skipped" and tis["record_cycle_metrics"]["state"] == "success"
    # The reviews reached the dataset: a decision per reviewed kept row, gold for the approved.
    review_decisions = wh.query("SELECT kept, COUNT(*) AS n FROM decisions WHERE cycle_id = $c AND rule = 'review' GROUP BY kept",
                                {"c": CYCLE_ID}).to_pylist()  # fmt: skip
    assert sum(r["n"] for r in review_decisions) > 0
    approved = sum(r["n"] for r in review_decisions if r["kept"])
    assert wh.count("gold_examples", {"cycle_id": CYCLE_ID, "source": "review"}) == approved
    (dataset,) = wh.select("datasets", {"cycle_id": CYCLE_ID}).to_pylist()
    (cycle,) = wh.select("cycles", {"cycle_id": CYCLE_ID}).to_pylist()
    assert dataset["n_train"] + dataset["n_val"] == cycle["kept"]
    assert wh.count("config_versions", {"cycle_id": CYCLE_ID}) == 1
