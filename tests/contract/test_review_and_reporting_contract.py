"""The SQL beyond the window read, on every backend: the review store (leases, reviews,
majority verdicts, agreement), the golden set built from reviews, the flagged windows of the
new-data check, the A/B table and the dashboard's data. Written once in DuckDB's dialect and
transpiled (`flywheel.warehouse.sql.prepare`), so each must run on Snowflake and BigQuery as well."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from flywheel.review import items as review
from flywheel.tables import rows_to_table
from tests.helpers.log_rows import T0

pytestmark = pytest.mark.contract
LEASE = timedelta(minutes=30)


def _items(wh, cycle: str = "c1", prefix: str = "i", logical_date=T0, request: str = "req") -> None:
    wh.merge("review_items", rows_to_table("review_items", [{
        "item_id": f"{prefix}{k}", "cycle_id": cycle, "logical_date": logical_date, "request_id": f"{request}{k}",
        "slice": "random",
        "priority": float(k), "reasons_json": "[]", "task_type": "refund" if k < 2 else "shipping",
        "user_action": "accepted", "prompt": f"question {k}?", "context": None, "response": f"answer {k}",
        "correction": None, "filter_kept": k == 0, "created_at": T0} for k in range(3)]))  # fmt: skip


def test_review_store_leases_verdicts_and_golden_set(wh, tmp_path):
    from flywheel.evaluation.golden import golden_from_reviews

    _items(wh)
    now = T0 + timedelta(hours=1)
    a = review.next_item(wh, "ann", reviewers_per_item=2, lease=LEASE, now=now)
    b = review.next_item(wh, "bob", reviewers_per_item=1, lease=LEASE, now=now)
    assert a["item_id"] == "i2" and b["item_id"] == "i1"  # highest priority first; ann's lease holds i2 from bob
    assert review.next_item(wh, "ann", reviewers_per_item=2, lease=LEASE, now=now)["item_id"] == "i2"  # still hers
    for who in ("ann", "bob"):
        for item in ("i0", "i1", "i2"):
            verdict = "reject" if (who, item) == ("bob", "i1") else "approve"
            review.submit_review(wh, item=item, reviewer=who, accuracy=4, helpfulness=4, safety=5, verdict=verdict,
                                 edited_response="edited 2" if item == "i2" else None, now=now)  # fmt: skip
    assert review.next_item(wh, "cid", reviewers_per_item=2, lease=LEASE, now=now) is None  # all done
    assert review.progress(wh, "c1", 2) == review.Progress(3, 3)
    found = review.verdicts(wh, "c1")
    assert {k: v.approved for k, v in found.items()} == {"req0": True, "req1": False, "req2": True}
    assert found["req2"].edited_response == "edited 2" and found["req2"].n_reviews == 2
    agreed = review.agreement(wh, ["c1"])
    assert agreed["items"] == 3 and agreed["pairwise"] == pytest.approx(2 / 3)
    # The golden set from reviews: approved and never trained on (the filters rejected it).
    out = tmp_path / "golden.jsonl"
    assert golden_from_reviews(wh, out, per_task_type=5) == {"shipping": 1}
    assert json.loads(out.read_text())["answer"] == "edited 2"

    # Pages (one lease and one write each; in this test, not its own, to spare the emulators a
    # fixture): `next_items` leases a page that others do not get; `submit_reviews` checks every
    # review before storing any.
    _items(wh, "c2", "p", T0 + timedelta(days=1), request="page-req")
    page = review.next_items(wh, "ann", reviewers_per_item=1, lease=LEASE, now=now, limit=2)
    assert [i["item_id"] for i in page] == ["p2", "p1"]  # highest priority first
    assert [i["item_id"] for i in review.next_items(wh, "bob", reviewers_per_item=1, lease=LEASE, now=now, limit=5)] == ["p0"]
    good = {"reviewer": "ann", "accuracy": 4, "helpfulness": 4, "safety": 5, "verdict": "approve"}
    with pytest.raises(review.ReviewError, match="no review item 'nope'"):
        review.submit_reviews(wh, [{**good, "item": "p2"}, {**good, "item": "nope"}], now=now)
    assert wh.count("reviews", {"cycle_id": "c2"}) == 0  # nothing of the refused page was stored
    stored = review.submit_reviews(wh, [{**good, "item": i["item_id"]} for i in page], now=now)
    assert {r["cycle_id"] for r in stored} == {"c2"} and wh.count("reviews", {"cycle_id": "c2"}) == 2
    assert review.next_items(wh, "ann", reviewers_per_item=1, lease=LEASE, now=now, limit=5) == []  # bob holds p0
    with pytest.raises(review.ReviewError, match="limit"):
        review.next_items(wh, "ann", reviewers_per_item=1, lease=LEASE, now=now, limit=0)


def test_flagged_windows_ab_table_and_dashboard(wh):
    from flywheel.cycle.dataset import flagged_windows
    from flywheel.evaluation import experiment
    from flywheel.evaluation.monitor import format_experiments_table
    from flywheel.model import registry
    from flywheel.ops.metrics import cycles_report
    from flywheel_airflow.dashboard import dashboard_data

    registry.ensure_bootstrap_champion(wh, "base")
    week = timedelta(days=7)
    wh.merge("new_data_comparisons", rows_to_table("new_data_comparisons", [{
        "cycle_id": f"m{k}", "logical_date": T0 + k * week, "challenger": f"m{k}", "twin": f"m{k}-twin",
        "newest_start": T0 + (k - 1) * week, "newest_end": T0 + k * week, "n_newest": 10, "challenger_accuracy": 0.2,
        "twin_accuracy": 0.3 if k else 0.1, "delta": -0.1 if k else 0.1, "delta_low": -0.2, "delta_high": 0.2,
        "verdict": "hurt" if k else "helped", "flagged": bool(k), "reason": "r", "compared_at": T0} for k in range(3)]))  # fmt: skip
    assert [f["cycle_id"] for f in flagged_windows(wh, T0 + 2 * week)] == ["m1"]  # strictly before, flagged only
    assert [f["cycle_id"] for f in flagged_windows(wh, T0 + 3 * week)] == ["m1", "m2"]
    wh.merge("cycles", rows_to_table("cycles", [{
        "cycle_id": "c1", "dag_id": "flywheel_weekly", "logical_date": T0, "window_start": T0, "window_end": T0,
        "rows_in_window": 4, "quarantined": 0, "kept": 2, "rejected": 2, "pass_rate": 0.5, "promoted": False,
        "champion_before": "base:base", "champion_after": "base:base", "challenger": "c1", "finished_at": T0}]))  # fmt: skip
    experiment.start_experiment(wh, cycle_id="c1", logical_date=T0, champion="base:base", challenger="c1",
                                config=experiment.ExperimentConfig())  # fmt: skip
    table = format_experiments_table(wh)
    assert "ab-c1" in table and "running" in table
    assert cycles_report(wh)[0]["ab_status"] == "running"
    data = dashboard_data(wh)
    assert [e["experiment_id"] for e in data["experiments"]] == ["ab-c1"]
    assert [r["cycle_id"] for r in data["new_data"]] == ["m0", "m1", "m2"] and data["champion"] == "base:base"
