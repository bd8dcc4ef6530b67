"""Filter rules with reasons; every rule is evaluated for every candidate."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.config import FiltersConfig
from flywheel.filters import (
    ActionRule,
    LengthRule,
    QualityScoreRule,
    apply_filters,
    basic_rules,
    count_tokens,
    count_words,
)
from flywheel.schema import candidate_from_row


@pytest.fixture
def cand(make_log_row):
    from datetime import UTC, datetime

    def make(rid="r1", **kw):
        return candidate_from_row(make_log_row(rid, datetime(2026, 2, 3, tzinfo=UTC), **kw))

    return make


def words(n: int) -> str:
    return " ".join(["word"] * n)


RULES = basic_rules(FiltersConfig())


@pytest.mark.parametrize(
    ("action", "kept"),
    [("accepted", True), ("copied", True), ("corrected", True), ("regenerated", False)],
)
def test_action_rule_defaults(cand, action, kept):
    c = cand(user_action=action, correction="FIX" if action == "corrected" else None)
    d = RULES[0].decide(c)
    assert (d.rule, d.kept, d.request_id) == ("user_action", kept, "r1")
    assert repr(action) in d.reason
    assert ("not in" in d.reason) is (not kept)


def test_action_rule_custom_allowed(cand):
    rule = ActionRule(("copied",))
    assert rule.decide(cand(user_action="copied")).kept
    assert not rule.decide(cand(user_action="accepted")).kept


def test_counters():
    assert count_words("a  b\tc\n d") == 4
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("GARDEN") == 1 and count_words("") == 0


@pytest.mark.parametrize(("n", "kept"), [(19, False), (20, False), (21, True), (40, True)])
def test_length_rule_word_edge(cand, n, kept):
    # prompt + target: n words and n tokens (<= 50 until n = 51), so words decide
    c = cand(prompt=words(n - 1), response="word")
    d = LengthRule(20, 50).decide(c)
    assert (d.rule, d.kept) == ("length", kept)
    assert d.score == float(n) and d.threshold == 20.0
    assert f"{n} words" in d.reason
    assert d.reason.startswith("too short") is (not kept)


@pytest.mark.parametrize(("n_tokens", "kept"), [(50, False), (51, True)])
def test_length_rule_token_edge_with_few_words(cand, n_tokens, kept):
    # "x,x,x,...": one word, but each "x" and "," is a token
    m = n_tokens - 1  # tokens the prompt needs; the target "y" is the last one
    prompt = ",".join(["x"] * ((m + 1) // 2)) + ("," if m % 2 == 0 else "")
    c = cand(prompt=prompt, response="y")
    assert count_words(f"{c.prompt} {c.target}") == 2
    assert count_tokens(f"{c.prompt} {c.target}") == n_tokens
    d = LengthRule(20, 50).decide(c)
    assert d.kept is kept
    assert f"{n_tokens} tokens" in d.reason


def test_length_rule_measures_the_correction_not_the_response(cand):
    short_prompt = words(5)
    corrected = cand(
        prompt=short_prompt, response="no", user_action="corrected", correction=words(20)
    )
    accepted = cand(
        prompt=short_prompt, response="no", user_action="accepted", correction=words(20)
    )
    assert LengthRule(20, 50).decide(corrected).kept
    assert not LengthRule(20, 50).decide(accepted).kept


@pytest.mark.parametrize(
    ("score", "kept"), [(0.6, True), (0.5999, False), (1.0, True), (0.0, False)]
)
def test_quality_score_rule(cand, score, kept):
    d = QualityScoreRule(0.6).decide(cand(quality_score=score))
    assert (d.rule, d.kept, d.score, d.threshold) == ("quality_score", kept, score, 0.6)
    assert (">=" if kept else "<") in d.reason and "0.6" in d.reason


def test_basic_rules_follow_config():
    rules = basic_rules(
        FiltersConfig(allowed_actions=["copied"], min_words=3, min_tokens=4, min_quality_score=0.2)
    )
    assert [r.name for r in rules] == ["user_action", "length", "quality_score"]
    assert rules[0].allowed == ("copied",)
    assert (rules[1].min_words, rules[1].min_tokens, rules[2].min_score) == (3, 4, 0.2)


def test_apply_filters_evaluates_every_rule(cand):
    good = cand("good", prompt=words(30))
    bad_all = cand("bad", prompt="hi", response="yo", user_action="regenerated", quality_score=0.1)
    bad_score = cand("low", prompt=words(30), quality_score=0.3)
    decisions, kept = apply_filters([good, bad_all, bad_score], RULES)
    assert len(decisions) == 9
    assert [c.request_id for c in kept] == ["good"]
    by = {(d.request_id, d.rule): d.kept for d in decisions}
    assert by == {
        ("good", "user_action"): True, ("good", "length"): True, ("good", "quality_score"): True,
        ("bad", "user_action"): False, ("bad", "length"): False, ("bad", "quality_score"): False,
        ("low", "user_action"): True, ("low", "length"): True, ("low", "quality_score"): False,
    }  # fmt: skip


def test_apply_filters_empty():
    assert apply_filters([], RULES) == ([], [])


@given(
    n_words=st.integers(0, 60),
    score=st.floats(0, 1),
    action=st.sampled_from(["accepted", "copied", "corrected", "regenerated"]),
)
def test_property_kept_iff_every_rule_keeps(n_words, score, action):
    from datetime import UTC, datetime

    from flywheel.schema import TrainingCandidate

    c = TrainingCandidate(
        request_id="r", timestamp=datetime(2026, 1, 1, tzinfo=UTC), user_id="u", prompt=words(n_words),
        response="ok", user_action=action, correction="fixed" if action == "corrected" else None,
        task_type="t", quality_score=score,
    )  # fmt: skip
    decisions, kept = apply_filters([c, replace(c, request_id="s")], RULES)
    assert len(decisions) == 6
    expected = action != "regenerated" and n_words + 1 > 20 and score >= 0.6
    assert (len(kept) == 2) is expected and len(kept) in (0, 2)
