"""Cold start (manual labels, synthetic examples, beta traffic), gold examples, the monthly
consolidation's window, and the phases with their capture policy; no model involved."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from flywheel.config import FlywheelConfig, PhasesConfig
from flywheel.cycle import make_cycle
from flywheel.cycle.data_gates import gate_raw_window
from flywheel.cycle.dataset import build_dataset
from flywheel.cycle.extract import extract_bootstrap, extract_window
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.promote import promote_if_better
from flywheel.cycle.record import record_cycle
from flywheel.cycle.validate import validate_rows
from flywheel.data import bootstrap
from flywheel.errors import ConfigError, FlywheelError, WindowError
from flywheel.model import registry
from flywheel.ops import phases
from flywheel.sim import traffic
from flywheel.sim.traffic import TASK_TYPES, simulate_traffic
from flywheel.tables import rows_to_table
from flywheel.tasks import is_correct
from tests.helpers.simulated_product import SIMULATED_PRODUCT

BOOT = datetime(2026, 1, 5, tzinfo=UTC)
BASE = "some-base-path"


def _labels(tmp_path, oracle):
    """Six good labels (one with an e-mail address in it), one row without a prompt, one line
    that is not JSON."""
    rows = [
        {"prompt": f"Could you add {a} and {b} for me? I need the total for my shopping list today, thanks.",
         "response": str(a + b), "task_type": "arithmetic", "labeler": "ann"}
        for a, b in ((3, 4), (10, 2), (7, 7), (1, 19), (12, 5))
    ]  # fmt: skip
    rows[0]["prompt"] += " Write to me at dana.9@example.com if anything is unclear."
    rows.append({"response": "9", "task_type": "arithmetic"})
    path = bootstrap.write_labels_file(tmp_path / "labels" / "a.jsonl", rows)
    with path.open("a") as f:
        f.write('{"prompt": "broken\n')
        f.write('{"prompt": "Add 2 and 2", "response": {"value": 4}, "task_type": "arithmetic"}\n')
        f.write('{"prompt": "Add 2 and 3", "response": 5, "task_type": "arithmetic", "quality_score": "high"}\n')
    return path


def test_manual_labels_are_read_as_log_rows_and_bad_lines_are_reported(tmp_path, oracle):
    path = _labels(tmp_path, oracle)
    rows, problems = bootstrap.read_manual_labels(path, labelled_at=BOOT)
    assert len(rows) == 6
    assert all(r["user_action"] == "accepted" and r["model_version"] == bootstrap.MANUAL_MODEL_VERSION for r in rows)
    assert rows[0]["user_id"] == "ann" and rows[-1]["prompt"] is None  # kept for validation to quarantine
    from flywheel.validation import validate_row

    # A labeler named with a space is a name, not an id: the row gets a stable hashed id that passes.
    named, _ = bootstrap.read_manual_labels(bootstrap.write_labels_file(tmp_path / "n.jsonl", [
        {"prompt": "Add 2 and 2", "response": "4", "task_type": "arithmetic", "labeler": "Ann Smith"}]), labelled_at=BOOT)  # fmt: skip
    assert named[0]["user_id"].startswith("labeler-") and "Ann" not in named[0]["user_id"]
    assert not [i for i in validate_row(named[0]) if i.field == "user_id"]
    assert [(p.source, p.line) for p in problems] == [("a.jsonl", 7), ("a.jsonl", 8), ("a.jsonl", 9)]
    assert "not valid JSON" in problems[0].reason
    assert "response: a JSON object or list, not text" in problems[1].reason
    assert "quality_score 'high' is not a number" in problems[2].reason
    # Stable ids: importing the same file again gives the same rows.
    again, _ = bootstrap.read_manual_labels(path, labelled_at=BOOT)
    assert [r["request_id"] for r in again] == [r["request_id"] for r in rows]


def test_labels_that_are_not_unicode_are_problems_and_line_separators_inside_text_are_kept(tmp_path):
    """A lone surrogate spelt in JSON, bytes that are not UTF-8 (JSONL and CSV): each line is a
    problem with its reason, the other lines are rows; U+2028 inside a JSON string does not cut
    its line in two."""
    ok = {"prompt": "Reverse the word\u2028cat\u0085please", "response": "tac", "task_type": "reverse"}
    jsonl = tmp_path / "labels" / "a.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_bytes(
        json.dumps(ok, ensure_ascii=False).encode() + b"\n"
        + b'{"prompt": "Add 1 and 2\\ud800", "response": "3", "task_type": "arithmetic"}\n'
        + b'{"prompt": "Add 1 and \xff\xfe 2", "response": "3", "task_type": "arithmetic"}\n'
    )  # fmt: skip
    rows, problems = bootstrap.read_manual_labels(jsonl, labelled_at=BOOT)
    assert [r["prompt"] for r in rows] == [ok["prompt"]]
    assert [(p.line, p.reason.split(":")[0]) for p in problems] == [(2, "prompt"), (3, "prompt")]
    assert all("not valid UTF-8" in p.reason for p in problems)
    json.dumps([p.__dict__ for p in problems]).encode()  # the reasons themselves can be stored

    csv_file = tmp_path / "b.csv"
    csv_file.write_bytes(b"prompt,response,task_type\nAdd 1 and 2,3,arithmetic\nAdd 2 and \xc3 2,4,arithmetic\n")
    rows, problems = bootstrap.read_manual_labels(csv_file, labelled_at=BOOT)
    assert [r["response"] for r in rows] == ["3"] and [p.line for p in problems] == [3]


def test_csv_labels_need_their_columns(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("prompt,response,task_type,context\nWhat is two plus two,4,arithmetic,\n")
    rows, problems = bootstrap.read_manual_labels(good, labelled_at=BOOT)
    assert problems == [] and rows[0]["response"] == "4" and rows[0]["context"] is None
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nWhat is two plus two,4\n")
    rows, problems = bootstrap.read_manual_labels(bad, labelled_at=BOOT)
    assert rows == [] and "lacks the columns" in problems[0].reason
    with pytest.raises(FlywheelError, match="does not exist"):
        bootstrap.read_manual_labels(tmp_path / "missing.jsonl", labelled_at=BOOT)


def test_synthetic_rows_cover_every_task_type_with_right_answers(oracle):
    rows = bootstrap.synthetic_rows(traffic, 3, seed=1, created_at=BOOT)
    assert sorted({r["task_type"] for r in rows}) == sorted(TASK_TYPES)
    assert len(rows) == 3 * len(TASK_TYPES)
    for r in rows:
        assert is_correct(oracle(r["prompt"], r["context"]), r["response"]), r
    assert bootstrap.synthetic_rows(traffic, 3, seed=1, created_at=BOOT) == rows


def _bootstrap_cycle(tmp_path, labels_path):
    config = FlywheelConfig(home=tmp_path).with_overrides({
        **SIMULATED_PRODUCT, "extract.lag_days": 0, "extract.window_days": 14, "filters.keep_fraction": 1.0, "training.min_examples": 5,
        "bootstrap.labels_path": str(labels_path), "bootstrap.synthetic_per_task_type": 4,
    })  # fmt: skip
    return make_cycle("flywheel_bootstrap", data_interval_end=BOOT, logical_date=BOOT, config=config)


def test_bootstrap_cycle_joins_sources_quarantines_bad_labels_and_keeps_gold(tmp_path, wh, answer_fns, oracle):
    beta = simulate_traffic(BOOT - timedelta(days=14), answer_fns["half"], model_version="base:x", n_requests=40,
                            seed=3, malformed_rate=0.0, days=14)  # fmt: skip
    wh.merge("production_logs", beta)
    cycle = _bootstrap_cycle(tmp_path, _labels(tmp_path, oracle))
    out = extract_bootstrap(cycle, wh)
    assert (out["manual_labels"], out["synthetic"], out["unreadable_label_lines"]) == (6, 4 * len(TASK_TYPES), 3)
    assert out["rows_in_window"] == 40 + 6 + 4 * len(TASK_TYPES)
    # Rows from other sources carry the text facts the raw gate profiles, as warehouse rows do.
    assert gate_raw_window(cycle, wh)["success"] is True
    v = validate_rows(cycle, wh)
    # the label without a prompt, and the lines that are not rows, each with their reason
    assert v["quarantined"] == 4 and v["quarantine_reasons"] == {"prompt.required": 1, "line.unreadable": 3}
    reasons = [q["reason"] for q in wh.select("quarantine", {"cycle_id": cycle.cycle_id}).to_pylist()]
    assert any("a.jsonl line 7: not valid JSON" in r for r in reasons)
    filter_candidates(cycle, wh)
    ds = build_dataset(cycle, wh)
    gold = wh.select("gold_examples").to_pylist()
    assert 1 <= len(gold) <= 5 and ds["n_gold"] == len(gold)
    assert all(g["source"] == "manual_labels" and g["cycle_id"] == cycle.cycle_id for g in gold)
    assert not any("dana.9@example.com" in g["prompt"] for g in gold), "gold text is stored after PII redaction"
    registry.ensure_bootstrap_champion(wh, BASE)
    rec = record_cycle(cycle, wh)
    # The unreadable lines count as rows of the window, quarantined: counts still add up.
    assert rec["rows_in_window"] == out["rows_in_window"] + 3
    assert rec["quarantined"] + rec["kept"] + rec["rejected"] == rec["rows_in_window"]
    assert rec["phase"] == "cold_start" and rec["metrics"]["examples_collected"] == ds["n_train"] + ds["n_val"]


def test_monthly_window_adds_the_gold_set_accepted_before_it(tmp_path, wh, make_log_row):
    gold_at = datetime(2026, 1, 5, tzinfo=UTC)
    wh.merge("gold_examples", rows_to_table("gold_examples", [
        {"request_id": f"manual-{i}", "source": "manual_labels", "cycle_id": "boot", "logical_date": gold_at + timedelta(weeks=8 * i),
         "task_type": "uppercase", "prompt": make_log_row("x", gold_at)["prompt"], "context": None, "response": "GARDEN",
         "labeler": "ann", "created_at": gold_at}
        for i in range(2)
    ]))  # fmt: skip
    t = datetime(2026, 3, 2, tzinfo=UTC)
    # The gold example's own log row is in the window too (it was reviewed in a weekly cycle).
    wh.merge("production_logs", rows_to_table("production_logs", [
        make_log_row("manual-0", t - timedelta(days=20), response="GARDN", user_action="corrected", correction="GARDEN")]))  # fmt: skip
    config = FlywheelConfig(home=tmp_path).with_overrides({"extract.window_days": 28, "extract.include_gold": True})
    cycle = make_cycle("flywheel_monthly", data_interval_end=t, logical_date=t, config=config)
    assert (cycle.window.start, cycle.window.end) == (t - timedelta(days=42), t - timedelta(days=14))
    out = extract_window(cycle, wh)
    assert out["gold_rows"] == 1  # the one accepted before the run; the later one is not yet gold
    (row,) = pq.read_table(cycle.file("extract.parquet")).to_pylist()  # read once: the gold version stands for it
    assert row["request_id"] == "manual-0" and row["pushdown_kept"] and row["model_version"] == "gold:manual_labels"
    assert out["rows_in_window"] == 1


def test_window_override_reads_the_chosen_days(tmp_path):
    t = datetime(2026, 3, 2, tzinfo=UTC)
    config = FlywheelConfig(home=tmp_path)
    c = make_cycle("flywheel_weekly", data_interval_end=t, logical_date=t, config=config,
                      window_start=datetime(2026, 2, 1))  # fmt: skip
    assert (c.window.start, c.window.end) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 8, tzinfo=UTC))
    with pytest.raises(WindowError, match="ends after the run's date"):
        make_cycle("flywheel_weekly", data_interval_end=t, logical_date=t, config=config, window_start=t)


def test_phases_need_both_quality_and_volume():
    cfg = PhasesConfig(growth_min_accuracy=0.6, maturity_min_accuracy=0.9, growth_min_examples=100, maturity_min_examples=1000)
    assert phases.classify(None, 0, cfg) == "cold_start"
    assert phases.classify(0.65, 50, cfg) == "cold_start"  # good score, too little data to trust it
    assert phases.classify(0.65, 100, cfg) == "growth"
    assert phases.classify(0.95, 999, cfg) == "growth"
    assert phases.classify(0.9, 1000, cfg) == "maturity"
    with pytest.raises(ValueError):
        PhasesConfig(growth_min_accuracy=0.9, maturity_min_accuracy=0.6)


def test_phase_policy_is_read_from_earlier_cycles_and_applied(tmp_path, wh):
    config = FlywheelConfig(home=tmp_path).with_overrides({"phases.policy": {"cold_start": {"filters.keep_fraction": 0.8}}})
    assert phases.phase_before(wh, BOOT) == "cold_start"  # nothing recorded yet
    row = {"cycle_id": "c1", "dag_id": "flywheel_weekly", "logical_date": BOOT, "window_start": BOOT, "window_end": BOOT,
           "rows_in_window": 1, "quarantined": 0, "kept": 1, "rejected": 0, "pass_rate": 1.0, "promoted": False,
           "phase": "growth", "finished_at": BOOT}  # fmt: skip
    wh.merge("cycles", rows_to_table("cycles", [row]))
    assert phases.phase_before(wh, BOOT) == "cold_start"  # only strictly earlier cycles count
    assert phases.phase_before(wh, BOOT + timedelta(days=7)) == "growth"
    assert phases.apply_policy(config, "cold_start").filters.keep_fraction == 0.8
    assert phases.apply_policy(config, "growth").filters.keep_fraction == config.filters.keep_fraction


def test_a_policy_naming_an_unknown_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'filters.keep_share'"):
        FlywheelConfig(home=tmp_path).with_overrides({"phases.policy": {"growth": {"filters.keep_share": 0.5}}})


def test_dry_run_records_the_decision_but_keeps_the_champion(tmp_path, wh):
    base = registry.ensure_bootstrap_champion(wh, BASE)
    t = datetime(2026, 3, 2, tzinfo=UTC)
    cycle = make_cycle("flywheel_weekly", data_interval_end=t, logical_date=t, config=FlywheelConfig(home=tmp_path),
                          dry_run=True)  # fmt: skip
    # The offline gate compares item by item on the golden set: a champion right on every fifth
    # item, a challenger right on all of them.
    from flywheel.evaluation.offline import load_golden_set, score_answers

    ev = cycle.config.evaluation
    golden = load_golden_set(cycle.config.artefacts_root, templates=traffic, n=ev.golden_set_size, seed=ev.golden_seed)
    for v, role, every in ((base, "champion", 5), (cycle.cycle_id, "challenger", 1)):
        r = score_answers(golden.tasks, [task.answer if i % every == 0 else "?" for i, task in enumerate(golden.tasks)])
        wh.merge("evaluations", rows_to_table("evaluations", [
            {"cycle_id": cycle.cycle_id, "model_version": v, "role": role, "accuracy": r.accuracy, "n_items": r.n_items,
             "n_correct": r.n_correct, "per_task_json": json.dumps(r.per_task), "golden_hash": golden.content_hash,
             "evaluated_at": t, "item_scores_json": json.dumps(r.item_scores)}
        ]))  # fmt: skip
    out = promote_if_better(cycle, wh)
    assert out["promoted"] is False and out["champion_after"] == base
    assert out["reason"].startswith("dry run") and "would have promoted" in out["reason"]
    assert registry.current_champion(wh) == base
