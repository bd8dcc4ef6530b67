"""The weekly cycle on a production-like Airflow, without Docker.

Production runs Airflow as separate services over a Postgres metadata DB, and is driven through
the REST API; `airflow dags test` (the other integration tests) runs none of that. Here
`scripts/postgres.sh` starts Debian's PostgreSQL on loopback, and the real `airflow scheduler`
(LocalExecutor), `dag-processor`, `triggerer` and `api-server` run on it in a temporary
AIRFLOW_HOME. The test logs in with a password generated at run time (SimpleAuthManager's
`POST /auth/token`), triggers one weekly run and creates a backfill of the three weeks before it
through REST API v2, waits for all four, and checks that every task of every run succeeded and
that the DuckDB warehouse holds each cycle's rows once.

LocalExecutor: the same scheduler, DAG parsing, Execution API and task runner as production,
without a broker. The CeleryExecutor, with a training queue and its own worker, runs in
test_celery_stack.py; the compose file's wiring of it is checked in test_compose.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.airflow_stack import (
    RestClient,
    assert_api_requires_a_token,
    assert_each_cycle_once,
    free_port,
    postgres_server,
    running_stack,
    stack_env,
    task_log_tail,
    task_states,
    wait_for_runs,
)
from tests.helpers.airflow_stack import backfill as run_backfill
from tests.helpers.airflow_stack import runs as dag_runs
from tests.helpers.flywheel_env import bootstrapped, write_config

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

DAG_ID = "flywheel_weekly"
TRIGGERED = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday: the weekly run triggered through the API
BACKFILLED = [TRIGGERED - timedelta(weeks=k) for k in (3, 2, 1)]  # the three weeks before it
LAG_WEEKS = 3  # a run for Monday T reads [T - 21 d, T - 14 d)
RUN_TIMEOUT_S = 420  # per run; a cycle takes one to two minutes on 2 busy cores


def _cycle_id(logical_date: datetime) -> str:
    return f"{DAG_ID}-{logical_date:%Y%m%dT%H%M}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def flywheel(tmp_path_factory) -> dict[str, Any]:
    """A small config, the tiny model, and the four weeks of simulated traffic the runs read."""
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
    first_week = min(BACKFILLED) - timedelta(weeks=LAG_WEEKS)
    config, wh = bootstrapped(home, config_path, [first_week + timedelta(weeks=w) for w in range(len(BACKFILLED) + 1)])
    return {"root": root, "home": home, "config_path": config_path, "config": config, "wh": wh}


@pytest.fixture(scope="module")
def stack(postgres, flywheel) -> Iterator[dict[str, Any]]:
    """The stack up, the admin logged in through the API, the DAG parsed and unpaused."""
    root = flywheel["root"] / "airflow"
    root.mkdir()
    port = free_port()
    env = stack_env(root, flywheel["home"], flywheel["config_path"], postgres, port, "LocalExecutor")
    with running_stack(root, env, port, DAG_ID) as running:
        yield running


@pytest.fixture(scope="module")
def triggered(stack) -> dict[str, Any]:
    """The weekly run, triggered through the API as a user would, and its outcome."""
    started = time.monotonic()
    run = stack["api"].call("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": TRIGGERED.isoformat(), "conf": {}})
    got = wait_for_runs(stack, DAG_ID, [run["dag_run_id"]], RUN_TIMEOUT_S)
    return {"run": got[run["dag_run_id"]], "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def backfill(stack, triggered) -> dict[str, Any]:
    """A backfill of the three weeks before the triggered run, one run at a time, and its outcome."""
    return run_backfill(stack, DAG_ID, BACKFILLED, RUN_TIMEOUT_S * len(BACKFILLED))


def test_api_requires_a_token(stack):
    assert_api_requires_a_token(stack)


def test_triggered_weekly_run_succeeds_on_postgres(stack, triggered):
    api: RestClient = stack["api"]
    run = triggered["run"]
    states = task_states(api, DAG_ID, run["dag_run_id"])
    assert run["state"] == "success", (states, task_log_tail(stack["stack"], DAG_ID, run["dag_run_id"], states))
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
        states = task_states(api, DAG_ID, run_id)
        assert run["state"] == "success", (run_id, states, task_log_tail(stack["stack"], DAG_ID, run_id, states))
        assert set(states.values()) == {"success"}, (run_id, states)
    # Nothing else ran: the scheduler made no run of its own for the wall clock's week.
    assert len(dag_runs(api, DAG_ID)) == len(BACKFILLED) + 1


def test_warehouse_holds_each_cycle_once(flywheel, triggered, backfill):
    """Four cycles through the scheduler leave one row per key in every table, and each week's
    logs were decided by exactly one cycle."""
    from flywheel.warehouse.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse(flywheel["config"].duckdb_path)
    assert_each_cycle_once(wh, {_cycle_id(d) for d in [*BACKFILLED, TRIGGERED]}, min_logs=4 * 300)
