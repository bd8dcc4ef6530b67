"""The operator's path through the Airflow UI, walked in headless Chromium as a person would.

Airflow's services run as separate processes (api-server, scheduler, dag-processor, triggerer;
LocalExecutor on SQLite) over a flywheel with the tiny model, a bootstrapped champion and one
simulated week of traffic. Every step is taken in the browser, by clicking and typing:

1. log in through Airflow's login page; the weekly DAG is paused, as a new deployment's are;
2. unpause it with its toggle;
3. trigger it through the form with params (a window of the operator's choosing, more epochs);
4. watch the run defer at `wait_for_review` (the triggerer holds the wait; no worker slot);
5. follow the task's **Review** extra link (in its Details tab) and review every item with the keyboard, as a careful
   reviewer who knows each right answer (the simulator's oracle) would: approve, reject, or fix
   the answer and approve;
6. watch the run finish, with the reviews in its dataset;
7. open the dashboard and read the cycle's decision and its reason;
8. open Data Docs from the training-set gate's **Data Docs** link;
9. create a backfill from the Trigger dialog's Backfill tab (then cancelled: its weeks have no
   traffic, and this test is about the dialog).

A screenshot of each step is written to ``test-artefacts/operator-path/`` (``FLYWHEEL_TEST_ARTEFACTS``
moves it); the README shows two of them. The REST API only checks what the browser did.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.helpers.airflow_stack import free_port, running_stack, stack_env, task_instances, wait
from tests.helpers.chromedriver import ESCAPE, Browser
from tests.helpers.flywheel_env import bootstrapped, write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "flywheel_weekly"
WEEK = datetime(2026, 11, 2, tzinfo=UTC)  # the window the operator types into the form
BACKFILL = (datetime(2026, 11, 16, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC))  # two Mondays
DIALOG = "[data-scope=dialog][data-part=content]"


@pytest.fixture(scope="module")
def shots() -> Path:
    out = Path(os.environ.get("FLYWHEEL_TEST_ARTEFACTS", ROOT / "test-artefacts")) / "operator-path"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    return out


@pytest.fixture(scope="module")
def flywheel(tmp_path_factory) -> dict[str, Any]:
    """The tiny model, a bootstrapped champion and the week the operator will pick, served."""
    import subprocess

    subprocess.run([str(ROOT / "scripts" / "install_chromium.sh")], check=True)
    root = tmp_path_factory.mktemp("operator")
    port = free_port()

    def edit(cfg: dict[str, Any]) -> None:
        cfg["simulate"]["requests_per_week"] = 300
        cfg["evaluation"]["golden_set_size"] = 60
        cfg["tiny_model"].update({"pretrain_examples": 1200, "pretrain_epochs": 2})
        # One reviewer per item, and the sensor looks every few seconds: the walk, not the wait.
        cfg["review"].update({"poll_seconds": 3, "reviewers_per_item": 1, "required_share": 0.9})
        # The offline gate decides: an A/B test would wait for a week of live traffic.
        cfg["experiment"]["enabled"] = False
        # The links on the tasks' pages point at this stack's api-server.
        cfg["alerts"]["airflow_base_url"] = f"http://127.0.0.1:{port}"

    config_path = write_config(root, edit)
    home = root / "flywheel"
    truth: dict[str, str] = {}
    _, wh = bootstrapped(home, config_path, [WEEK], truth)
    return {"root": root, "home": home, "config_path": config_path, "wh": wh, "truth": truth, "port": port}


@pytest.fixture(scope="module")
def stack(flywheel) -> Any:
    root = flywheel["root"] / "airflow"
    root.mkdir()
    port = flywheel["port"]
    env = stack_env(root, flywheel["home"], flywheel["config_path"], f"sqlite:///{root}/airflow.db", port, "LocalExecutor")
    with running_stack(root, env, port, DAG_ID, unpause=False) as running:
        yield running


@pytest.fixture
def browser(stack, tmp_path):
    b = Browser(free_port(), str(tmp_path / "chromium"))
    try:
        yield b
    finally:
        b.quit()


def _review_with_the_keyboard(b: Browser, wh: Any, truth: dict[str, str], snap) -> dict[str, dict[str, Any]]:
    """Review every waiting item on the Review page as the oracle's careful reviewer would;
    return what was entered, by item id."""
    from flywheel.sim.reviewers import simulated_review

    entered: dict[str, dict[str, Any]] = {}
    items = {i["item_id"]: i for i in wh.select("review_items").to_pylist()}
    rng = random.Random(0)
    # The loaded page's item (its form posts to items/<id>), or "none" once nothing waits.
    shown = ("return document.readyState === 'complete' && (document.getElementById('review')?.getAttribute('action')"
             " || (document.getElementById('empty') ? 'none' : null))")  # fmt: skip
    while (action := b.wait_until(shown, "an item or the end of the queue", timeout=30)) != "none":
        item_id = action.removeprefix("items/")
        assert item_id not in entered, f"the Review page offered {item_id} again after it was reviewed"
        review = simulated_review(items[item_id], truth.get(items[item_id]["request_id"]), rng, noise=0.0)
        if not entered:
            snap("06-review-page")
        b.keys(str(review["accuracy"]), str(review["helpfulness"]), str(review["safety"]))
        if review["edited_response"]:
            b.keys("e")
            b.keys(*review["edited_response"], ESCAPE)
        b.keys("a" if review["verdict"] == "approve" else "r")
        entered[item_id] = review
        # The form posts and the page comes back with the next item (or none).
        b.wait_until(f"return document.getElementById('review')?.getAttribute('action') !== 'items/{item_id}'", "the next item", timeout=30)
    return entered


def test_an_operator_triggers_reviews_and_reads_the_decision_in_the_ui(flywheel, stack, browser, shots):
    api, svc, wh, b = stack["api"], stack["stack"], flywheel["wh"], browser
    base = svc.url

    def snap(name: str) -> None:
        (shots / f"{name}.png").write_bytes(b.screenshot())

    # 1. Log in; the DAG is paused, as every DAG of a new deployment is.
    b.log_in(base, "admin", stack["password"], then=f"{base}/dags/{DAG_ID}")
    toggle = "label[data-scope=switch][data-part=root]"
    b.wait_until(f"return document.querySelector('{toggle}')?.getAttribute('data-state') === 'unchecked'", "the paused toggle")
    assert api.call("GET", f"/dags/{DAG_ID}")["is_paused"] is True
    snap("01-logged-in-paused")

    # 2. Unpause it.
    b.click(toggle)
    b.wait_until(f"return document.querySelector('{toggle}').getAttribute('data-state') === 'checked'", "the unpaused toggle")
    wait("the DAG to be unpaused", lambda: api.call("GET", f"/dags/{DAG_ID}")["is_paused"] is False, 30, svc, every_s=1)
    snap("02-unpaused")

    # 3. Trigger it through the form, with a window of the operator's choosing and more epochs.
    b.click("button[aria-label='Trigger Dag']")
    b.type("input[name=element_window_start]", f"{WEEK:%m%d%Y}")  # the date picker takes the digits in order
    b.type("input[name=element_epochs]", "3")
    b.wait_until("return document.querySelector('input[name=element_window_start]').value", "the typed window start")
    snap("03-trigger-form")
    b.click_button("Trigger", within=DIALOG)
    run_id = wait("the triggered run", lambda: next(iter(api.call("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]), None), 60, svc,
                  every_s=1)["dag_run_id"]  # fmt: skip
    run = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")
    assert run["run_type"] == "manual" and run["conf"]["window_start"] == f"{WEEK:%Y-%m-%d}" and run["conf"]["epochs"] == 3, run
    run_url = f"{base}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"

    # 4. The run defers at the review: the triggerer holds the wait, the pool runs nothing.
    def deferred() -> bool:
        tis = task_instances(api, DAG_ID, quote(run_id, safe=""))
        failed = {k: t["state"] for k, t in tis.items() if t["state"] in ("failed", "upstream_failed")}
        assert not failed, failed
        return tis.get("wait_for_review", {}).get("state") == "deferred"

    wait("wait_for_review to defer", deferred, 420, svc)
    pool = api.call("GET", "/pools/default_pool")
    assert pool["running_slots"] == 0 and pool["deferred_slots"] == 1, pool
    cycle_id = wh.query("SELECT DISTINCT cycle_id FROM review_items").column("cycle_id").to_pylist()
    assert len(cycle_id) == 1 and wh.count("reviews") == 0
    (cycle_id,) = cycle_id
    n_items = wh.count("review_items", {"cycle_id": cycle_id})
    assert n_items >= 10, n_items
    b.get(run_url)
    b.wait_until("return document.body.innerText.includes('wait_for_review')", "the run's grid")
    snap("04-run-waits-for-review")

    # 5. The task's Review link opens the Review page; every item is reviewed with the keyboard.
    b.get(f"{run_url}/tasks/wait_for_review/details")
    review_url = b.wait_until("return Array.from(document.querySelectorAll('a')).find(a => a.innerText.trim() === 'Review')?.href",
                              "the Review extra link")  # fmt: skip
    assert review_url == f"{base}/flywheel/review/", review_url
    snap("05-review-link")
    time.sleep(6)  # nobody reviews yet: it stays deferred over two of the trigger's polls
    assert task_instances(api, DAG_ID, quote(run_id, safe=""))["wait_for_review"]["state"] == "deferred"
    b.get(review_url)
    entered = _review_with_the_keyboard(b, wh, flywheel["truth"], snap)
    assert len(entered) == n_items
    stored = {r["item_id"]: r for r in wh.select("reviews").to_pylist()}
    assert set(stored) == set(entered)
    for item_id, review in entered.items():
        got = {k: stored[item_id][k] for k in ("accuracy", "helpfulness", "safety", "verdict", "edited_response")}
        assert got == {k: review[k] for k in got}, (item_id, got, review)
        # The page times each review to a tenth of a second; a keyboard this fast may take less.
        assert stored[item_id]["reviewer"] == "admin" and stored[item_id]["seconds_spent"] >= 0
    assert sum(r["seconds_spent"] for r in stored.values()) > 0
    verdicts = {r["verdict"] for r in entered.values()}
    assert verdicts == {"approve", "reject"} and any(r["edited_response"] for r in entered.values()), entered

    # 6. The run goes on and finishes; the reviews are in its dataset.
    def finished() -> str | None:
        state = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}")["state"]
        return state if state in ("success", "failed") else None

    assert wait("the run to finish", finished, 600, svc) == "success", task_instances(api, DAG_ID, quote(run_id, safe=""))
    states = {k: t["state"] for k, t in task_instances(api, DAG_ID, quote(run_id, safe="")).items()}
    assert states["wait_for_review"] == states["train_lora"] == states["promote_if_better"] == "success", states
    approved = wh.query("SELECT COUNT(*) AS n FROM decisions WHERE cycle_id = $c AND rule = 'review' AND kept",
                        {"c": cycle_id}).column("n")[0].as_py()  # fmt: skip
    assert approved > 0 and wh.count("gold_examples", {"cycle_id": cycle_id, "source": "review"}) == approved
    (dataset,) = wh.select("datasets", {"cycle_id": cycle_id}).to_pylist()
    (cycle,) = wh.select("cycles", {"cycle_id": cycle_id}).to_pylist()
    assert dataset["n_train"] + dataset["n_val"] == cycle["kept"]
    assert states["calibrate_filters"] == states["record_cycle_metrics"] == "success", states
    assert wh.count("config_versions", {"cycle_id": cycle_id}) == 1
    b.get(run_url)
    b.wait_until("return document.body.innerText.includes('Success')", "the run's success")
    snap("07-run-finished")

    # 7. The dashboard says what was decided for the cycle, and why.
    (promotion,) = wh.select("promotions", {"cycle_id": cycle_id}).to_pylist()
    b.get(f"{base}/flywheel/")
    row = b.wait_until(f"return Array.from(document.querySelectorAll('tr')).map(r => r.innerText).find(t => t.startsWith('{cycle_id}'))",
                       "the cycle's row on the dashboard")  # fmt: skip
    assert promotion["reason"] in row, (row, promotion["reason"])
    assert ("promoted" if cycle["promoted"] else "kept champion") in row, row
    b.script(f"Array.from(document.querySelectorAll('tr')).find(r => r.innerText.startsWith('{cycle_id}')).scrollIntoView({{block: 'center'}})")
    snap("08-dashboard-decision")

    # 8. Data Docs, from the training-set gate's link.
    b.get(f"{run_url}/tasks/gate_training_set/details")
    docs_url = b.wait_until("return Array.from(document.querySelectorAll('a')).find(a => a.innerText.trim() === 'Data Docs')?.href",
                            "the Data Docs extra link")  # fmt: skip
    b.get(docs_url)
    b.wait_until("return document.body.innerText.includes('Expectation Validation Result')", "the gate's Data Docs page")
    assert "/flywheel/data-docs/" in b.url and "training_set" in b.text("body") and "Succeeded" in b.text("body")
    snap("09-data-docs")

    # 9. A backfill from the Trigger dialog's Backfill tab.
    b.get(f"{base}/dags/{DAG_ID}")
    b.click("button[aria-label='Trigger Dag']")
    b.wait_until("return !!document.querySelector('input[value=backfill]')", "the Backfill choice")
    b.script("document.querySelector('input[value=backfill]').click()")
    for name, when in zip(("from_date", "to_date"), BACKFILL, strict=True):
        b.type(f"input[name={name}]", f"{when:%m%d%Y}1200A")  # month, day, year, 12:00 AM
    b.wait_until(f"return document.querySelector('{DIALOG}').innerText.includes('2 runs will be triggered')", "the backfill's plan")
    snap("10-backfill-dialog")
    b.click_button("Run Backfill", within=DIALOG)
    backfills = wait("the backfill", lambda: api.call("GET", "/backfills", params={"dag_id": DAG_ID})["backfills"], 60, svc, every_s=1)
    try:
        (backfill,) = backfills
        assert (backfill["from_date"], backfill["to_date"]) == tuple(f"{t:%Y-%m-%dT%H:%M:%SZ}" for t in BACKFILL), backfill
        b.wait_until("return document.body.innerText.includes('Backfill in progress')", "the backfill banner")
        snap("11-backfill-running")
        made = wait("the backfill's runs", lambda: [r for r in api.call("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
                                                     if r["run_type"] == "backfill"], 60, svc, every_s=1)  # fmt: skip
        assert {r["logical_date"][:10] for r in made} <= {f"{t:%Y-%m-%d}" for t in BACKFILL}
    finally:
        for bf in backfills:
            api.call("PUT", f"/backfills/{bf['id']}/cancel")
    assert len(list(shots.glob("*.png"))) == 11
