"""The API server's guard on run creation: a cycle DAG's trigger or backfill whose conf names no
param is refused with the names before any run exists; everything else reaches Airflow as sent."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from flywheel_airflow.conf_guard import RunConfGuard


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    try:
        got = json.loads(body or b"null")
    except ValueError:
        got = body.decode()
    return JSONResponse({"path": request.url.path, "body": got})


@pytest.fixture
def client() -> TestClient:
    app = Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST", "PATCH"])])
    app.add_middleware(RunConfGuard)
    return TestClient(app)


def test_an_unknown_param_of_a_cycle_is_refused_with_the_known_ones(client):
    resp = client.post("/api/v2/dags/flywheel_weekly/dagRuns", json={"logical_date": None, "conf": {"epoch": 3, "dry_run": True}})
    assert resp.status_code == 400
    detail = resp.json()["detail"]
    assert "unknown run params ['epoch'] for flywheel_weekly" in detail and "'epochs'" in detail


def test_a_bootstrap_only_param_is_refused_on_the_weekly_dag_but_not_on_the_bootstrap(client):
    conf = {"conf": {"labels_path": "/data/labels.jsonl"}}
    assert client.post("/api/v2/dags/flywheel_weekly/dagRuns", json=conf).status_code == 400
    assert client.post("/api/v2/dags/flywheel_bootstrap/dagRuns", json=conf).json()["body"] == conf


def test_backfills_and_their_dry_runs_are_guarded(client):
    body = {"dag_id": "flywheel_monthly", "from_date": "2026-01-05", "to_date": "2026-02-02", "dag_run_conf": {"foo": 1}}
    for path in ("/api/v2/backfills", "/api/v2/backfills/dry_run"):
        resp = client.post(path, json=body)
        assert resp.status_code == 400 and "unknown run params ['foo'] for flywheel_monthly" in resp.json()["detail"], path


def test_everything_else_passes_as_sent(client):
    known = {"conf": {"epochs": 3, "window_start": "2026-11-02", "lag_days": None}}
    assert client.post("/api/v2/dags/flywheel_weekly/dagRuns", json=known).json() == {
        "path": "/api/v2/dags/flywheel_weekly/dagRuns", "body": known}  # fmt: skip
    other = {"conf": {"anything": 1}}
    assert client.post("/api/v2/dags/someone_elses_dag/dagRuns", json=other).json()["body"] == other
    assert client.post("/api/v2/dags/flywheel_weekly/dagRuns/run1/clear", json={"foo": 1}).status_code == 200
    assert client.patch("/api/v2/dags/flywheel_weekly", json={"is_paused": False}).status_code == 200
    assert client.post("/api/v2/dags/flywheel_weekly/dagRuns", content=b"not json").json()["body"] == "not json"
    assert client.post("/flywheel/review/items/x", data={"verdict": "approve"}).json()["body"] == "verdict=approve"
