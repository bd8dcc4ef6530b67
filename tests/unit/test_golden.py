"""Curated golden sets: read and checked line by line, chosen by config, kept out of training,
and built from approved review items that no model trained on."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from flywheel.config import FlywheelConfig
from flywheel.cycle import make_cycle
from flywheel.cycle.evaluate import evaluate_golden_set
from flywheel.cycle.extract import extract_window
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.validate import validate_rows
from flywheel.evaluation.golden import golden_for, golden_from_reviews, load_curated_golden_set
from flywheel.evaluation.offline import GoldenSetError, check_golden_unchanged
from flywheel.tables import rows_to_table
from tests.helpers.simulated_product import SIMULATED_PRODUCT

T = datetime(2026, 3, 2, tzinfo=UTC)
TASKS = [
    {"task_type": "refund", "prompt": "Can I get my money back for order 1182 placed last week?", "answer": "Yes, within 30 days"},
    {"task_type": "refund", "prompt": "Refund for a gift card bought in March, please.", "answer": "Gift cards are final"},
    {"task_type": "shipping", "prompt": "Where is my parcel?", "answer": "Lyon", "context": "Order 7 shipped to Lyon with courier DHL."},
]


def _write(path, tasks, extra: str = ""):
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks) + extra)
    return path


def test_a_curated_set_is_read_with_its_hash_and_chosen_by_config(tmp_path):
    path = _write(tmp_path / "golden-v1.jsonl", TASKS)
    golden = load_curated_golden_set(path, required_task_types=["refund", "shipping"])
    assert [t.task_type for t in golden.tasks] == ["refund", "refund", "shipping"]
    assert golden.tasks[2].context.startswith("Order 7") and golden.tasks[0].context is None
    config = FlywheelConfig(home=tmp_path).with_overrides(
        {"evaluation.golden_path": "golden-v1.jsonl", "evaluation.required_task_types": ["refund", "shipping"]})
    chosen = golden_for(config)
    assert chosen.content_hash == golden.content_hash and chosen.path == path
    # Without a path, the simulator's set, which covers the simulator's task types.
    assert len(golden_for(FlywheelConfig(home=tmp_path).with_overrides({"evaluation.golden_set_size": 60})).tasks) == 60
    # An edit in place after registration is refused: a new version is a new file.
    _write(path, TASKS[:2] + [{**TASKS[2], "answer": "Paris"}])
    with pytest.raises(GoldenSetError, match="changed since it was registered"):
        check_golden_unchanged(golden_for(config), golden.content_hash)


@pytest.mark.parametrize(
    ("extra", "required", "match"),
    [
        ("{not json\n", ["refund"], r":4: not valid JSON"),
        ('{"task_type": "refund", "prompt": "x?", "answer": " "}\n', ["refund"], r":4: answer missing or empty"),
        ('["refund", "x", "y"]\n', ["refund"], r":4: expected an object"),
        (json.dumps(TASKS[0]) + "\n", ["refund"], r":4: the same prompt and context"),
        ('{"task_type": "refund", "prompt": "x?", "answer": "y", "context": 3}\n', ["refund"], r":4: context must be text"),
        ("", ["refund", "billing"], r"no item of task type\(s\) \['billing'\]"),
    ],
)
def test_a_broken_curated_set_fails_loudly_with_its_line(tmp_path, extra, required, match):
    path = _write(tmp_path / "golden.jsonl", TASKS, extra)
    with pytest.raises(GoldenSetError, match=match):
        load_curated_golden_set(path, required_task_types=required)


def test_missing_or_empty_curated_file(tmp_path):
    with pytest.raises(GoldenSetError, match="does not exist"):
        load_curated_golden_set(tmp_path / "nope.jsonl", required_task_types=[])
    with pytest.raises(GoldenSetError, match="no task"):
        load_curated_golden_set(_write(tmp_path / "empty.jsonl", [], "\n"), required_task_types=[])


def test_curated_inputs_are_kept_out_of_training(tmp_path, wh, make_log_row):
    """The decontamination filter reads the configured golden set: a logged request that copies a
    curated golden prompt never reaches a dataset."""
    _write(tmp_path / "golden.jsonl", [{"task_type": "uppercase", "prompt": make_log_row("x", T)["prompt"], "answer": "GARDEN"}])
    config = FlywheelConfig(home=tmp_path).with_overrides({
        **SIMULATED_PRODUCT, "evaluation.golden_path": "golden.jsonl", "evaluation.required_task_types": ["uppercase"],
        "filters.keep_fraction": 1.0, "training.min_examples": 1})  # fmt: skip
    cycle = make_cycle("flywheel_weekly", data_interval_end=T, logical_date=T, config=config)
    start = cycle.window.start
    other = ("Please write the word orchard in capital letters for the title of my garden club newsletter, so it is "
             "easy to read from far away.")  # fmt: skip
    wh.merge("production_logs", rows_to_table("production_logs", [
        make_log_row("copy", start), make_log_row("other", start, prompt=other, response="ORCHARD")]))  # fmt: skip
    for stage in (extract_window, validate_rows, filter_candidates):
        stage(cycle, wh)
    rules = {(d["request_id"], d["rule"]): d["kept"] for d in wh.select("decisions", {"cycle_id": cycle.cycle_id}).to_pylist()}
    assert rules[("copy", "decontamination")] is False and rules[("other", "decontamination")] is True


def _review(wh, item: str, request_id: str, *, kept: bool, verdicts: list[str], edit: str | None = None,
            task_type: str = "refund", action: str = "accepted", correction: str | None = None) -> None:  # fmt: skip
    wh.merge("review_items", rows_to_table("review_items", [{
        "item_id": item, "cycle_id": "c1", "logical_date": T, "request_id": request_id, "slice": "random", "priority": 0.0,
        "task_type": task_type, "user_action": action, "prompt": f"question {item}?", "context": None,
        "response": f"answer {item}", "correction": correction, "filter_kept": kept, "created_at": T}]))  # fmt: skip
    wh.merge("reviews", rows_to_table("reviews", [
        {"item_id": item, "reviewer": f"r{k}", "cycle_id": "c1", "verdict": v, "edited_response": edit if v == "approve" else None,
         "reviewed_at": T} for k, v in enumerate(verdicts)]))  # fmt: skip


def test_golden_from_reviews_takes_approved_items_no_model_trained_on(tmp_path, wh):
    _review(wh, "a", "req-a", kept=False, verdicts=["approve", "approve"])                 # a filter miss: in
    _review(wh, "b", "req-b", kept=False, verdicts=["approve", "approve"], edit="better")  # in, with the edit
    _review(wh, "c", "req-c", kept=True, verdicts=["approve", "approve"])                  # trained on: out
    _review(wh, "d", "req-d", kept=False, verdicts=["approve", "reject"])                  # a tie rejects: out
    _review(wh, "e", "req-e", kept=False, verdicts=["approve"], action="corrected", correction="fixed",
            task_type="shipping")  # in, the user's correction as the reference
    _review(wh, "f", "req-f", kept=False, verdicts=["approve"])  # a later (monthly) cycle trained on it: out
    wh.merge("training_fingerprints", rows_to_table("training_fingerprints", [
        {"cycle_id": "m1", "logical_date": T, "request_id": "req-f", "exact_key": 1, "signature": b"x", "fingerprint_spec": "s"}]))  # fmt: skip
    _review(wh, "g", "req-g", kept=False, verdicts=["approve"])  # already gold (trained on with weight): out
    wh.merge("gold_examples", rows_to_table("gold_examples", [
        {"request_id": "req-g", "source": "review", "cycle_id": "m1", "logical_date": T, "task_type": "refund",
         "prompt": "question g?", "response": "answer g", "created_at": T}]))  # fmt: skip
    out = tmp_path / "golden-reviews-v1.jsonl"
    counts = golden_from_reviews(wh, out, per_task_type=10)
    assert counts == {"refund": 2, "shipping": 1}
    got = {json.loads(line)["prompt"]: json.loads(line)["answer"] for line in out.read_text().splitlines()}
    assert got == {"question a?": "answer a", "question b?": "better", "question e?": "fixed"}
    golden = load_curated_golden_set(out, required_task_types=["refund", "shipping"])
    assert len(golden.tasks) == 3
    with pytest.raises(GoldenSetError, match="immutable"):
        golden_from_reviews(wh, out, per_task_type=10)
    assert golden_from_reviews(wh, tmp_path / "one.jsonl", per_task_type=1) == {"refund": 1, "shipping": 1}


def test_golden_from_reviews_with_nothing_to_take(tmp_path, wh):
    _review(wh, "c", "req-c", kept=True, verdicts=["approve"])
    with pytest.raises(GoldenSetError, match="nothing to build"):
        golden_from_reviews(wh, tmp_path / "g.jsonl", per_task_type=5)
    assert not (tmp_path / "g.jsonl").exists()


def test_golden_cli_builds_from_the_configured_warehouse(tmp_path, wh, monkeypatch, capsys):
    from flywheel.evaluation.golden import main

    _review(wh, "a", "req-a", kept=False, verdicts=["approve"])
    monkeypatch.setenv("FLYWHEEL_HOME", str(wh.path.parent))
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    out = tmp_path / "cli.jsonl"
    assert main(["from-reviews", str(out), "--per-task-type", "3"]) == 0
    assert "1 tasks (refund 1)" in capsys.readouterr().out and out.exists()
    assert main(["from-reviews", str(out)]) == 2 and "immutable" in capsys.readouterr().err


def test_a_golden_set_registered_from_another_worker_path_is_still_held_to_its_hash(tmp_path, wh):
    """With a bucket root the simulator's set sits in each worker's cache: a worker whose cache
    is elsewhere must still find the registered version (by name), and refuse a changed file."""
    config = FlywheelConfig(home=tmp_path).with_overrides({"evaluation.golden_set_size": 60})
    golden = golden_for(config)
    elsewhere = f"/var/cache/other-worker/golden/{golden.path.name}"
    wh.merge("golden_sets", rows_to_table("golden_sets", [{
        "golden_hash": "0" * 64, "path": elsewhere, "n_items": 60, "task_types_json": "{}", "first_cycle_id": "c0",
        "created_at": T}]))  # fmt: skip
    cycle = make_cycle("flywheel_weekly", data_interval_end=T, logical_date=T, config=config)
    with pytest.raises(GoldenSetError, match="changed since it was registered"):
        evaluate_golden_set(cycle, wh)
