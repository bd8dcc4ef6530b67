"""The simulator: user reactions follow the served answers' correctness, and it is deterministic."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from flywheel.sim.traffic import TASK_TYPES, golden_set, simulate_traffic
from flywheel.tables import PRODUCTION_LOGS
from flywheel.tasks import is_correct
from flywheel.validation import validate_row

WEEK = datetime(2026, 1, 5, tzinfo=UTC)


def _sim(answer_fn, week=WEEK, **kw):
    kw.setdefault("n_requests", 300)
    kw.setdefault("seed", 7)
    kw.setdefault("malformed_rate", 0.0)
    return simulate_traffic(week, answer_fn, model_version="m1", **kw).to_pylist()


def test_oracle_agrees_with_golden_answers(oracle):
    tasks = golden_set(600, 99)
    assert {t.task_type for t in tasks} == set(TASK_TYPES)
    assert all(oracle(t.prompt, t.context) == t.answer for t in tasks)


def test_always_right_without_adversaries_never_corrects(answer_fns, oracle):
    rows = _sim(answer_fns["right"], adversarial_rate=0.0)
    assert all(is_correct(r["response"], oracle(r["prompt"], r["context"])) for r in rows)
    actions = Counter(r["user_action"] for r in rows)
    assert set(actions) <= {"accepted", "copied", "regenerated"}
    assert actions["accepted"] > 0 and actions["copied"] > 0
    assert all(r["correction"] is None for r in rows)


def test_always_right_with_adversaries_corrections_are_wrong(answer_fns, oracle):
    rows = _sim(answer_fns["right"], adversarial_rate=1.0)
    corrected = [r for r in rows if r["user_action"] == "corrected"]
    assert corrected, "every user adversarial: about half of right answers get 'corrected'"
    for r in corrected:
        assert r["correction"]
        assert not is_correct(r["correction"], oracle(r["prompt"], r["context"]))
    assert {r["user_action"] for r in rows} - {"corrected"} <= {"accepted", "copied", "regenerated"}


def test_always_wrong_corrections_are_the_true_answer(answer_fns, oracle):
    rows = _sim(answer_fns["wrong"], adversarial_rate=0.0)
    actions = Counter(r["user_action"] for r in rows)
    assert "copied" not in actions  # nobody copies a wrong answer
    assert actions["corrected"] > 0
    for r in rows:
        if r["user_action"] == "corrected":
            assert is_correct(r["correction"], oracle(r["prompt"], r["context"]))
        else:
            assert r["correction"] is None


def test_quality_score_tracks_final_correctness(answer_fns):
    right = [r["quality_score"] for r in _sim(answer_fns["right"], adversarial_rate=0.0)]
    wrong = [
        r["quality_score"]
        for r in _sim(answer_fns["wrong"], adversarial_rate=0.0)
        if r["user_action"] != "corrected"
    ]
    assert all(0.0 <= s <= 1.0 for s in right + wrong)
    assert sum(right) / len(right) > sum(wrong) / len(wrong) + 0.2


def test_deterministic_for_week_and_seed(answer_fns):
    a = _sim(answer_fns["half"], malformed_rate=0.1)
    b = _sim(answer_fns["half"], malformed_rate=0.1)
    assert a == b
    assert len({r["request_id"] for r in a}) == len(a)


def test_same_instant_in_another_zone_gives_same_rows(answer_fns):
    local = WEEK.astimezone(ZoneInfo("Asia/Kolkata"))
    assert _sim(answer_fns["half"], n_requests=50) == _sim(
        answer_fns["half"], week=local, n_requests=50
    )


def test_different_weeks_or_seeds_give_different_ids(answer_fns):
    ids = {r["request_id"] for r in _sim(answer_fns["right"], n_requests=100)}
    next_week = {
        r["request_id"]
        for r in _sim(answer_fns["right"], week=WEEK + timedelta(days=7), n_requests=100)
    }
    other_seed = {r["request_id"] for r in _sim(answer_fns["right"], seed=8, n_requests=100)}
    assert ids.isdisjoint(next_week)
    assert ids.isdisjoint(other_seed)


def test_timestamps_inside_the_week_and_ingested_after(answer_fns):
    rows = _sim(answer_fns["half"], n_requests=500)
    for r in rows:
        assert WEEK <= r["timestamp"] < WEEK + timedelta(days=7)
        assert r["ingested_at"] > r["timestamp"]


def test_table_has_the_logs_schema(answer_fns):
    table = simulate_traffic(WEEK, answer_fns["right"], model_version="m1", n_requests=10, seed=1)
    assert table.schema.equals(PRODUCTION_LOGS)
    assert table.num_rows == 10
    assert set(table.column("model_version").to_pylist()) == {"m1"}


def test_malformed_rate_one_makes_every_row_invalid(answer_fns):
    rows = _sim(answer_fns["half"], malformed_rate=1.0)
    assert all(validate_row(r) for r in rows)
    # all five kinds of malformation show up
    fields = {i.field for r in rows for i in validate_row(r)}
    assert fields == {"prompt", "user_action", "quality_score", "correction", "timestamp"}


def test_malformed_rate_zero_makes_every_row_valid(answer_fns):
    rows = _sim(answer_fns["half"], malformed_rate=0.0)
    assert [validate_row(r) for r in rows] == [[]] * len(rows)


def test_answer_fn_with_wrong_count_is_refused():
    with pytest.raises(ValueError, match="answers for"):
        simulate_traffic(WEEK, lambda pairs: ["x"], model_version="m", n_requests=3, seed=1)


def test_naive_week_start_is_refused(answer_fns):
    with pytest.raises(ValueError, match="timezone-aware"):
        simulate_traffic(
            datetime(2026, 1, 5), answer_fns["right"], model_version="m", n_requests=3, seed=1
        )


@pytest.mark.parametrize("seed", [1, 20260101, 424242])
def test_golden_set_deterministic_and_covers_task_types(seed):
    a, b = golden_set(200, seed), golden_set(200, seed)
    assert a == b
    assert len(a) == 200
    assert {t.task_type for t in a} == set(TASK_TYPES)
    assert golden_set(200, seed + 1) != a


def test_is_correct_normalises_whitespace_only():
    assert is_correct("  GARDEN \n", "GARDEN")
    assert not is_correct("garden", "GARDEN")
    assert not is_correct(None, "7")


def test_pii_and_toxic_users_change_only_their_requests(answer_fns):
    plain = _sim(answer_fns["half"])
    noisy = _sim(answer_fns["half"], pii_rate=0.1, toxic_rate=0.1)
    changed = [(a, b) for a, b in zip(plain, noisy, strict=True) if a["prompt"] != b["prompt"]]
    assert 0.1 * len(plain) < len(changed) < 0.35 * len(plain)
    for a, b in zip(plain, noisy, strict=True):
        assert {k: v for k, v in a.items() if k != "prompt"} == {k: v for k, v in b.items() if k != "prompt"}
    with_pii = [b for _, b in changed if "@example.com" in b["prompt"]]
    toxic = [b for _, b in changed if "idiot" in b["prompt"]]
    assert with_pii and toxic and len(with_pii) + len(toxic) == len(changed)
