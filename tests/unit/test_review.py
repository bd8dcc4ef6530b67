"""Human review on the real stages: the sample, the store, verdicts and what they change in the
dataset, calibration of the filters, and the simulated reviewer."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from flywheel.config import CalibrationConfig, FiltersConfig, FlywheelConfig
from flywheel.cycle import make_cycle
from flywheel.cycle.dataset import build_dataset
from flywheel.cycle.extract import extract_window
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.record import record_cycle
from flywheel.cycle.review import sample_for_review
from flywheel.cycle.validate import validate_rows
from flywheel.data.dataset import load_chat_dataset
from flywheel.filters import RULES
from flywheel.model import registry
from flywheel.records import TrainingCandidate
from flywheel.review import calibrate
from flywheel.review import items as review
from flywheel.review.prioritize import Priority, disagreement, prioritise
from flywheel.sim.reviewers import run_simulated_reviewers
from flywheel.sim.traffic import golden_set, simulate_traffic
from flywheel.tables import rows_to_table
from tests.helpers.simulated_product import SIMULATED_PRODUCT

T = datetime(2026, 3, 2, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 9, tzinfo=UTC)
LEASE = timedelta(minutes=30)


def cand(rid: str, task: str = "uppercase", action: str = "accepted", q: float = 0.9) -> TrainingCandidate:
    return TrainingCandidate(rid, T, "u", "prompt words " * 5, "ANSWER", action, None, task, q)


def test_allocate_is_proportional_and_sees_every_stratum():
    got = review.allocate({("a", "x"): 80, ("b", "x"): 15, ("c", "x"): 5}, 10)
    assert sum(got.values()) == 10 and got[("a", "x")] >= got[("b", "x")] >= got[("c", "x")] == 1
    assert review.allocate({("a", "x"): 50, ("b", "x"): 50}, 10) == {("a", "x"): 5, ("b", "x"): 5}
    assert review.allocate({("a", "x"): 2, ("b", "x"): 1}, 10) == {("a", "x"): 2, ("b", "x"): 1}  # capped by sizes
    assert sum(review.allocate({(str(i), "x"): 3 for i in range(5)}, 4).values()) == 4
    assert review.allocate({("a", "x"): 5}, 0) == {("a", "x"): 0}


def test_sample_has_a_uniform_random_slice_and_a_stratified_priority_slice():
    everyone = [cand(f"r{i:03d}", task="rare" if i % 20 == 0 else "common", action="corrected" if i % 3 == 0 else "accepted")
                for i in range(200)]  # fmt: skip
    kept = everyone[:120]
    prios = {c.request_id: Priority(c.request_id, score=float(int(c.request_id[1:]) % 7)) for c in kept}
    s = review.draw_sample(everyone, kept, prios, budget=20, random_share=0.3, seed="cycle-1")
    assert len(s.random) == 6 and len(s.priority) == 14
    assert not {c.request_id for c in s.random} & {c.request_id for c, _ in s.priority}
    assert {c.request_id for c, _ in s.priority} <= {c.request_id for c in kept}
    # every (task type, action) stratum of the kept candidates is represented
    assert {(c.task_type, c.user_action) for c, _ in s.priority} == {(c.task_type, c.user_action) for c in kept}
    # within a stratum, the highest priorities are picked
    common = [p.score for c, p in s.priority if (c.task_type, c.user_action) == ("common", "accepted")]
    others = [prios[c.request_id].score for c in kept if (c.task_type, c.user_action) == ("common", "accepted")]
    assert sorted(common, reverse=True) == sorted(others, reverse=True)[: len(common)]
    # the same cycle draws the same sample
    again = review.draw_sample(everyone, kept, prios, budget=20, random_share=0.3, seed="cycle-1")
    assert [c.request_id for c in again.random] == [c.request_id for c in s.random]
    # the random slice reaches candidates the filters rejected, over many draws
    reached = {c.request_id for k in range(30) for c in review.draw_sample(everyone, kept, prios, budget=20,
                                                                             random_share=0.3, seed=str(k)).random}  # fmt: skip
    assert reached - {c.request_id for c in kept}


def test_priorities_name_their_reasons():
    c = cand("a", task="letter_count", action="corrected")
    (p,) = prioritise([c], weights={"correction": 1, "rare_task": 1, "disagreement": 1}, filter_scores={"a": {"quality_score": 0.62}},
                      thresholds={"quality_score": 0.6}, window_mix=Counter({"letter_count": 2, "uppercase": 98}))  # fmt: skip
    assert p.signals["correction"] == 1.0 and p.signals["rare_task"] == pytest.approx(0.98)
    assert p.signals["disagreement"] == pytest.approx(1 - 0.02 / 0.15)
    assert "user correction" in p.reasons and any("rare task type letter_count" in r for r in p.reasons)
    assert any("quality_score 0.62 near its threshold 0.6" in r for r in p.reasons)
    score, why = disagreement(cand("b", action="copied", q=0.2), {}, {})
    assert score == 1.0 and "user copied an answer scored 0.20" in why[0]


@pytest.fixture
def reviewed_world(tmp_path, wh, answer_fns):
    """A weekly cycle's data stages on simulated traffic with PII, then its review sample."""
    config = FlywheelConfig(home=tmp_path).with_overrides({
        **SIMULATED_PRODUCT, "training.min_examples": 5, "filters.keep_fraction": 1.0, "review.sample_rate": 0.2, "review.model_signals": False,
    })  # fmt: skip
    cycle = make_cycle("flywheel_weekly", data_interval_end=T, logical_date=T, config=config)
    truth: dict[str, str] = {}
    wh.merge("production_logs", simulate_traffic(cycle.window.start, answer_fns["half"], model_version="base:x", n_requests=150,
                                                 seed=4, malformed_rate=0.0, pii_rate=0.3, truth=truth))  # fmt: skip
    registry.ensure_bootstrap_champion(wh, "base")
    for stage in (extract_window, validate_rows, filter_candidates):
        stage(cycle, wh)
    out = sample_for_review(cycle, wh)
    return {"cycle": cycle, "truth": truth, "sample": out}


def test_review_items_are_the_sample_redacted_with_their_reasons(reviewed_world, wh):
    cycle, out = reviewed_world["cycle"], reviewed_world["sample"]
    valid = pq.read_metadata(cycle.file("valid.parquet")).num_rows
    assert out["items"] == round(0.2 * valid) and out["random"] == round(out["items"] * 0.3)
    items = wh.select("review_items", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert len(items) == out["items"]
    for i in items:
        text = " ".join(filter(None, (i["prompt"], i["response"], i["correction"], i["context"])))
        assert "@example.com" not in text and "555-01" not in text, "reviewers never see PII"
        assert i["prompt"], "rows the window query withheld are read back for review"
        assert json.loads(i["reasons_json"])
    assert {i["slice"] for i in items} == {"random", "priority"}
    assert all(i["filter_kept"] for i in items if i["slice"] == "priority")
    # Rerunning the stage draws the same items (reviews stay attached to them).
    sample_for_review(cycle, wh)
    assert sorted(i["item_id"] for i in wh.select("review_items").to_pylist()) == sorted(i["item_id"] for i in items)


def test_assignments_are_leases_and_reviews_are_validated(reviewed_world, wh):
    a = review.next_item(wh, "ann", reviewers_per_item=1, lease=LEASE, now=NOW)
    b = review.next_item(wh, "bob", reviewers_per_item=1, lease=LEASE, now=NOW)
    assert a and b and a["item_id"] != b["item_id"]
    assert review.next_item(wh, "ann", reviewers_per_item=1, lease=LEASE, now=NOW)["item_id"] == a["item_id"]  # still hers
    after_lease = review.next_item(wh, "bob", reviewers_per_item=1, lease=LEASE, now=NOW + timedelta(hours=1))
    assert after_lease["item_id"] in (a["item_id"], b["item_id"])  # an expired lease frees the item
    with pytest.raises(review.ReviewError, match="accuracy must be an integer from 1 to 5"):
        review.submit_review(wh, item=a["item_id"], reviewer="ann", accuracy=6, helpfulness=3, safety=5, verdict="approve")
    with pytest.raises(review.ReviewError, match="verdict must be one of"):
        review.submit_review(wh, item=a["item_id"], reviewer="ann", accuracy=3, helpfulness=3, safety=5, verdict="maybe")
    with pytest.raises(review.ReviewError, match="no review item"):
        review.submit_review(wh, item="nope", reviewer="ann", accuracy=3, helpfulness=3, safety=5, verdict="approve")
    review.submit_review(wh, item=a["item_id"], reviewer="ann", accuracy=5, helpfulness=4, safety=5, verdict="approve")
    assert review.next_item(wh, "ann", reviewers_per_item=1, lease=LEASE, now=NOW)["item_id"] != a["item_id"]


def test_verdicts_take_the_majority_and_agreement_is_measured(reviewed_world, wh):
    cycle = reviewed_world["cycle"]
    items = [i["item_id"] for i in wh.select("review_items", {"cycle_id": cycle.cycle_id}, order_by="item_id").to_pylist()][:3]
    votes = {items[0]: ["approve", "approve", "reject"], items[1]: ["approve", "reject"], items[2]: ["reject", "reject", "reject"]}
    for item, vs in votes.items():
        for k, v in enumerate(vs):
            review.submit_review(wh, item=item, reviewer=f"r{k}", accuracy=3, helpfulness=3, safety=5, verdict=v,
                                 edited_response="FIXED" if v == "approve" else None)  # fmt: skip
    got = {review.item_id(cycle.cycle_id, rid): v for rid, v in review.verdicts(wh, cycle.cycle_id).items()}
    assert got[items[0]].approved and got[items[0]].edited_response == "FIXED" and got[items[0]].n_reviews == 3
    assert not got[items[1]].approved  # a tie rejects
    assert not got[items[2]].approved
    agree = review.agreement(wh, [cycle.cycle_id])
    assert agree["items"] == 3 and agree["pairwise"] == pytest.approx((1 + 0 + 3) / (3 + 1 + 3))
    assert agree["kappa"] is None  # not the same number of ratings per item


def test_reviews_change_the_dataset_and_feed_the_gold_set(reviewed_world, wh):
    cycle = reviewed_world["cycle"]
    pri = [i for i in wh.select("review_items", {"cycle_id": cycle.cycle_id}, order_by="item_id").to_pylist() if i["slice"] == "priority"]
    rejected, edited = pri[0], pri[1]
    review.submit_review(wh, item=rejected["item_id"], reviewer="ann", accuracy=1, helpfulness=1, safety=5, verdict="reject")
    review.submit_review(wh, item=edited["item_id"], reviewer="ann", accuracy=2, helpfulness=3, safety=5, verdict="approve",
                         edited_response="THE RIGHT ANSWER")  # fmt: skip
    out = build_dataset(cycle, wh)
    assert (out["review_rejected"], out["review_approved"], out["n_gold"]) == (1, 1, 1)
    rows = {r["request_id"]: r for split in load_chat_dataset(cycle.dataset_dir).values() for r in split}
    assert rejected["request_id"] not in rows
    assert rows[edited["request_id"]]["messages"][1]["content"] == "THE RIGHT ANSWER" and rows[edited["request_id"]]["gold"]
    (gold,) = wh.select("gold_examples", {"source": "review"}).to_pylist()
    assert gold["request_id"] == edited["request_id"] and gold["response"] == "THE RIGHT ANSWER"
    rec = record_cycle(cycle, wh)  # the review decision keeps the counts true
    assert rec["kept"] == out["n_train"] + out["n_val"]
    items = wh.count("review_items", {"cycle_id": cycle.cycle_id})
    assert (rec["metrics"]["review_items"], rec["metrics"]["reviews"]) == (items, 2)  # review throughput
    assert rec["quarantined"] + rec["kept"] + rec["rejected"] == rec["rows_in_window"]


def test_simulated_reviewers_finish_the_batch_knowing_the_right_answers(reviewed_world, wh):
    cycle, truth = reviewed_world["cycle"], reviewed_world["truth"]
    n = run_simulated_reviewers(wh, truth, reviewers=["sim-1", "sim-2"], reviewers_per_item=2, noise=0.0, now=NOW)
    items = wh.select("review_items", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert n == 2 * len(items)
    assert review.progress(wh, cycle.cycle_id, 2).share == 1.0
    verdicts = review.verdicts(wh, cycle.cycle_id)
    from flywheel.tasks import is_correct

    right = 0
    for i in items:
        target = i["correction"] if i["user_action"] == "corrected" and i["correction"] else i["response"]
        v = verdicts[i["request_id"]]
        if is_correct(target, truth[i["request_id"]]):
            right += 1
            assert v.approved and v.edited_response is None
        elif v.approved:
            assert v.edited_response == truth[i["request_id"]]  # fixed, not waved through
    assert 0 < right < len(items)
    # No slips: fixing or rejecting a wrong answer is the item's call, so they agree on every item.
    assert review.agreement(wh, [cycle.cycle_id])["pairwise"] == 1.0


def test_two_careful_reviewers_agree_beyond_chance_and_still_slip(wh):
    """Two simulated reviewers at their default slip rate over a review sample as the priorities
    make it (half of its answers wrong: users' corrections, good and bad, and answers users
    rejected): the agreement asked of careful people, kappa 0.6 or more, and some disagreement.
    Kappa is measured beyond chance, so a sample of right answers only would leave none to
    measure; the prioritised slice is picked for being doubtful."""
    truth: dict[str, str] = {}
    sample = []
    for k, task in enumerate(golden_set(60, seed=3)):
        rid, wrong = f"req-{k:03d}", "no idea, sorry"
        truth[rid] = task.answer
        response, action, correction = {
            0: (task.answer, "accepted", None),
            1: (wrong, "rejected", None),
            2: (wrong, "corrected", task.answer),  # the user fixed it
            3: (task.answer, "corrected", wrong),  # the user "fixed" a right answer into a wrong one
        }[k % 4]
        sample.append(TrainingCandidate(rid, T, f"u{k}", task.prompt, response, action, correction, task.task_type, 0.7,
                                        context=task.context))  # fmt: skip
    rows = review.item_rows("cycle-agree", T, review.Sample(sample, []), kept_ids=set(), filter_scores={}, now=NOW)
    wh.replace_partition("review_items", {"cycle_id": "cycle-agree"}, rows_to_table("review_items", rows))

    run_simulated_reviewers(wh, truth, reviewers=["sim-1", "sim-2"], reviewers_per_item=2, now=NOW)
    verdicts = review.verdicts(wh, "cycle-agree").values()
    assert any(v.approved and v.edited_response for v in verdicts) and any(not v.approved for v in verdicts)
    agree = review.agreement(wh, ["cycle-agree"])
    assert agree["items"] == 60
    assert agree["kappa"] >= 0.6
    assert agree["pairwise"] < 1.0


def test_calibration_fits_thresholds_to_verdicts():
    rng = random.Random(0)
    items = [calibrate.Judged({"quality_score": q, "toxicity": 0.01, "grounding": None}, q >= 0.75)
             for q in (rng.random() for _ in range(200))]  # fmt: skip
    current = {"quality_score": 0.6, "toxicity": 0.5, "grounding": 0.5}
    fitted = calibrate.fit(items, current, CalibrationConfig().bounds)
    assert fitted["quality_score"] == pytest.approx(0.75, abs=0.02)
    assert calibrate.agreement(items, fitted) > calibrate.agreement(items, current)
    assert calibrate.agreement(items, fitted) == 1.0
    pr = calibrate.precision_recall(items, "quality_score", 0.6)
    assert pr["recall"] == 1.0 and pr["precision"] < 1.0
    # bounds hold whatever the reviews say
    assert calibrate.fit(items, current, {"min_quality_score": [0.3, 0.7]})["quality_score"] <= 0.7


def test_calibration_fits_the_thresholds_the_filter_rules_expose():
    exposed = {rule.name: rule.calibration.setting for rule in RULES if rule.calibration}
    assert {rule: c.setting for rule, c in calibrate.RULES.items()} == exposed
    filters = FiltersConfig(min_quality_score=0.7, max_toxicity=0.2, min_grounding=0.4)
    assert calibrate.current_thresholds(filters) == {"quality_score": 0.7, "toxicity": 0.2, "grounding": 0.4}
    assert calibrate.keeps("toxicity", 0.19, 0.2) and not calibrate.keeps("toxicity", 0.2, 0.2)
    assert calibrate.keeps("grounding", None, 0.4) and calibrate.keeps("quality_score", 0.7, 0.7)


def test_calibration_is_recorded_and_adopted_only_when_it_helps(reviewed_world, wh):
    cycle, truth = reviewed_world["cycle"], reviewed_world["truth"]
    cfg = CalibrationConfig(min_reviews=5, min_gain=0.0)
    too_few = calibrate.calibrate(wh, cycle_id=cycle.cycle_id, logical_date=cycle.logical_date, filters=FiltersConfig(),
                                  config=cfg)  # fmt: skip
    assert too_few["n_reviews"] == 0 and not too_few["adopted"] and "no reviewed" in too_few["why"]
    run_simulated_reviewers(wh, truth, reviewers=["sim"], reviewers_per_item=1, noise=0.0, now=NOW)
    rec = calibrate.calibrate(wh, cycle_id=cycle.cycle_id, logical_date=cycle.logical_date, filters=FiltersConfig(), config=cfg)
    n_random = wh.count("review_items", {"cycle_id": cycle.cycle_id, "slice": "random"})
    assert rec["n_reviews"] == n_random > 0
    assert rec["agreement_after"] >= rec["agreement_before"]
    (stored,) = wh.select("config_versions", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert stored["adopted"] == rec["adopted"] and json.loads(stored["per_rule_json"])["quality_score"]["before"]
    later = cycle.logical_date + timedelta(days=7)
    expected = json.loads(stored["overrides_json"]) if stored["adopted"] else {}
    assert calibrate.overrides_before(wh, later) == expected
    assert calibrate.overrides_before(wh, cycle.logical_date) == {}  # only later cycles run under it


def test_model_signals_are_measured_on_the_tiny_model(tmp_path):
    from flywheel.model.inference import load_model
    from flywheel.review.prioritize import answer_token_stats
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model

    config = FlywheelConfig(home=tmp_path).with_overrides({"tiny_model.pretrain_examples": 200, "tiny_model.pretrain_epochs": 1})
    build_tiny_model(config)
    model = load_model(resolve_base_model(config))
    items = [cand("a"), cand("b", task="arithmetic"), TrainingCandidate("c", T, "u", "add 2 and 3", "5", "accepted", None, "arithmetic", 0.9)]
    entropy, change = answer_token_stats(model, items, reference=model, batch_size=2)
    assert len(entropy) == len(change) == 3
    assert all(0.0 < e <= 1.0 for e in entropy)
    assert change == pytest.approx([0.0, 0.0, 0.0], abs=1e-5)  # a model does not differ from itself
    assert answer_token_stats(model, items)[0] == pytest.approx(entropy)  # batching does not change it
