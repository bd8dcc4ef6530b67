"""Cycle reports (Markdown + PNG plots) and the dashboard plugin app, on cycles recorded by the
real stages (no model), behind Airflow's real token check."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.config import FlywheelConfig
from flywheel.cycle import make_cycle
from flywheel.cycle.dataset import build_dataset
from flywheel.cycle.extract import extract_window
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.record import record_cycle
from flywheel.cycle.validate import validate_rows
from flywheel.model import registry
from flywheel.ops.report import (
    format_velocity_table,
    velocity_rows,
    wilson_interval,
    write_cycle_report,
)
from flywheel.sim.traffic import simulate_traffic
from flywheel.tables import rows_to_table
from tests.helpers.simulated_product import SIMULATED_PRODUCT

PNG = b"\x89PNG\r\n\x1a\n"
T1 = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture
def recorded(tmp_path, wh, answer_fns):
    """Two weekly cycles recorded by the stages, one evaluation, a failed gate and an alert."""
    config = FlywheelConfig(home=tmp_path).with_overrides({**SIMULATED_PRODUCT, "training.min_examples": 5, "filters.keep_fraction": 1.0})
    registry.ensure_bootstrap_champion(wh, "some-base")
    cycles = []
    for k in range(2):
        t = T1 + timedelta(weeks=k)
        c = make_cycle("flywheel_weekly", data_interval_end=t, logical_date=t, config=config)
        wh.merge("production_logs", simulate_traffic(c.window.start, answer_fns["half"], model_version="base:x",
                                                     n_requests=60, seed=k, malformed_rate=0.02))  # fmt: skip
        for stage in (extract_window, validate_rows, filter_candidates, build_dataset):
            stage(c, wh)
        cycles.append(c)
    last = cycles[-1]
    per_task = {"arithmetic": {"n": 20, "correct": 5, "accuracy": 0.25}, "reverse": {"n": 10, "correct": 0, "accuracy": 0.0}}
    wh.merge("evaluations", rows_to_table("evaluations", [
        {"cycle_id": last.cycle_id, "model_version": "base:some-base", "role": "champion", "accuracy": 5 / 30, "n_items": 30,
         "n_correct": 5, "per_task_json": json.dumps(per_task), "golden_hash": "h", "evaluated_at": T1},
    ]))  # fmt: skip
    wh.merge("gate_results", rows_to_table("gate_results", [
        {"cycle_id": "flywheel_weekly-broken", "gate": "raw_window", "success": False, "n_expectations": 9, "n_failed": 1,
         "failed_json": "[]", "docs_url": "file:///docs/index.html", "evaluated_at": T1},
    ]))  # fmt: skip
    wh.merge("alerts", rows_to_table("alerts", [
        {"alert_id": "a1", "dag_id": "flywheel_weekly", "task_id": "gate_raw_window", "run_id": "r", "logical_date": T1,
         "kind": "gate_failed", "message": "raw window gate failed: <script>alert(1)</script>", "link": None, "raised_at": T1},
    ]))  # fmt: skip
    for c in cycles:
        record_cycle(c, wh)
    return cycles


def test_wilson_interval():
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_velocity_table_lists_every_cycle_with_its_phase(recorded, wh):
    rows = velocity_rows(wh)
    assert [r.cycle_id for r in rows] == [c.cycle_id for c in recorded]
    assert all(r.phase == "cold_start" for r in rows)
    table = format_velocity_table(rows)
    for c in recorded:
        assert c.cycle_id in table
    assert "cold_start" in table


def test_cycle_report_writes_markdown_and_plots(recorded, wh, tmp_path):
    last = recorded[-1]
    path = write_cycle_report(wh, last.cycle_id, tmp_path / "report", broad=True)
    text = path.read_text()
    assert f"# Flywheel report: {last.cycle_id}" in text and "**cold_start**" in text
    for c in recorded:  # the velocity table covers every cycle up to this one
        assert c.cycle_id in text
    assert "| `base:some-base` | champion | arithmetic | 20 | 0.250 | 0.112 - 0.469 |" in text
    assert "(base model)" in text  # the champion's lineage
    for name in ("velocity.png", "pass_rates.png", "task_slices.png", "flywheel_curve.png"):
        assert (path.parent / name).read_bytes().startswith(PNG), name
        assert f"({name})" in text
    assert "## Learning curve" in text
    # The first cycle's report only covers what was known then; it has its curve so far.
    first = write_cycle_report(wh, recorded[0].cycle_id, tmp_path / "first").read_text()
    assert recorded[1].cycle_id not in first and not (tmp_path / "first" / "task_slices.png").exists()
    assert (tmp_path / "first" / "flywheel_curve.png").read_bytes().startswith(PNG)


@pytest.fixture
def client_and_token():
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    from flywheel_airflow.dashboard import create_app

    token = create_auth_manager().generate_jwt(SimpleAuthManagerUser(username="operator", role="viewer"))
    return TestClient(create_app()), token


def test_dashboard_refuses_anonymous_and_forged_requests(client_and_token):
    client, token = client_and_token
    for route in ("/", "/api/summary", "/curve.png"):
        assert client.get(route).status_code == 401, route
        assert client.get(route, cookies={"_token": token[:-4] + "AAAA"}).status_code == 403, route
        assert client.get(route, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403, route


def test_dashboard_shows_velocity_champion_failures_and_alerts(recorded, wh, client_and_token, monkeypatch, tmp_path):
    client, token = client_and_token
    # The API server finds the warehouse the fixture recorded into through the config.
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(_config_pointing_at(tmp_path, wh.path)))
    page = client.get("/", cookies={"_token": token})
    assert page.status_code == 200
    body = page.text
    assert body.count("data:image/png;base64,") == 2
    assert 'src="curve.png"' in body  # the learning curve, drawn by its own route
    curve = client.get("/curve.png", cookies={"_token": token})
    assert curve.status_code == 200 and curve.headers["content-type"] == "image/png"
    assert curve.content.startswith(PNG) and curve.headers["cache-control"] == "no-store"
    for c in recorded:
        assert c.cycle_id in body
    assert "Champion: <b>base:some-base</b>" in body
    assert "flywheel_weekly-broken" in body and "No A/B test running." in body
    assert "No twin trained yet" in body
    assert "No A/B test has ended." in body and "no item waits for review" in body
    # Why each challenger is or is not champion: no challenger trained in these cycles.
    assert {c["decision"] for c in client.get("/api/summary", cookies={"_token": token}).json()["cycles"]} == {"no challenger"}
    assert "&lt;script&gt;" in body and "<script>" not in body  # messages are escaped
    summary = client.get("/api/summary", headers={"Authorization": f"Bearer {token}"}).json()
    assert [c["cycle_id"] for c in summary["cycles"]] == [c.cycle_id for c in recorded]
    assert summary["champion"] == "base:some-base" and summary["gate_failures"][0]["gate"] == "raw_window"
    # A new-data check shows up once a cycle has one.
    from datetime import UTC, datetime

    from flywheel.tables import rows_to_table

    t = datetime(2026, 3, 2, tzinfo=UTC)
    wh.merge("new_data_comparisons", rows_to_table("new_data_comparisons", [{
        "cycle_id": "flywheel_monthly-x", "logical_date": t, "challenger": "flywheel_monthly-x", "twin": "flywheel_monthly-x-twin",
        "newest_start": t, "newest_end": t, "n_newest": 42, "challenger_accuracy": 0.3, "twin_accuracy": 0.35, "delta": -0.05,
        "delta_low": -0.1, "delta_high": 0.0, "verdict": "hurt", "flagged": True, "reason": "r", "compared_at": t}]))  # fmt: skip
    (row,) = client.get("/api/summary", headers={"Authorization": f"Bearer {token}"}).json()["new_data"]
    assert row["cycle_id"] == "flywheel_monthly-x" and row["flagged"] is True and row["verdict"] == "hurt"
    assert "flywheel_monthly-x" in client.get("/", cookies={"_token": token}).text
    # A challenger rejected offline shows the gate's reason; one whose A/B test ended, the test's.
    first, second = recorded
    registry.record_decision(wh, cycle_id=first.cycle_id, logical_date=first.logical_date, champion_before="base:some-base",
                             challenger=first.cycle_id, promoted=False, reason="uppercase slice fell 0.150 (> 0.05)")  # fmt: skip
    wh.merge("experiments", rows_to_table("experiments", [{"experiment_id": "ab-x", "cycle_id": second.cycle_id,
             "champion": "base:some-base", "challenger": second.cycle_id, "traffic_share": 0.0, "status": "rolled_back",
             "started_at": t, "updated_at": t, "reason": "challenger worse: p=0.01"}]))  # fmt: skip
    summary = client.get("/api/summary", cookies={"_token": token}).json()
    why = {c["cycle_id"]: (c["decision"], c["why"]) for c in summary["cycles"]}
    assert why[first.cycle_id] == ("no challenger", "uppercase slice fell 0.150 (> 0.05)")
    assert why[second.cycle_id] == ("A/B rolled back", "challenger worse: p=0.01")
    assert [e["experiment_id"] for e in summary["ab_tests"]] == ["ab-x"]
    page = client.get("/", cookies={"_token": token}).text
    assert "uppercase slice fell 0.150" in page and "Past A/B tests" in page and "challenger worse: p=0.01" in page
    # Items waiting for review are counted per cycle, with a link to the review UI; a reviewed one is not.
    item = {"cycle_id": second.cycle_id, "logical_date": t, "request_id": "r", "slice": "priority", "priority": 1.0,
            "reasons_json": "[]", "task_type": "reverse", "user_action": "accepted", "prompt": "p", "response": "a",
            "filter_kept": True, "filter_scores_json": "{}", "created_at": t}  # fmt: skip
    wh.merge("review_items", rows_to_table("review_items", [item | {"item_id": f"i{k}"} for k in range(3)]))
    wh.merge("reviews", rows_to_table("reviews", [{"item_id": "i0", "reviewer": "ann", "cycle_id": second.cycle_id,
             "accuracy": 5, "helpfulness": 5, "safety": 5, "verdict": "approve", "seconds_spent": 3.0}]))  # fmt: skip
    summary = client.get("/api/summary", cookies={"_token": token}).json()
    assert summary["review_waiting"] == [{"cycle_id": second.cycle_id, "waiting": 2}]
    page = client.get("/", cookies={"_token": token}).text
    assert "<b>2</b> items wait" in page and 'href="review/"' in page


def _config_pointing_at(tmp_path, duckdb_path):
    import yaml

    from flywheel.config import DEFAULT_CONFIG_PATH

    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["warehouse"]["duckdb_path"] = str(duckdb_path)
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plugin_registers_the_dashboard_app_and_its_link():
    from flywheel_plugin import FlywheelPlugin

    (app,) = FlywheelPlugin.fastapi_apps
    assert app["url_prefix"] == "/flywheel"
    assert [v["href"] for v in FlywheelPlugin.external_views] == ["flywheel/", "flywheel/review/"]
    assert {r.path for r in app["app"].routes} >= {"/", "/api/summary", "/curve.png", "/review/", "/review/items/{item_id}"}


def test_quarantine_pages_and_the_gates_data_docs(wh, client_and_token, monkeypatch, tmp_path):
    """The pages the gate and validation tasks' extra links open: a cycle's quarantined rows
    with their reasons (escaped), every cycle's counts, and the gate's Data Docs page, served
    from the Data Docs site behind Airflow's login, and nothing outside it."""
    from datetime import UTC, datetime

    from flywheel.config import load_config
    from flywheel.tables import rows_to_table

    client, token = client_and_token
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(_config_pointing_at(tmp_path, wh.path)))
    for route in ("/quarantine", "/api/quarantine", "/gates/c/raw_window", "/data-docs/index.html"):
        assert client.get(route).status_code == 401, route
    t = datetime(2026, 3, 2, tzinfo=UTC)
    rows = [{"cycle_id": "flywheel_weekly-x", "row_number": n, "request_id": f"r{n}", "field": "user_action",
             "rule": "allowed_values", "reason": f"row {n}: user_action '<script>' is not allowed", "raw_json": "{}",
             "quarantined_at": t} for n in range(3)]  # fmt: skip
    rows.append(rows[0] | {"field": "quality_score", "rule": "range", "reason": "row 0: quality_score 1.7 is outside [0, 1]"})
    rows.append(rows[0] | {"cycle_id": "ingest:/logs/a.jsonl", "row_number": 7, "field": "line", "rule": "not_a_record"})
    wh.merge("quarantine", rows_to_table("quarantine", rows))
    auth = {"cookies": {"_token": token}}
    listing = client.get("/api/quarantine", **auth).json()["cycles"]
    assert {(c["cycle_id"], c["rows_quarantined"], c["reasons"]) for c in listing} == {
        ("flywheel_weekly-x", 3, 4), ("ingest:/logs/a.jsonl", 1, 1)}  # fmt: skip
    assert 'href="?cycle_id=ingest%3A%2Flogs%2Fa.jsonl"' in client.get("/quarantine", **auth).text
    one = client.get("/api/quarantine", params={"cycle_id": "flywheel_weekly-x"}, **auth).json()
    assert one["rows_quarantined"] == 3 and one["by_rule"][0] == {"field": "user_action", "rule": "allowed_values", "n": 3}
    page = client.get("/quarantine", params={"cycle_id": "flywheel_weekly-x"}, **auth).text
    assert "<b>3</b> rows quarantined" in page and "quality_score 1.7 is outside" in page
    assert "&#x27;&lt;script&gt;&#x27;" in page and "<script>" not in page

    docs = load_config().artefacts_root / "data_docs"
    page_file = docs / "validations" / "raw_window" / "run.html"
    page_file.parent.mkdir(parents=True, exist_ok=True)
    page_file.write_text("<html>the gate's validation result</html>")
    (tmp_path / "secret.txt").write_text("not for the browser")
    wh.merge("gate_results", rows_to_table("gate_results", [{"cycle_id": "flywheel_weekly-x", "gate": "raw_window",
             "success": False, "n_expectations": 3, "n_failed": 1, "failed_json": "[]", "docs_url": page_file.as_uri(),
             "evaluated_at": t}]))  # fmt: skip
    moved = client.get("/gates/flywheel_weekly-x/raw_window", follow_redirects=False, **auth)
    assert moved.status_code == 307 and moved.headers["location"].endswith("/data-docs/validations/raw_window/run.html")
    # the redirect, followed with the same login (a per-request cookie does not follow redirects)
    assert client.get(moved.headers["location"], **auth).text == "<html>the gate's validation result</html>"
    assert client.get("/gates/flywheel_weekly-x/training_set", **auth).status_code == 404
    assert client.get("/data-docs/%2E%2E/%2E%2E/secret.txt", **auth).status_code == 404
    assert client.get("/data-docs/nope.html", **auth).status_code == 404


def test_each_cycle_links_its_report_and_its_gates_data_docs(recorded, wh, client_and_token, monkeypatch, tmp_path):
    """The dashboard's cycle table links each cycle's report (rendered from its Markdown, plots
    beside it, behind the login) and the Data Docs of the gates it ran."""
    from flywheel.config import load_config
    from flywheel.tables import rows_to_table

    client, token = client_and_token
    auth = {"cookies": {"_token": token}}
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(_config_pointing_at(tmp_path, wh.path)))
    cid = recorded[0].cycle_id
    wh.merge("gate_results", rows_to_table("gate_results", [{"cycle_id": cid, "gate": "training_set", "success": True,
             "n_expectations": 7, "n_failed": 0, "failed_json": "[]", "docs_url": None, "evaluated_at": T1}]))  # fmt: skip
    row = next(r for r in client.get("/", **auth).text.split("<tr>") if r.startswith(f"<td>{cid}</td>"))
    assert f'<a href="reports/{cid}/">report</a>' in row and f'<a href="gates/{cid}/training_set">training-set data docs</a>' in row
    assert "raw data docs" not in row  # no raw-window gate result for this cycle

    for route in (f"/reports/{cid}/", f"/reports/{cid}/velocity.png"):
        assert client.get(route).status_code == 401, route
    assert client.get(f"/reports/{cid}/", **auth).status_code == 404  # not written yet
    folder = load_config().artefacts_root / "reports" / cid
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("# Cycle report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n<script>x</script>\n\n![velocity](velocity.png)\n")
    (folder / "velocity.png").write_bytes(PNG + b"rest")
    (tmp_path / "secret.txt").write_text("not for the browser")
    page = client.get(f"/reports/{cid}/", **auth).text
    assert "<h1>Cycle report</h1>" in page and "<td>1</td>" in page and '<img src="velocity.png" alt="velocity"' in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert client.get(f"/reports/{cid}/velocity.png", **auth).content == PNG + b"rest"
    assert client.get(f"/reports/{cid}/%2E%2E%2F%2E%2E%2Fsecret.txt", **auth).status_code == 404
    assert client.get("/reports/%2E%2E/secret.txt", **auth).status_code == 404
