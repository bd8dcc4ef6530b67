"""The dashboard as operators reach it: mounted by a real `airflow api-server`, behind Airflow's
own login (the simple auth manager, with a password the server generates)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import httpx

    from flywheel.localenv import airflow_env

    root = tmp_path_factory.mktemp("dashboard")
    port = _free_port()
    env = airflow_env(root / "airflow", root / "flywheel") | {
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "operator:viewer",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
    }
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    log = (root / "api-server.log").open("w")
    proc = subprocess.Popen([airflow, "api-server", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (root / "api-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "api-server did not start"
            time.sleep(1)
        passwords = json.loads((root / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())
        yield {"base": base, "password": passwords["operator"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_dashboard_needs_an_airflow_login(server):
    import httpx

    base = server["base"]
    for route in ("/flywheel/", "/flywheel/api/summary"):
        assert httpx.get(base + route).status_code == 401, route
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
    assert flywheel["external_views"][0]["href"] == "flywheel/"
