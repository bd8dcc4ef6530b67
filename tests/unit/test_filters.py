"""Filter rules with reasons; every rule is evaluated for every candidate; the registry is the
one list of rules, and each rule's declarations (settings, pushdown, calibration) hold."""

from __future__ import annotations

from dataclasses import fields, replace
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.config import FiltersConfig
from flywheel.filters import (
    RULE_NAMES,
    RULES,
    ActionRule,
    ChainInputs,
    LengthRule,
    QualityScoreRule,
    RowRule,
    Stage,
    WindowRule,
    apply_filters,
    basic_rules,
    pushdown_for,
)
from flywheel.ops.metrics import format_rule_table
from flywheel.records import candidate_from_row
from flywheel.text import count_tokens, count_words
from flywheel.warehouse import Pushdown


@pytest.fixture
def cand(make_log_row):
    from datetime import UTC, datetime

    def make(rid="r1", **kw):
        return candidate_from_row(make_log_row(rid, datetime(2026, 2, 3, tzinfo=UTC), **kw))

    return make


def words(n: int) -> str:
    return " ".join(["word"] * n)


CHEAP_RULES = basic_rules(FiltersConfig())


@pytest.mark.parametrize(
    ("action", "kept"),
    [("accepted", True), ("copied", True), ("corrected", True), ("regenerated", False)],
)
def test_action_rule_defaults(cand, action, kept):
    c = cand(user_action=action, correction="FIX" if action == "corrected" else None)
    d = CHEAP_RULES[0].decide(c)
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
    assert count_words("don't state-of-the-art x2") == 3


@pytest.mark.parametrize(
    "answer",
    [
        " ".join(["\U0001F600"] * 60),  # emoji only: no word, no token
        "\u200b".join(["word"] * 60),  # words joined by zero-width spaces: one word to a reader
        "\u2060".join(["w"] * 60) + " " + " ".join(["\u2705"] * 30),
        " ".join(["!"] * 20) + " " + " ".join(["\U0001F44D\U0001F3FD"] * 40),  # 20 marks, skin-toned emoji
    ],
    ids=["emoji", "zero_width_joined", "word_joiner_and_marks", "punctuation_and_emoji"],
)
def test_length_rule_is_not_fooled_by_emoji_or_invisible_joins(cand, answer):
    d = LengthRule(20, 50).decide(cand(prompt="hi", response=answer))
    assert not d.kept, d.reason


def test_length_rule_counts_the_response_by_default(cand):
    # The method's rule: a long request with a one-word answer is too short to learn from.
    c = cand(prompt=words(40), response="GARDEN")
    by_default = LengthRule.from_config(FiltersConfig(), ChainInputs()).decide(c)
    assert (by_default.kept, by_default.score) == (False, 1.0)
    assert by_default.reason == "too short: response 1 words <= 20 and 1 tokens <= 50"
    both = LengthRule(20, 50, "prompt_and_response").decide(c)
    assert (both.kept, both.score) == (True, 41.0) and both.reason.startswith("prompt + response: 41 words")
    answer = LengthRule(20, 50).decide(cand(prompt="hi", response=words(21)))
    assert answer.kept and answer.reason.startswith("response: 21 words")


@pytest.mark.parametrize("counts", ["response", "prompt_and_response"])
@pytest.mark.parametrize(("n", "kept"), [(19, False), (20, False), (21, True), (40, True)])
def test_length_rule_word_edge(cand, counts, n, kept):
    # n words and n tokens (<= 50 until n = 51) counted, so words decide: all in the response,
    # or the response's last word after the prompt's
    if counts == "response":
        c = cand(prompt=words(30), response=words(n))
    else:
        c = cand(prompt=words(n - 1), response="word")
    d = LengthRule(20, 50, counts).decide(c)
    assert (d.rule, d.kept) == ("length", kept)
    assert d.score == float(n) and d.threshold == 20.0
    assert f"{n} words" in d.reason
    assert d.reason.startswith("too short") is (not kept)


@pytest.mark.parametrize("counts", ["response", "prompt_and_response"])
@pytest.mark.parametrize(("n_tokens", "kept"), [(50, False), (51, True)])
def test_length_rule_token_edge_with_few_words(cand, counts, n_tokens, kept):
    # "x,x,x,...": one word, but each "x" and "," is a token
    if counts == "response":
        response = ",".join(["x"] * ((n_tokens + 1) // 2)) + ("," if n_tokens % 2 == 0 else "")
        c = cand(prompt=words(30), response=response)
        counted = c.target
    else:
        m = n_tokens - 1  # tokens the prompt needs; the target "y" is the last one
        prompt = ",".join(["x"] * ((m + 1) // 2)) + ("," if m % 2 == 0 else "")
        c = cand(prompt=prompt, response="y")
        counted = f"{c.prompt} {c.target}"
    assert count_words(counted) <= 2 and count_tokens(counted) == n_tokens
    d = LengthRule(20, 50, counts).decide(c)
    assert d.kept is kept
    assert f"{n_tokens} tokens" in d.reason


@pytest.mark.parametrize("counts", ["response", "prompt_and_response"])
def test_length_rule_measures_the_correction_not_the_response(cand, counts):
    short_prompt = words(5)
    corrected = cand(
        prompt=short_prompt, response="no", user_action="corrected", correction=words(21)
    )
    accepted = cand(
        prompt=short_prompt, response="no", user_action="accepted", correction=words(21)
    )
    assert LengthRule(20, 50, counts).decide(corrected).kept
    assert not LengthRule(20, 50, counts).decide(accepted).kept


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
    assert rules[1].counts == "response"
    assert basic_rules(FiltersConfig(length_counts="prompt_and_response"))[1].counts == "prompt_and_response"


def test_apply_filters_evaluates_every_rule(cand):
    good = cand("good", response=words(30))
    bad_all = cand("bad", prompt="hi", response="yo", user_action="regenerated", quality_score=0.1)
    bad_score = cand("low", response=words(30), quality_score=0.3)
    decisions, kept = apply_filters([good, bad_all, bad_score], CHEAP_RULES)
    assert len(decisions) == 9
    assert [c.request_id for c in kept] == ["good"]
    by = {(d.request_id, d.rule): d.kept for d in decisions}
    assert by == {
        ("good", "user_action"): True, ("good", "length"): True, ("good", "quality_score"): True,
        ("bad", "user_action"): False, ("bad", "length"): False, ("bad", "quality_score"): False,
        ("low", "user_action"): True, ("low", "length"): True, ("low", "quality_score"): False,
    }  # fmt: skip


def test_apply_filters_empty():
    assert apply_filters([], CHEAP_RULES) == ([], [])


@given(
    n_words=st.integers(0, 60),
    score=st.floats(0, 1),
    action=st.sampled_from(["accepted", "copied", "corrected", "regenerated"]),
)
def test_property_kept_iff_every_rule_keeps(n_words, score, action):
    from datetime import UTC, datetime

    from flywheel.records import TrainingCandidate

    c = TrainingCandidate(
        request_id="r", timestamp=datetime(2026, 1, 1, tzinfo=UTC), user_id="u", prompt="please",
        response=words(n_words), user_action=action, correction=words(n_words) if action == "corrected" else None,
        task_type="t", quality_score=score,
    )  # fmt: skip
    decisions, kept = apply_filters([c, replace(c, request_id="s")], CHEAP_RULES)
    assert len(decisions) == 6
    expected = action != "regenerated" and n_words > 20 and score >= 0.6
    assert (len(kept) == 2) is expected and len(kept) in (0, 2)


# --- the registry -------------------------------------------------------------------------


def test_registry_is_the_chain_in_order():
    # The one place a test lists the rules: the order is the chain's, the decisions', the reports'.
    assert RULE_NAMES == (
        "user_action", "length", "quality_score", "pii", "toxicity", "grounding", "decontamination", "dedup", "selection",
    )  # fmt: skip
    assert len(set(RULE_NAMES)) == len(RULES)
    stages = [rule.stage for rule in RULES]
    assert stages == sorted(stages), "the chain runs stage by stage, in registry order"
    assert [rule for rule in RULES if rule.stage is Stage.WINDOW] == [RULES[-1]]
    assert issubclass(RULES[-1], WindowRule)


def test_every_setting_has_a_rule_and_every_rule_reads_only_its_settings():
    config = FiltersConfig()
    declared = [s for rule in RULES for s in rule.settings]
    assert set(declared) == set(FiltersConfig.model_fields)
    for rule in RULES:
        # Built from its declared settings alone: reading any other field raises AttributeError.
        only_its_own = SimpleNamespace(**{s: getattr(config, s) for s in rule.settings})
        built = rule.from_config(only_its_own, ChainInputs())
        assert built.name == rule.name


def test_pushdown_is_built_from_the_rules_that_declare_one():
    assert pushdown_for(FiltersConfig()) == Pushdown(("accepted", "copied", "corrected"), 0.6)
    custom = FiltersConfig(allowed_actions=["copied"], min_quality_score=0.25)
    assert pushdown_for(custom) == Pushdown(tuple(custom.allowed_actions), custom.min_quality_score)
    pushdown_fields = {f.name for f in fields(Pushdown)}
    pushed = {r.name: r.pushdown() for r in basic_rules(custom)}
    assert {name for name, p in pushed.items() if p} == {"user_action", "quality_score"}
    assert all(set(p) <= pushdown_fields for p in pushed.values())
    assert all(issubclass(rule, RowRule) for rule in RULES if "pushdown" in vars(rule))


def test_calibrated_thresholds_are_settings_of_their_rules():
    calibrated = {rule.name: rule.calibration for rule in RULES if rule.calibration}
    assert {n: (c.setting, c.keeps_at_or_above) for n, c in calibrated.items()} == {
        "quality_score": ("min_quality_score", True),
        "toxicity": ("max_toxicity", False),
        "grounding": ("min_grounding", True),
    }
    for rule in RULES:
        if rule.calibration:
            assert rule.calibration.setting in rule.settings
    assert calibrated["quality_score"].keeps(0.6, 0.6) and not calibrated["toxicity"].keeps(0.1, 0.1)


def test_metrics_table_lists_rules_in_registry_order():
    rates = {"c1": {name: (1.0, 3) for name in reversed(RULE_NAMES)}}
    header = format_rule_table(rates).splitlines()[0].split()
    assert header == ["cycle", *(name[:11] for name in RULE_NAMES)]
