"""The dashboard as operators reach it: mounted by a real `airflow api-server`, behind Airflow's
own login (the simple auth manager, with a password the server generates)."""

from __future__ import annotations

import pytest

from tests.helpers.airflow_server import api_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from flywheel.sim.localenv import airflow_env

    root = tmp_path_factory.mktemp("dashboard")
    with api_server(airflow_env(root / "airflow", root / "flywheel"), root, user="operator") as running:
        yield running


def test_dashboard_needs_an_airflow_login(server):
    import httpx

    base = server["base"]
    for route in ("/flywheel/", "/flywheel/api/summary"):
        assert httpx.get(base + route).status_code == 401, route
    # A browser is sent to Airflow's login page, and back to the dashboard after it.
    browser = httpx.get(base + "/flywheel/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert browser.status_code == 303 and "/login" in browser.headers["location"], browser.headers
    assert "next=http" in browser.headers["location"] and "%2Fflywheel%2F" in browser.headers["location"]
    bad = httpx.post(f"{base}/auth/token", json={"username": "operator", "password": "wrong"})
    assert bad.status_code in (401, 403)
    token = httpx.post(f"{base}/auth/token", json={"username": "operator", "password": server["password"]}).json()["access_token"]
    page = httpx.get(f"{base}/flywheel/", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200 and "<h1>Flywheel</h1>" in page.text
    assert "No cycle recorded yet." in page.text  # a fresh warehouse
    # The UI's session cookie works the same way (what the browser sends inside the Airflow UI).
    assert httpx.get(f"{base}/flywheel/api/summary", cookies={"_token": token}).json()["cycles"] == []
    # The link in the UI's navigation.
    plugins = httpx.get(f"{base}/api/v2/plugins", headers={"Authorization": f"Bearer {token}"}).json()["plugins"]
    (flywheel,) = [p for p in plugins if p["name"] == "flywheel"]
    assert [v["href"] for v in flywheel["external_views"]] == ["flywheel/", "flywheel/review/"]
