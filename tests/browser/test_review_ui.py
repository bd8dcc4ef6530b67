"""The review UI in a real browser: headless Debian Chromium, driven through ChromeDriver, against
a real `airflow api-server` serving the plugin.

The test logs in through Airflow's own login page, opens the review page, scores an item with
the keyboard, approves it, edits and approves a second one, and finds both reviews in the
warehouse. Without a login, every review endpoint refuses.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.helpers.airflow_server import api_server, free_port
from tests.helpers.chromedriver import ESCAPE, Browser
from tests.helpers.simulated_product import for_simulated_product

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T = datetime(2026, 3, 2, tzinfo=UTC)


def _answers(pairs):
    return ["I am not sure." for _ in pairs]


@pytest.fixture(scope="module")
def server(tmp_path_factory):

    from flywheel.config import load_config
    from flywheel.cycle import make_cycle
    from flywheel.cycle.extract import extract_window
    from flywheel.cycle.filtering import filter_candidates
    from flywheel.cycle.review import sample_for_review
    from flywheel.cycle.validate import validate_rows
    from flywheel.model import registry
    from flywheel.sim.localenv import airflow_env
    from flywheel.sim.traffic import simulate_traffic
    from flywheel.warehouse import warehouse_from_config

    subprocess.run([str(ROOT / "scripts" / "install_chromium.sh")], check=True)
    root = tmp_path_factory.mktemp("review-ui")
    data = yaml.safe_load((ROOT / "include/config/flywheel.yaml").read_text())
    for_simulated_product(data)
    data["review"].update({"model_signals": False, "min_items": 5})
    config_path = root / "flywheel.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path).model_copy(update={"home": root / "flywheel"})
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    registry.ensure_bootstrap_champion(wh, "stand-in")
    cycle = make_cycle("flywheel_weekly", data_interval_end=T, logical_date=T, config=config)
    wh.merge("production_logs", simulate_traffic(cycle.window.start, _answers, model_version="stand-in", n_requests=80,
                                                 seed=2, malformed_rate=0.0, pii_rate=0.2))  # fmt: skip
    for stage in (extract_window, validate_rows, filter_candidates, sample_for_review):
        stage(cycle, wh)
    assert wh.count("review_items") >= 5

    env = airflow_env(root / "airflow", root / "flywheel", config_path=config_path)
    with api_server(env, root, user="ann") as running:
        yield running | {"wh": wh, "root": root, "cycle_id": cycle.cycle_id}


def test_every_review_endpoint_refuses_without_a_login(server):
    import httpx

    from flywheel_airflow.review_ui import create_router

    base = server["base"] + "/flywheel"
    routes = [(m, r.path) for r in create_router().routes for m in r.methods]  # type: ignore[attr-defined]
    assert len(routes) == 4
    for method, path in routes:
        url = base + path.replace("{item_id}", "any")
        assert httpx.request(method, url, params={"cycle_id": "x"}).status_code == 401, (method, path)
        forged = httpx.request(method, url, params={"cycle_id": "x"}, cookies={"_token": "not.a.token"})
        assert forged.status_code in (401, 403), (method, path)


def test_a_reviewer_logs_in_scores_with_the_keyboard_and_the_review_is_stored(server, tmp_path):
    wh, base = server["wh"], server["base"]
    browser = Browser(free_port(), str(tmp_path / "chromium"))
    try:
        browser.log_in(base, "ann", server["password"], then=f"{base}/flywheel/review/")
        assert "Reviewer ann" in browser.text("body")
        first_prompt = browser.text("#prompt")
        assert "@example.com" not in browser.text("body"), "reviewers never see PII"
        browser.keys("5", "4", "5", "a")  # accuracy, helpfulness, safety, approve

        # The next item comes up; this one gets an edited answer.
        deadline = time.monotonic() + 20
        while browser.text("#prompt") == first_prompt and time.monotonic() < deadline:
            time.sleep(0.3)
        second_prompt = browser.text("#prompt")
        assert second_prompt != first_prompt
        browser.keys("e")
        browser.keys(*"THE RIGHT ANSWER", ESCAPE)
        browser.keys("3", "3", "5", "a")
        deadline = time.monotonic() + 20
        while wh.count("reviews") < 2 and time.monotonic() < deadline:
            time.sleep(0.3)
    finally:
        browser.quit()

    reviews = {r["item_id"]: r for r in wh.select("reviews").to_pylist()}
    items = {i["item_id"]: i for i in wh.select("review_items").to_pylist()}
    assert len(reviews) == 2
    by_prompt = {items[k]["prompt"].strip(): r for k, r in reviews.items()}
    first, second = by_prompt[first_prompt.strip()], by_prompt[second_prompt.strip()]
    assert (first["reviewer"], first["accuracy"], first["helpfulness"], first["safety"], first["verdict"]) == ("ann", 5, 4, 5, "approve")
    assert first["edited_response"] is None and first["seconds_spent"] > 0
    assert (second["accuracy"], second["helpfulness"], second["verdict"], second["edited_response"]) == (3, 3, "approve", "THE RIGHT ANSWER")
