"""Row validation with reasons: every reason a log row cannot become a training candidate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.config import FiltersConfig
from flywheel.filters import LengthRule
from flywheel.records import candidate_from_row
from flywheel.validation import ValidationLimits, validate_row

TS = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def row(make_log_row):
    return make_log_row("req-1", TS)


def _issues(row):
    return {(i.field, i.rule) for i in validate_row(row)}


def test_good_row_has_no_issues(row):
    assert validate_row(row) == []


def test_good_corrected_row_has_no_issues(row):
    row.update(user_action="corrected", correction="GARDEN")
    assert validate_row(row) == []


@pytest.mark.parametrize("field", ["request_id", "prompt", "response", "user_id", "task_type"])
@pytest.mark.parametrize("how", ["absent", "none", "empty", "blank"])
def test_missing_required_text(row, field, how):
    if field == "response" and how in ("empty", "blank"):
        pytest.skip("an empty response is a product event, not a malformed row: see below")
    if how == "absent":
        del row[field]
    else:
        row[field] = {"none": None, "empty": "", "blank": "  \t"}[how]
    issues = validate_row(row)
    assert [(i.field, i.rule) for i in issues] == [(field, "required")]
    assert field in issues[0].reason


@pytest.mark.parametrize("empty", ["", "  \t"])
def test_empty_response_is_valid_and_the_length_rule_rejects_it(row, empty):
    row["response"] = empty
    assert validate_row(row) == []
    d = LengthRule(FiltersConfig().min_words, FiltersConfig().min_tokens).decide(candidate_from_row(row))
    assert not d.kept and "empty answer" in d.reason


def test_non_text_field_is_a_type_issue(row):
    row["prompt"] = 42
    assert _issues(row) == {("prompt", "type")}


def test_naive_timestamp(row):
    row["timestamp"] = datetime(2026, 2, 3, 12, 0)
    assert _issues(row) == {("timestamp", "type")}


def test_timestamp_as_string_is_a_type_issue(row):
    row["timestamp"] = "2026-02-03T12:00:00+00:00"
    assert _issues(row) == {("timestamp", "type")}


@pytest.mark.parametrize("how", ["absent", "none"])
def test_missing_timestamp(row, how):
    if how == "absent":
        del row["timestamp"]
    else:
        row["timestamp"] = None
    assert _issues(row) == {("timestamp", "required")}


def test_bad_user_action(row):
    row["user_action"] = "liked"
    issues = validate_row(row)
    assert [(i.field, i.rule) for i in issues] == [("user_action", "allowed_values")]
    assert "'liked'" in issues[0].reason


@pytest.mark.parametrize("value", [None, ""])
def test_missing_user_action(row, value):
    row["user_action"] = value
    assert _issues(row) == {("user_action", "required")}


@pytest.mark.parametrize("correction", [None, "", "   "])
def test_corrected_without_correction(row, correction):
    row.update(user_action="corrected", correction=correction)
    assert _issues(row) == {("correction", "required_when_corrected")}


@pytest.mark.parametrize("action", ["accepted", "copied", "regenerated"])
def test_correction_without_corrected_action_is_quarantined(row, action):
    """The row contradicts itself (a logging defect): the user kept or rejected the answer, yet a
    correction is logged. Neither the response nor the correction can be trusted as its target."""
    row.update(user_action=action, correction="something")
    issues = validate_row(row)
    assert {(i.field, i.rule) for i in issues} == {("correction", "only_when_corrected")}
    assert "something" not in issues[0].reason and repr(action) in issues[0].reason


@pytest.mark.parametrize("correction", [None, "", "   "])
def test_an_empty_correction_on_another_action_is_fine(row, correction):
    row.update(user_action="accepted", correction=correction)
    assert validate_row(row) == []


@pytest.mark.parametrize(
    ("score", "rule"),
    [
        (None, "required"),
        (float("nan"), "finite"),
        (1.7, "range"),
        (-0.1, "range"),
        (float("inf"), "finite"),
        (float("-inf"), "finite"),
        ("0.9", "type"),
        (True, "type"),
        (False, "type"),
    ],
)
def test_bad_quality_score(row, score, rule):
    row["quality_score"] = score
    assert _issues(row) == {("quality_score", rule)}


@pytest.mark.parametrize("score", [0, 1, 0.0, 1.0, 0.5])
def test_quality_score_bounds_are_inclusive(row, score):
    row["quality_score"] = score
    assert validate_row(row) == []


def test_every_issue_of_a_row_is_reported(row):
    row.update(
        request_id=None,
        prompt="",
        timestamp=datetime(2026, 1, 1),
        user_action="liked",
        quality_score=1.7,
    )
    assert _issues(row) == {
        ("request_id", "required"),
        ("prompt", "required"),
        ("timestamp", "type"),
        ("user_action", "allowed_values"),
        ("quality_score", "range"),
    }


def test_empty_row_reports_every_required_field():
    fields = {i.field for i in validate_row({})}
    assert fields == {
        "request_id",
        "user_id",
        "prompt",
        "response",
        "task_type",
        "timestamp",
        "user_action",
        "quality_score",
    }


# Hostile structure: oversized text, control characters, implausible or future timestamps.


@pytest.mark.parametrize("field", ["prompt", "response", "correction", "context", "user_id"])
@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\u202e", "\u2066", "\x85"])
def test_control_characters_are_quarantined(row, field, char):
    row[field] = f"looks fine{char}but is not"
    issues = validate_row(row)
    assert ("control_characters" in {i.rule for i in issues if i.field == field}), issues
    reason = next(i.reason for i in issues if i.rule == "control_characters")
    assert f"U+{ord(char):04X}" in reason and "looks fine" not in reason  # never quotes the text


@pytest.mark.parametrize("text", ["tab\tnewline\ncr\r", "emoji \U0001F600 and accents éü", "zero\u200bwidth"])
def test_ordinary_whitespace_and_unicode_are_fine(row, text):
    row["prompt"] = text
    assert validate_row(row) == []


def test_oversized_text_is_quarantined_without_quoting_it(row):
    row["response"] = "x" * 1001
    (issue,) = validate_row(row, ValidationLimits(max_text_chars=1000))
    assert (issue.field, issue.rule) == ("response", "max_length")
    assert "1001 characters > 1000" in issue.reason and "xxx" not in issue.reason
    row["response"] = "x" * 1000
    assert validate_row(row, ValidationLimits(max_text_chars=1000)) == []


def test_future_and_implausible_timestamps(row):
    ingested = row["ingested_at"]
    row["timestamp"] = ingested + timedelta(minutes=11)
    assert _issues(row) == {("timestamp", "future")}
    row["timestamp"] = ingested + timedelta(minutes=9)  # within the allowed clock skew
    assert validate_row(row) == []
    row["timestamp"] = datetime(1999, 12, 31, tzinfo=UTC)
    assert _issues(row) == {("timestamp", "plausible")}


def test_huge_bad_action_is_not_echoed_whole(row):
    row["user_action"] = "A" * 10_000
    (issue,) = validate_row(row)
    assert issue.rule == "allowed_values" and len(issue.reason) < 200


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("request_id", " req-1", "whitespace around it"),
        ("request_id", "req-1\u200b", "invisible or space character U+200B"),
        ("request_id", "ｒｅｑ-1", "non-ASCII character U+FF52"),  # full-width: NFKC folds it onto req-1
        ("request_id", "req-Ã©1", "non-ASCII character U+00C3"),  # mojibake
        ("user_id", "<b>ann</b>", "holds '<' at 0"),
        ("user_id", "a/../b", "path segment"),
        ("user_id", "team/ann", "holds '/' at 4"),
        ("user_id", "ann smith", "invisible or space character U+0020"),
        ("model_version", "org/../model", "'..' path segment"),
        ("model_version", "org/model/", "does not match"),
        ("model_version", "v1\u00a0", "whitespace around it"),
    ],
)  # fmt: skip
def test_identifiers_that_are_not_plain_are_quarantined(row, field, value, why):
    row[field] = value
    issues = validate_row(row)
    assert {(i.field, i.rule) for i in issues} == {(field, "format")}, issues
    assert why in issues[0].reason and value.strip() not in issues[0].reason


@pytest.mark.parametrize(
    ("field", "value"),
    [("request_id", "chatcmpl-9x8Y7z"), ("request_id", "0b6f1c2e-52a1-4d3e-9a57-1f1c0e2d3b4a"),
     ("user_id", "ann.smith+test@example.com"), ("user_id", "anon:42"), ("user_id", "auth0|5f7c8ec7c33c6c004bbafe82"), ("model_version", "meta-llama/Llama-3.1-8B"),
     ("model_version", "base:tiny-llama")],
)  # fmt: skip
def test_plain_identifiers_pass(row, field, value):
    row[field] = value
    assert validate_row(row) == []


def test_a_product_with_other_ids_sets_its_pattern(row):
    from flywheel.config import ValidationConfig
    from flywheel.validation import ValidationLimits

    row["user_id"] = "team/ann"
    limits = ValidationLimits.from_config(ValidationConfig(id_pattern=r"[a-z]+(/[a-z]+)?|req-\d+"))
    assert validate_row(row, limits) == []
    with pytest.raises(ValueError, match="not a regular expression"):
        ValidationConfig(id_pattern="[a-")
