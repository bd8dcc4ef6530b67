"""The weekly cycle on the CeleryExecutor, as the compose file deploys it, without Docker.

Redis (Debian's package, started by `scripts/redis.sh`) is the broker, PostgreSQL
(`scripts/postgres.sh`) the metadata DB and Celery's result backend; the scheduler,
dag-processor, triggerer and api-server run as separate processes, with two Celery workers: one
on the default queue and one on the training queue (``FLYWHEEL_TRAINING_QUEUE``, the compose
file's ``gpu`` worker). Each worker is a "machine" of its own: its own FLYWHEEL_HOME (so its own
artefact cache) and hostname, sharing only the artefact bucket (the GCS emulator) and the
warehouse (a DuckDB file, standing in for the warehouse service a deployment reaches over the
network). Through REST API v2: a weekly run and a two-week backfill; every task succeeds, the
training tasks ran on the training worker and the rest on the default worker, the adapters are in
the bucket, and the warehouse holds each cycle once.

Then two faults: the training worker is SIGKILLed mid-training (the machine lost); the scheduler
sees the task's heartbeats stop, the retry goes to a new training worker on a fresh machine, and
it resumes from the last checkpoint the lost one left in the bucket. And the scheduler is
SIGKILLed while a run's task is on a worker; a new scheduler takes the run over and it completes,
once: one run, each cycle's rows once in the warehouse.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scripts import emulators
from tests.helpers.airflow_stack import (
    ROOT,
    AirflowStack,
    RestClient,
    assert_api_requires_a_token,
    assert_each_cycle_once,
    free_port,
    postgres_server,
    running_stack,
    stack_env,
    task_instances,
    task_log_tail,
    wait,
    wait_for_runs,
)
from tests.helpers.airflow_stack import backfill as run_backfill
from tests.helpers.flywheel_env import bootstrapped, write_config

pytestmark = [pytest.mark.celery, pytest.mark.integration]

DAG_ID = "flywheel_weekly"
TRIGGERED = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
BACKFILLED = [TRIGGERED - timedelta(weeks=k) for k in (2, 1)]
LAG_WEEKS = 3  # a run for Monday T reads [T - 21 d, T - 14 d)
RUN_TIMEOUT_S = 480
TRAINING_QUEUE = "training"
TRAINING_TASKS = {"train_lora", "train_twin_without_newest_window"}
WORKERS = {"default": "flywheel-cpu-worker", TRAINING_QUEUE: "flywheel-training-worker"}
FAULT_RUN = TRIGGERED + timedelta(weeks=1)  # the run whose training worker is lost
REPLACEMENT = "flywheel-training-worker-2"
SCHEDULER_FAULT_RUN = FAULT_RUN + timedelta(weeks=1)  # the run whose scheduler is lost


def _cycle_id(logical_date: datetime) -> str:
    return f"{DAG_ID}-{logical_date:%Y%m%dT%H%M}"


@pytest.fixture(scope="module")
def redis() -> Iterator[str]:
    """A Redis of its own on a free loopback port; yields the broker URL."""
    folder = Path(tempfile.mkdtemp(prefix="flywheel-redis-"))
    env = {**os.environ, "FLYWHEEL_REDIS_DIR": str(folder / "redis"), "FLYWHEEL_REDIS_PORT": str(free_port()),
           "FLYWHEEL_REDIS_PASSWORD": secrets.token_urlsafe(24)}  # fmt: skip
    script = str(ROOT / "scripts" / "redis.sh")
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield subprocess.run([script, "url"], env=env, capture_output=True, text=True, check=True).stdout.strip()
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> Iterator[dict[str, str]]:
    """The GCS emulator; yields the environment that points gcsfs at it."""
    emulator = emulators.start("gcs", tmp_path_factory.mktemp("gcs"))
    try:
        yield emulator.env
    finally:
        emulators.stop(emulator)


@pytest.fixture(scope="module")
def flywheel(tmp_path_factory, bucket) -> Iterator[dict[str, Any]]:
    """A small config whose artefacts live in the bucket, the tiny model published there, and
    the three weeks of simulated traffic the runs read."""
    root = tmp_path_factory.mktemp("celery")
    artefacts = f"gs://{emulators.GCS_BUCKET}/{uuid.uuid4().hex[:10]}"

    def edit(cfg):
        cfg["simulate"]["requests_per_week"] = 300
        # Review and the A/B test wait on people and traffic (their own tests cover them).
        cfg["review"]["enabled"] = False
        cfg["experiment"]["enabled"] = False
        cfg["evaluation"]["golden_set_size"] = 80
        cfg["tiny_model"].update({"pretrain_examples": 600, "pretrain_epochs": 2})
        cfg["training"]["checkpoint_steps"] = 20
        cfg["artefacts"]["root"] = artefacts
        cfg["warehouse"]["duckdb_path"] = str(root / "warehouse" / "warehouse.duckdb")  # every machine's

    config_path = write_config(root, edit)
    home = root / "control"  # the scheduler's machine; the workers have their own
    saved = {k: os.environ.get(k) for k in bucket}
    os.environ.update(bucket)
    try:
        first_week = min(BACKFILLED) - timedelta(weeks=LAG_WEEKS)
        weeks = [first_week + timedelta(weeks=w) for w in range(len(BACKFILLED) + 3)]  # the fault runs' weeks too
        config, _ = bootstrapped(home, config_path, weeks)
        yield {"root": root, "home": home, "config_path": config_path, "config": config, "artefacts": artefacts}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _machine(root: Path, host: str) -> dict[str, str]:
    """A worker's own machine: its home (artefact cache), hostname and log-server port."""
    return {
        "FLYWHEEL_HOME": str(root / f"machine-{host}"),
        "FLYWHEEL_TEST_HOSTNAME": host,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.helpers.airflow_stack.worker_hostname",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


@pytest.fixture(scope="module")
def stack(redis, postgres, flywheel, bucket) -> Iterator[dict[str, Any]]:
    root = flywheel["root"] / "airflow"
    root.mkdir()
    port = free_port()
    env = stack_env(root, flywheel["home"], flywheel["config_path"], postgres, port, "CeleryExecutor")
    env.update(bucket)
    env.update({
        "AIRFLOW__CELERY__BROKER_URL": redis,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + postgres,
        # Parsed into the DAG by the dag-processor: the training tasks' queue.
        "FLYWHEEL_TRAINING_QUEUE": TRAINING_QUEUE,
        # A lost worker's task is failed once its heartbeats stop for this long, and retried
        # after this delay (two minutes by default; CI's time is better spent elsewhere).
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "FLYWHEEL_RETRY_DELAY_SECONDS": "10",
    })  # fmt: skip

    def workers(svc: AirflowStack) -> None:
        for queue, host in WORKERS.items():
            svc.add(f"worker-{queue}", ["celery", "worker", "--queues", queue, "--concurrency", "1",
                                        "--celery-hostname", f"{host}@%h", "--without-mingle", "--without-gossip"],
                    env=_machine(flywheel["root"], host))  # fmt: skip

    with running_stack(root, env, port, DAG_ID, before_login=workers) as running:
        yield running


@pytest.fixture(scope="module")
def triggered(stack) -> dict[str, Any]:
    started = time.monotonic()
    run = stack["api"].call("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": TRIGGERED.isoformat(), "conf": {}})
    got = wait_for_runs(stack, DAG_ID, [run["dag_run_id"]], RUN_TIMEOUT_S)
    return {"run": got[run["dag_run_id"]], "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def backfill(stack, triggered) -> dict[str, Any]:
    return run_backfill(stack, DAG_ID, BACKFILLED, RUN_TIMEOUT_S * len(BACKFILLED))


def _all_runs(triggered, backfill) -> dict[str, dict[str, Any]]:
    return {triggered["run"]["dag_run_id"]: triggered["run"], **backfill["runs"]}


def test_api_requires_a_token(stack):
    assert_api_requires_a_token(stack)


def test_every_task_of_a_run_and_a_backfill_succeeds_on_celery(stack, triggered, backfill):
    api: RestClient = stack["api"]
    assert triggered["run"]["run_type"] == "manual"
    assert sorted(r["logical_date"][:10] for r in backfill["runs"].values()) == [f"{d:%Y-%m-%d}" for d in BACKFILLED]
    for run_id, run in _all_runs(triggered, backfill).items():
        tis = task_instances(api, DAG_ID, run_id)
        states = {t: ti["state"] for t, ti in tis.items()}
        assert run["state"] == "success", (run_id, states, task_log_tail(stack["stack"], DAG_ID, run_id, states))
        assert set(states.values()) == {"success"} and TRAINING_TASKS <= set(states), (run_id, states)
        print(f"{run_id}: {len(states)} tasks succeeded")


def test_training_runs_on_the_training_queues_worker(stack, triggered, backfill):
    """The training tasks went through the training queue to the training worker; every other
    task through the default queue to the other worker (the hostnames the task instances record)."""
    api: RestClient = stack["api"]
    for run_id in _all_runs(triggered, backfill):
        for task, ti in task_instances(api, DAG_ID, run_id).items():
            queue = TRAINING_QUEUE if task in TRAINING_TASKS else "default"
            assert (ti["queue"], ti["hostname"]) == (queue, WORKERS[queue]), (run_id, task, ti["queue"], ti["hostname"])
    print("train_lora:", {run_id: task_instances(api, DAG_ID, run_id)["train_lora"]["hostname"] for run_id in backfill["runs"]})


def test_the_workers_share_only_the_bucket(flywheel, bucket, triggered, backfill):
    """Each challenger's adapter is in the bucket; the training worker wrote it there from its own
    cache and the default worker evaluated it from a copy it fetched into its own."""
    import gcsfs

    from flywheel.warehouse.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse(flywheel["config"].duckdb_path)
    models = wh.query("SELECT version, adapter_path FROM models WHERE adapter_path IS NOT NULL AND cycle_id != $f",
                      {"f": _cycle_id(FAULT_RUN)}).to_pylist()  # fmt: skip
    assert len(models) == 1 + len(BACKFILLED)
    fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=bucket["STORAGE_EMULATOR_HOST"])
    for m in models:
        assert m["adapter_path"] == f"{flywheel['artefacts']}/adapters/{m['version']}"
        assert fs.exists(f"{m['adapter_path'].removeprefix('gs://')}/adapter_model.safetensors"), m
        for queue in WORKERS:
            cache = flywheel["root"] / f"machine-{WORKERS[queue]}" / "artefacts-cache" / "adapters" / m["version"]
            assert (cache / "adapter_model.safetensors").is_file(), (queue, m["version"])
    assert not (flywheel["home"] / "artefacts-cache" / "adapters").exists()  # the scheduler's machine ran no task


def test_warehouse_holds_each_cycle_once(flywheel, triggered, backfill):
    from flywheel.warehouse.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse(flywheel["config"].duckdb_path)
    assert_each_cycle_once(wh, {_cycle_id(d) for d in [*BACKFILLED, TRIGGERED]}, min_logs=3 * 300)


@pytest.fixture(scope="module")
def lost_worker(stack, flywheel, backfill) -> dict[str, Any]:
    """A run whose training worker is SIGKILLed once its first checkpoint is in the bucket; a
    replacement worker (a fresh machine) joins the training queue. Prints what it did and saw."""
    import re

    api: RestClient = stack["api"]
    svc: AirflowStack = stack["stack"]
    cycle_id = _cycle_id(FAULT_RUN)
    # Long enough a training to be caught in the middle: about twenty checkpoints.
    run = api.call("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": FAULT_RUN.isoformat(), "conf": {"epochs": 25}})
    run_id = run["dag_run_id"]
    task_log = Path(svc.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=train_lora" / "attempt=1.log"

    def first_checkpoint() -> list[str] | None:
        """The checkpoints the training task says it published (what an operator reads in its log)."""
        state = task_instances(api, DAG_ID, run_id).get("train_lora", {}).get("state")
        assert state not in ("success", "failed"), f"train_lora ended ({state}) before a checkpoint was published"
        text = task_log.read_text(errors="replace") if task_log.is_file() else ""
        return re.findall(rf"checkpoint {re.escape(flywheel['artefacts'])}/adapters/{cycle_id}\.work/checkpoints/(checkpoint-\d+) published", text) or None

    published = wait("a checkpoint of the fault run in the bucket", first_checkpoint, RUN_TIMEOUT_S, svc, every_s=0.5)
    svc.kill(f"worker-{TRAINING_QUEUE}")
    print(f"fault: SIGKILLed the training worker ({WORKERS[TRAINING_QUEUE]}) with {published} in the bucket")
    svc.add("worker-replacement", ["celery", "worker", "--queues", TRAINING_QUEUE, "--concurrency", "1",
                                   "--celery-hostname", f"{REPLACEMENT}@%h", "--without-mingle", "--without-gossip"],
            env=_machine(flywheel["root"], REPLACEMENT))  # fmt: skip
    print(f"fault: started a replacement training worker ({REPLACEMENT}) on a fresh machine")
    got = wait_for_runs(stack, DAG_ID, [run_id], RUN_TIMEOUT_S + 120)  # + the heartbeat timeout and retry delay
    return {"run": got[run_id], "published": published, "cycle_id": cycle_id}


def test_a_lost_training_worker_is_replaced_and_the_retry_resumes(stack, flywheel, lost_worker):
    import json

    from flywheel.warehouse.duckdb import DuckDBWarehouse

    api: RestClient = stack["api"]
    run_id = lost_worker["run"]["dag_run_id"]
    tis = task_instances(api, DAG_ID, run_id)
    states = {t: ti["state"] for t, ti in tis.items()}
    assert lost_worker["run"]["state"] == "success", (states, task_log_tail(stack["stack"], DAG_ID, run_id, states))
    train = tis["train_lora"]
    print(f"fault: train_lora succeeded on try {train['try_number']} on {train['hostname']}")
    assert train["try_number"] == 2 and (train["queue"], train["hostname"]) == (TRAINING_QUEUE, REPLACEMENT)
    wh = DuckDBWarehouse(flywheel["config"].duckdb_path)
    (model,) = wh.query("SELECT metrics_json FROM models WHERE cycle_id = $c", {"c": lost_worker["cycle_id"]}).to_pylist()
    metrics = json.loads(model["metrics_json"])
    last = max(int(name.rsplit("-", 1)[-1]) for name in lost_worker["published"])
    print(f"fault: the retry resumed from step {metrics['resumed_from_step']} of {metrics['steps']}")
    assert metrics["resumed_from_step"] >= last > 0 and metrics["steps"] > metrics["resumed_from_step"]


@pytest.fixture(scope="module")
def lost_scheduler(stack, flywheel, lost_worker) -> dict[str, Any]:
    """A run whose scheduler is SIGKILLed while one of its tasks runs on a worker; a new
    scheduler starts a few seconds later. Prints what it did and saw."""
    api: RestClient = stack["api"]
    svc: AirflowStack = stack["stack"]
    run = api.call("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": SCHEDULER_FAULT_RUN.isoformat(), "conf": {}})
    run_id = run["dag_run_id"]

    def running() -> list[str] | None:
        return [t for t, ti in task_instances(api, DAG_ID, run_id).items() if ti["state"] == "running"] or None

    busy = wait("a task of the run on a worker", running, RUN_TIMEOUT_S, svc, every_s=0.5)
    svc.kill("scheduler")
    print(f"fault: SIGKILLed the scheduler while {busy} ran")
    time.sleep(5)
    states = {t: ti["state"] for t, ti in task_instances(api, DAG_ID, run_id).items()}
    print(f"fault: with no scheduler, the run's tasks were {sorted(set(states.values()) - {None})}")
    svc.add("scheduler", ["scheduler"])
    print("fault: started a new scheduler")
    got = wait_for_runs(stack, DAG_ID, [run_id], RUN_TIMEOUT_S + 120)
    return {"run": got[run_id], "busy": busy, "cycle_id": _cycle_id(SCHEDULER_FAULT_RUN)}


def test_a_killed_scheduler_is_replaced_and_the_run_completes_once(stack, flywheel, lost_scheduler):
    from flywheel.warehouse.duckdb import DuckDBWarehouse

    api: RestClient = stack["api"]
    run_id = lost_scheduler["run"]["dag_run_id"]
    tis = task_instances(api, DAG_ID, run_id)
    states = {t: ti["state"] for t, ti in tis.items()}
    assert lost_scheduler["run"]["state"] == "success", (states, task_log_tail(stack["stack"], DAG_ID, run_id, states))
    tries = {t: ti["try_number"] for t, ti in tis.items() if ti["state"] == "success"}
    print(f"fault: the run succeeded; tries per task {tries}")
    runs = api.call("GET", f"/dags/{DAG_ID}/dagRuns", params={"logical_date_gte": SCHEDULER_FAULT_RUN.isoformat(),
                                                              "logical_date_lte": SCHEDULER_FAULT_RUN.isoformat()})  # fmt: skip
    assert runs["total_entries"] == 1, runs
    wh = DuckDBWarehouse(flywheel["config"].duckdb_path)
    cycles = {_cycle_id(d) for d in [*BACKFILLED, TRIGGERED, FAULT_RUN, SCHEDULER_FAULT_RUN]}
    assert_each_cycle_once(wh, cycles, min_logs=5 * 300)
