"""Airflow as a deployment runs it, for the stack tests (`tests/deploy`): a PostgreSQL metadata
DB from `scripts/postgres.sh`, the scheduler, dag-processor, triggerer and api-server (and Celery
workers) as separate processes in a temporary AIRFLOW_HOME, driven through REST API v2 with a
password generated at run time (SimpleAuthManager's ``POST /auth/token``)."""

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server of its own on a free loopback port; yields its SQLAlchemy URL."""
    # Readable by others: as root the server runs as the `postgres` user, which must reach it.
    pg_dir = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))
    pg_dir.chmod(0o755)
    env = {
        **os.environ,
        "FLYWHEEL_PG_DIR": str(pg_dir / "pg"),
        "FLYWHEEL_PG_PORT": str(free_port()),
        "FLYWHEEL_PG_PASSWORD": secrets.token_urlsafe(24),
    }
    script = str(ROOT / "scripts" / "postgres.sh")
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield subprocess.run([script, "url"], env=env, capture_output=True, text=True, check=True).stdout.strip()
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(pg_dir, ignore_errors=True)


class AirflowStack:
    """Airflow's long-running services as separate processes, as a deployment runs them."""

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
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        migrated = subprocess.run([AIRFLOW, "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=600)
        assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
        for name, args in self.SERVICES.items():
            self.add(name, args)

    def add(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start one more process (a service, a worker) with the stack's environment and ``env``."""
        log = (self.root / f"{name}.log").open("a")
        # A session of its own: stop() ends the process with the workers it forked.
        self.procs[name] = proc = subprocess.Popen(
            [AIRFLOW, *args], env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return proc

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to a process and everything it forked, and forget it."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

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


def assert_api_requires_a_token(stack: dict[str, Any]) -> None:
    """The REST API of a `running_stack` is closed without the JWT, and a wrong password gets no token."""
    url = stack["stack"].url
    assert httpx.get(f"{url}/api/v2/dags", timeout=10).status_code == 401
    assert stack["api"].http.get("/api/v2/dags").status_code == 200
    guess = {"username": "admin", "password": secrets.token_urlsafe(18)}
    assert httpx.post(f"{url}/auth/token", json=guess, timeout=10).status_code == 401


def wait(what: str, check: Callable[[], Any], timeout_s: float, stack: AirflowStack, every_s: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        stack.assert_alive()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{stack.logs_tail()}")
        time.sleep(every_s)


def stack_env(root: Path, flywheel_home: Path, config_path: Path, database_url: str, port: int, executor: str) -> dict[str, str]:
    """The environment every process of the stack shares; ``root/passwords.json`` holds the
    admin's generated password (read it there: a failing test prints its fixtures' values)."""
    from flywheel.sim.localenv import airflow_env

    passwords_file = root / "passwords.json"
    passwords_file.write_text(json.dumps({"admin": secrets.token_urlsafe(18)}))
    passwords_file.chmod(0o600)
    env = airflow_env(root / "home", flywheel_home, config_path=config_path)
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url,
            "AIRFLOW__CORE__EXECUTOR": executor,
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
            # the tests' simulated traffic is for the weeks they trigger and backfill. Runs
            # created through the API (triggered, backfilled) are scheduled all the same.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        }
    )
    return env


@contextmanager
def running_stack(root: Path, env: dict[str, str], port: int, dag_id: str,
                  before_login: Callable[[AirflowStack], None] | None = None, *, unpause: bool = True) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The stack up (and whatever ``before_login`` adds), the admin logged in through the API,
    ``dag_id`` parsed and, with ``unpause``, unpaused; stopped when the block ends. Yields
    ``{"api", "stack", "password"}``."""
    svc = AirflowStack(root, env, port)
    svc.start()
    try:
        if before_login:
            before_login(svc)

        def api_up() -> bool:
            try:
                return httpx.get(f"{svc.url}/api/v2/monitor/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait("the api-server", api_up, 180, svc)
        password = json.loads((root / "passwords.json").read_text())["admin"]
        api = RestClient(svc.url, "admin", password)
        wait("the dag-processor to parse the DAG", lambda: api.http.get(f"/api/v2/dags/{dag_id}").status_code == 200, 240, svc)
        if unpause:
            assert api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})["is_paused"] is False
        yield {"api": api, "stack": svc, "password": password}
    finally:
        svc.stop()


def runs(api: RestClient, dag_id: str) -> dict[str, dict[str, Any]]:
    got = api.call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})
    return {r["dag_run_id"]: r for r in got["dag_runs"]}


def task_instances(api: RestClient, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    got = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    return {ti["task_id"]: ti for ti in got["task_instances"]}


def task_states(api: RestClient, dag_id: str, run_id: str) -> dict[str, str]:
    return {task: ti["state"] for task, ti in task_instances(api, dag_id, run_id).items()}


def task_log_tail(stack: AirflowStack, dag_id: str, run_id: str, states: dict[str, str]) -> str:
    logs = stack.env["AIRFLOW_HOME"] + f"/logs/dag_id={dag_id}/run_id={run_id}"
    tails = []
    for task, state in states.items():
        if state != "success":
            for f in sorted(Path(logs).glob(f"task_id={task}/attempt=*.log")):
                tails.append(f"--- {f}\n{f.read_text(errors='replace')[-2500:]}")
    return "\n".join(tails)


def wait_for_runs(stack: dict[str, Any], dag_id: str, run_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    api: RestClient = stack["api"]

    def finished() -> dict[str, dict[str, Any]] | None:
        got = runs(api, dag_id)
        done = [got[r] for r in run_ids if r in got and got[r]["state"] in ("success", "failed")]
        return got if len(done) == len(run_ids) else None

    return wait(f"runs {run_ids}", finished, timeout_s, stack["stack"], every_s=5)


def backfill(stack: dict[str, Any], dag_id: str, logical_dates: list[Any], timeout_s: float) -> dict[str, Any]:
    """A backfill of ``logical_dates``, one run at a time (each cycle starts from the champion
    the one before it left), through the API; its dry-run plan, the backfill and its runs."""
    api: RestClient = stack["api"]
    body = {"dag_id": dag_id, "from_date": min(logical_dates).isoformat(), "to_date": max(logical_dates).isoformat(),
            "max_active_runs": 1, "reprocess_behavior": "none"}  # fmt: skip
    planned = api.call("POST", "/backfills/dry_run", json=body)
    started = time.monotonic()
    created = api.call("POST", "/backfills", json=body)

    def backfill_runs() -> dict[str, dict[str, Any]] | None:
        got = {k: r for k, r in runs(api, dag_id).items() if r["run_type"] == "backfill"}
        return got if len(got) == len(logical_dates) else None

    run_ids = list(wait("the backfill's runs to be created", backfill_runs, 120, stack["stack"]))
    finished = wait_for_runs(stack, dag_id, run_ids, timeout_s)
    done = wait("the backfill to complete", lambda: (b := api.call("GET", f"/backfills/{created['id']}"))["completed_at"] and b,
                120, stack["stack"])  # fmt: skip
    return {"planned": planned, "backfill": done, "runs": {k: finished[k] for k in run_ids},
            "seconds": time.monotonic() - started}  # fmt: skip


def assert_each_cycle_once(wh: Any, cycle_ids: set[str], min_logs: int) -> None:
    """The cycles left one row per key in every table, and each window's logs were decided by
    exactly one cycle."""
    from flywheel.tables import TABLES

    for table, spec in TABLES.items():
        keys = ", ".join(f'"{k}"' for k in spec.keys)
        dups = wh.query(f"SELECT {keys}, COUNT(*) AS n FROM {table} GROUP BY {keys} HAVING COUNT(*) > 1").to_pylist()
        assert not dups, (table, dups[:5])
    rows = {r["cycle_id"]: r for r in wh.select("cycles").to_pylist()}
    assert set(rows) == cycle_ids
    decided = {r["cycle_id"]: r["decided"] for r in wh.query(
        "SELECT cycle_id, COUNT(DISTINCT request_id) AS decided FROM decisions GROUP BY cycle_id").to_pylist()}  # fmt: skip
    for cycle_id, row in rows.items():
        assert row["quarantined"] + row["kept"] + row["rejected"] == row["rows_in_window"] > 0, row
        assert decided[cycle_id] == row["kept"] + row["rejected"], (cycle_id, row)
        for table, n in (("datasets", 1), ("models", 1), ("promotions", 1), ("evaluations", 2), ("gate_results", 2)):
            assert wh.count(table, {"cycle_id": cycle_id}) == n, (table, cycle_id)
    # The windows are disjoint weeks: no request was decided by two cycles.
    shared = wh.query(
        "SELECT request_id FROM decisions GROUP BY request_id HAVING COUNT(DISTINCT cycle_id) > 1 LIMIT 5"
    ).to_pylist()
    assert not shared, shared
    logs = wh.query("SELECT COUNT(*) AS n, COUNT(DISTINCT request_id) AS ids FROM production_logs").to_pylist()[0]
    assert logs["n"] == logs["ids"] >= min_logs


def worker_hostname() -> str:
    """``[core] hostname_callable`` for a test's worker: the name of the "machine" it plays (two
    Celery workers on one host would otherwise record the same hostname on their tasks)."""
    return os.environ["FLYWHEEL_TEST_HOSTNAME"]
