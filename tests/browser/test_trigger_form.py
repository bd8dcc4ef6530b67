"""The trigger form in a real browser: headless Chromium against a real `airflow api-server`
with the project's DAGs serialised. An optional number left empty means "the config decides",
so the form must not mark it invalid (Airflow's number input marks an empty field invalid when
the schema gives it a top-level ``minimum`` of 1 or more); a value out of bounds is still refused
when the run is created."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.airflow_server import api_server, free_port
from tests.helpers.chromedriver import Browser

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Each number input of the form, with the text of its row's label and whether it shows invalid.
NUMBER_FIELDS_JS = """return Array.from(document.querySelectorAll('[data-scope=number-input][data-part=root]')).map(e => {
    const row = e.closest('[data-scope=field][data-part=root]') || e.parentElement.parentElement;
    return [row.innerText.split('\\n')[0].trim(),
            e.hasAttribute('data-invalid') || !!e.querySelector('[data-invalid],[aria-invalid=true]')];
});"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from flywheel.sim.localenv import airflow_env

    subprocess.run([str(ROOT / "scripts" / "install_chromium.sh")], check=True)
    root = tmp_path_factory.mktemp("trigger-form")
    env = airflow_env(root / "airflow", root / "flywheel")
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "dags", "reserialize"], env=env, check=True, capture_output=True)  # the UI reads these
    with api_server(env, root, user="ops", role="admin") as running:
        yield running


def test_empty_optional_numbers_are_not_marked_invalid(server, tmp_path):
    base = server["base"]
    browser = Browser(free_port(), str(tmp_path / "chromium"))
    try:
        browser.log_in(base, "ops", server["password"], then=f"{base}/dags/flywheel_weekly")
        deadline = time.monotonic() + 30
        while not browser.script("return Array.from(document.querySelectorAll('button')).some(b => b.innerText.trim() === 'Trigger')"):
            assert time.monotonic() < deadline, "no Trigger button on the DAG page"
            time.sleep(0.5)
        browser.script("Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Trigger').click()")
        deadline = time.monotonic() + 30
        while len(fields := browser.script(NUMBER_FIELDS_JS)) < 10:
            assert time.monotonic() < deadline, f"the form's number fields did not show: {fields}"
            time.sleep(0.5)
        (tmp_path / "trigger-form.png").write_bytes(browser.screenshot())
    finally:
        browser.quit()
    shown = dict(fields)
    assert {"window_days", "lora_r", "lora_alpha", "batch_size", "max_length", "lag_days"} <= set(shown), shown
    assert not [name for name, invalid in shown.items() if invalid], f"marked invalid while empty: {shown}"

    # ...while a set value out of bounds is refused before any run exists.
    token = httpx.post(f"{base}/auth/token", json={"username": "ops", "password": server["password"]}).json()["access_token"]
    refused = httpx.post(f"{base}/api/v2/dags/flywheel_weekly/dagRuns", headers={"Authorization": f"Bearer {token}"},
                         json={"logical_date": "2026-02-02T00:00:00Z", "conf": {"lora_r": 0}})  # fmt: skip
    assert refused.status_code == 400 and "lora_r" in refused.text, refused.text
    # ...and so is a conf key that is no param (Airflow alone would start the run on the config).
    for path, body in (("/api/v2/dags/flywheel_weekly/dagRuns", {"logical_date": "2026-02-02T00:00:00Z", "conf": {"epoch": 3}}),
                       ("/api/v2/backfills", {"dag_id": "flywheel_weekly", "from_date": "2026-02-02T00:00:00Z",
                                              "to_date": "2026-02-09T00:00:00Z", "dag_run_conf": {"epoch": 3}})):  # fmt: skip
        unknown = httpx.post(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, json=body)
        assert unknown.status_code == 400 and "unknown run params ['epoch']" in unknown.json()["detail"], unknown.text
    runs = httpx.get(f"{base}/api/v2/dags/flywheel_weekly/dagRuns", headers={"Authorization": f"Bearer {token}"}).json()
    assert runs["total_entries"] == 0, runs
