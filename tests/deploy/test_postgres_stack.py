"""The weekly cycle on a production-like Airflow, without Docker.

Production runs Airflow as separate services over a Postgres metadata DB, and is driven through
the REST API; `airflow dags test` (the other integration tests) runs none of that. Here
`scripts/postgres.sh` starts Debian's PostgreSQL on loopback, and the real `airflow scheduler`
(LocalExecutor), `dag-processor`, `triggerer` and `api-server` run on it in a temporary
AIRFLOW_HOME. The test logs in with a password generated at run time (SimpleAuthManager's
`POST /auth/token`), triggers one weekly run and creates a backfill of the three weeks before it
through REST API v2, waits for all four, and checks that every task of every run succeeded and
that the DuckDB warehouse holds each cycle's rows once.

LocalExecutor rather than Celery: the same scheduler, DAG parsing, Execution API and task
runner as production, without a broker and two more processes on a 2-core CI machine. The
compose file's Celery and `gpu` queue wiring is checked in test_compose.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.flywheel_env import pointed_at, write_config

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "flywheel_weekly"
TRIGGERED = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday: the weekly run triggered through the API
BACKFILLED = [TRIGGERED - timedelta(weeks=k) for k in (3, 2, 1)]  # the three weeks before it
LAG_WEEKS = 3  # a run for Monday T reads [T - 21 d, T - 14 d)
RUN_TIMEOUT_S = 420  # per run; a cycle takes one to two minutes on 2 busy cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cycle_id(logical_date: datetime) -> str:
    return f"{DAG_ID}-{logical_date:%Y%m%dT%H%M}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of its own on a free loopback port; yields its SQLAlchemy URL."""
    # Readable by others: as root the server runs as the `postgres` user, which must reach it.
    pg_dir = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    pg_dir.chmod(0o755)
    env = {
        **os.environ,
        "FLYWHEEL_PG_DIR": str(pg_dir / "pg"),
        "FLYWHEEL_PG_PORT": str(_free_port()),
        "FLYWHEEL_PG_PASSWORD": secrets.token_urlsafe(24),
    }
    script = str(ROOT / "scripts" / "postgres.sh")
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        url = subprocess.run([script, "url"], env=env, capture_output=True, text=True, check=True).stdout.strip()
        yield url
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(pg_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def flywheel(tmp_path_factory) -> dict[str, Any]:
    """A small config, the tiny model, and the four weeks of simulated traffic the runs read."""
    from flywheel.config import load_config
    from flywheel.model import registry
    from flywheel.sim.product import serve_week
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model
    from flywheel.warehouse import warehouse_from_config

    root = tmp_path_factory.mktemp("stack")

    def edit(cfg):
        cfg["simulate"]["requests_per_week"] = 300
        # Human review and the online A/B test wait on people and traffic (their own tests cover
        # them); this test is about the services, so each run goes straight through.
        cfg["review"]["enabled"] = False
        cfg["experiment"]["enabled"] = False
        cfg["evaluation"]["golden_set_size"] = 80
        cfg["tiny_model"].update({"pretrain_examples": 600, "pretrain_epochs": 2})

    config_path = write_config(root, edit)
    home = root / "flywheel"
    with pointed_at(home, config_path):
        config = load_config()
        build_tiny_model(config)
        wh = warehouse_from_config(config)
        wh.ensure_schema()
        registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
        first_week = min(BACKFILLED) - timedelta(weeks=LAG_WEEKS)
        for w in range(len(BACKFILLED) + 1):
            serve_week(config, wh, first_week + timedelta(weeks=w))
    return {"root": root, "home": home, "config_path": config_path, "config": config, "wh": wh}


class AirflowStack:
    """Airflow's four long-running services as separate processes, as a deployment runs them."""

    SERVICES = {
        "scheduler": ["scheduler"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer"],
        "api-server": ["api-server", "--workers", "1"],
    }

    def __init__(self, root: Path, env: dict[str, str], port: int) -> None:
        self.root = root
        self.env = env
        self.url = f"http://127.0.0.1:{port}"
        self.airflow = str(Path(sys.executable).with_name("airflow"))
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        migrated = subprocess.run(
            [self.airflow, "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=600
        )
        assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
        for name, args in self.SERVICES.items():
            log = (self.root / f"{name}.log").open("w")
            # A session of its own: stop() ends the service with the workers it forked.
            self.procs[name] = subprocess.Popen(
                [self.airflow, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def assert_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"Airflow services exited: {dead}\n{self.logs_tail()}"

    def logs_tail(self, chars: int = 1500) -> str:
        return "\n".join(
            f"--- {name}.log\n{(self.root / f'{name}.log').read_text(errors='replace')[-chars:]}" for name in self.procs
        )


class RestClient:
    """REST API v2 with a JWT from SimpleAuthManager's token endpoint."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        resp = self.http.post("/auth/token", json={"username": username, "password": password})
        assert resp.status_code == 201, resp.text
        self.http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        resp = self.http.request(method, f"/api/v2{path}", **kwargs)
        assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text[:2000]}"
        return resp.json() if resp.content else None


def _wait(what: str, check, timeout_s: float, stack: AirflowStack, every_s: float = 3.0):
    deadline = time.monotonic() + timeout_s
    while True:
        stack.assert_alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{stack.logs_tail()}")
        time.sleep(every_s)


@pytest.fixture(scope="module")
def stack(postgres, flywheel) -> Iterator[dict[str, Any]]:
    """The stack up, the admin logged in through the API, the DAG parsed and unpaused."""
    from flywheel.sim.localenv import airflow_env

    root = flywheel["root"] / "airflow"
    root.mkdir()
    port = _free_port()
    password = secrets.token_urlsafe(18)
    passwords_file = root / "passwords.json"
    passwords_file.write_text(json.dumps({"admin": password}))
    passwords_file.chmod(0o600)
    env = airflow_env(root / "home", flywheel["home"], config_path=flywheel["config_path"])
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            # Every service signs or checks the tasks' and users' tokens with this one secret.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # No run for the wall clock's week: unpaused, the cron schedule would add one, and
            # this test's simulated traffic is for the weeks it triggers and backfills. Runs
            # created through the API (triggered, backfilled) are scheduled all the same.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        }
    )
    svc = AirflowStack(root, env, port)
    svc.start()
    try:

        def api_up() -> bool:
            try:
                return httpx.get(f"{svc.url}/api/v2/monitor/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        _wait("the api-server", api_up, 180, svc)
        api = RestClient(svc.url, "admin", password)
        _wait("the dag-processor to parse the DAG", lambda: api.http.get(f"/api/v2/dags/{DAG_ID}").status_code == 200, 240, svc)
        assert api.call("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})["is_paused"] is False
        # The password stays in this frame: a failing test prints its fixtures' values.
        yield {"api": api, "stack": svc}
    finally:
        svc.stop()


def _runs(api: RestClient) -> dict[str, dict[str, Any]]:
    got = api.call("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})
    return {r["dag_run_id"]: r for r in got["dag_runs"]}


def _task_states(api: RestClient, run_id: str) -> dict[str, str]:
    got = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    return {ti["task_id"]: ti["state"] for ti in got["task_instances"]}


def _task_log_tail(stack: AirflowStack, run_id: str, states: dict[str, str]) -> str:
    logs = stack.env["AIRFLOW_HOME"] + f"/logs/dag_id={DAG_ID}/run_id={run_id}"
    tails = []
    for task, state in states.items():
        if state != "success":
            for f in sorted(Path(logs).glob(f"task_id={task}/attempt=*.log")):
                tails.append(f"--- {f}\n{f.read_text(errors='replace')[-2500:]}")
    return "\n".join(tails)


def _wait_for_runs(stack: dict[str, Any], run_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    api: RestClient = stack["api"]

    def finished():
        runs = _runs(api)
        done = [runs[r] for r in run_ids if r in runs and runs[r]["state"] in ("success", "failed")]
        return runs if len(done) == len(run_ids) else None

    return _wait(f"runs {run_ids}", finished, timeout_s, stack["stack"], every_s=5)


@pytest.fixture(scope="module")
def triggered(stack) -> dict[str, Any]:
    """The weekly run, triggered through the API as a user would, and its outcome."""
    api: RestClient = stack["api"]
    started = time.monotonic()
    run = api.call("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": TRIGGERED.isoformat(), "conf": {}})
    runs = _wait_for_runs(stack, [run["dag_run_id"]], RUN_TIMEOUT_S)
    return {"run": runs[run["dag_run_id"]], "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def backfill(stack, triggered) -> dict[str, Any]:
    """A backfill of the three weeks before the triggered run, one run at a time (each cycle
    starts from the champion the one before it left), and its outcome."""
    api: RestClient = stack["api"]
    body = {
        "dag_id": DAG_ID,
        "from_date": min(BACKFILLED).isoformat(),
        "to_date": max(BACKFILLED).isoformat(),
        "max_active_runs": 1,
        "reprocess_behavior": "none",
    }
    planned = api.call("POST", "/backfills/dry_run", json=body)
    started = time.monotonic()
    created = api.call("POST", "/backfills", json=body)

    def backfill_runs():
        runs = {k: r for k, r in _runs(api).items() if r["run_type"] == "backfill"}
        return runs if len(runs) == len(BACKFILLED) else None

    run_ids = list(_wait("the backfill's runs to be created", backfill_runs, 120, stack["stack"]))
    runs = _wait_for_runs(stack, run_ids, RUN_TIMEOUT_S * len(BACKFILLED))
    done = _wait(
        "the backfill to complete",
        lambda: (b := api.call("GET", f"/backfills/{created['id']}"))["completed_at"] and b,
        120,
        stack["stack"],
    )
    return {
        "planned": planned,
        "backfill": done,
        "runs": {k: runs[k] for k in run_ids},
        "seconds": time.monotonic() - started,
    }


def test_api_requires_a_token(stack):
    """The REST API is closed without the JWT, and a wrong password gets no token."""
    url = stack["stack"].url
    assert httpx.get(f"{url}/api/v2/dags", timeout=10).status_code == 401
    assert stack["api"].http.get("/api/v2/dags").status_code == 200
    guess = {"username": "admin", "password": secrets.token_urlsafe(18)}
    assert httpx.post(f"{url}/auth/token", json=guess, timeout=10).status_code == 401


def test_triggered_weekly_run_succeeds_on_postgres(stack, triggered):
    api: RestClient = stack["api"]
    run = triggered["run"]
    states = _task_states(api, run["dag_run_id"])
    assert run["state"] == "success", (states, _task_log_tail(stack["stack"], run["dag_run_id"], states))
    assert run["run_type"] == "manual"
    assert run["logical_date"].startswith(TRIGGERED.strftime("%Y-%m-%dT%H:%M:%S"))
    # Every task ran and succeeded: a skipped training would be a cycle that learned nothing.
    assert set(states.values()) == {"success"} and "train_lora" in states, states
    # Airflow's own records are on Postgres, not in a SQLite file next to AIRFLOW_HOME.
    assert not list(Path(stack["stack"].env["AIRFLOW_HOME"]).glob("*.db"))


def test_backfill_of_three_past_weeks_succeeds(stack, backfill):
    api: RestClient = stack["api"]
    planned = sorted(b["logical_date"][:10] for b in backfill["planned"]["backfills"])
    assert planned == [f"{d:%Y-%m-%d}" for d in BACKFILLED]
    assert backfill["backfill"]["completed_at"]
    runs = backfill["runs"]
    assert sorted(r["logical_date"][:10] for r in runs.values()) == planned
    for run_id, run in runs.items():
        states = _task_states(api, run_id)
        assert run["state"] == "success", (run_id, states, _task_log_tail(stack["stack"], run_id, states))
        assert set(states.values()) == {"success"}, (run_id, states)
    # Nothing else ran: the scheduler made no run of its own for the wall clock's week.
    assert len(_runs(api)) == len(BACKFILLED) + 1


def test_warehouse_holds_each_cycle_once(flywheel, triggered, backfill):
    """Four cycles through the scheduler leave one row per key in every table, and each week's
    logs were decided by exactly one cycle."""
    from flywheel.tables import TABLES
    from flywheel.warehouse.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse(flywheel["config"].duckdb_path)
    for table, spec in TABLES.items():
        keys = ", ".join(f'"{k}"' for k in spec.keys)
        dups = wh.query(f"SELECT {keys}, COUNT(*) AS n FROM {table} GROUP BY {keys} HAVING COUNT(*) > 1").to_pylist()
        assert not dups, (table, dups[:5])

    cycles = {_cycle_id(d) for d in [*BACKFILLED, TRIGGERED]}
    rows = {r["cycle_id"]: r for r in wh.select("cycles").to_pylist()}
    assert set(rows) == cycles
    per_cycle = {
        r["cycle_id"]: r
        for r in wh.query(
            "SELECT cycle_id, COUNT(DISTINCT request_id) AS decided FROM decisions GROUP BY cycle_id"
        ).to_pylist()
    }
    for cycle_id, row in rows.items():
        assert row["quarantined"] + row["kept"] + row["rejected"] == row["rows_in_window"] > 0, row
        assert per_cycle[cycle_id]["decided"] == row["kept"] + row["rejected"], (cycle_id, row)
        for table, n in (("datasets", 1), ("models", 1), ("promotions", 1), ("evaluations", 2), ("gate_results", 2)):
            assert wh.count(table, {"cycle_id": cycle_id}) == n, (table, cycle_id)
    # The windows are disjoint weeks: no request was decided by two cycles.
    shared = wh.query(
        "SELECT request_id FROM decisions GROUP BY request_id HAVING COUNT(DISTINCT cycle_id) > 1 LIMIT 5"
    ).to_pylist()
    assert not shared, shared
    logs = wh.query("SELECT COUNT(*) AS n, COUNT(DISTINCT request_id) AS ids FROM production_logs").to_pylist()[0]
    assert logs["n"] == logs["ids"] >= 4 * 300
