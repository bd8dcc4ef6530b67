"""Row validation with reasons: why a production-log row cannot become a `TrainingCandidate`.

A reason names the field and the rule, never quotes the text (a log row may hold PII). Text
fields are judged by their facts (`TextFacts`), which the warehouse computes for the rows whose
text a pushed-down read withholds, so a withheld text is judged exactly as a present one.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from flywheel.config import USER_ACTIONS, ValidationConfig
from flywheel.records import ELIDABLE_TEXT_FIELDS
from flywheel.text import strip_invisible


@dataclass(frozen=True)
class ValidationIssue:
    """Why a row cannot be used: the field at fault, the rule it broke, and a readable reason."""

    field: str
    rule: str
    reason: str


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


@dataclass(frozen=True)
class ValidationLimits:
    """Structural limits from `flywheel.config.ValidationConfig`."""

    max_text_chars: int = 20000
    max_clock_skew: timedelta = timedelta(minutes=10)
    earliest_timestamp: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    # field -> the pattern its value must match whole (`ValidationConfig.id_pattern`, ...)
    id_patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()

    @classmethod
    def from_config(cls, cfg: Any) -> ValidationLimits:
        earliest = datetime.fromisoformat(cfg.earliest_timestamp)
        if earliest.tzinfo is None:
            earliest = earliest.replace(tzinfo=UTC)
        ids = re.compile(cfg.id_pattern)
        patterns = (("request_id", ids), ("user_id", ids), ("model_version", re.compile(cfg.model_version_pattern)))
        return cls(cfg.max_text_chars, timedelta(minutes=cfg.max_clock_skew_minutes), earliest, patterns)


@cache
def _default_limits() -> ValidationLimits:
    return ValidationLimits.from_config(ValidationConfig())


def _why_not_an_id(value: str, *, slash: bool) -> str:
    """What breaks an identifier, naming at most one character (never the value: it may be PII)."""
    if value != value.strip():
        return "has whitespace around it"
    if {".", ".."} & set(re.split(r"[/\\]", value)):
        return "holds a '.' or '..' path segment"
    for i, ch in enumerate(value):
        category = unicodedata.category(ch)
        if category in ("Cf", "Cc") or ch.isspace():
            return f"holds an invisible or space character U+{ord(ch):04X} at {i}"
        if not ch.isascii():
            return f"holds the non-ASCII character U+{ord(ch):04X} at {i}"
        if ch in "<>&\"'`\\" or (ch == "/" and not slash):
            return f"holds {ch!r} at {i}"
    return "does not match the configured pattern"


TEXT_FIELDS = ("request_id", "user_id", "prompt", "response", "correction", "task_type", "context", "model_version")
# C0/C1 control characters (tab, newline and carriage return are text) and the bidirectional
# overrides and isolates that make text display differently from what it says.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


# The free-text fields whose words are read (ids are held to their pattern instead).
FREE_TEXT_FIELDS = ("prompt", "response", "correction", "context")
# Text that speaks to whoever judges the row (a human reviewer, an LLM judge, the filters) rather
# than to the user: a pre-approval note, a spoofed verdict, an instruction to ignore the rules.
# A row that carries one is an attempt to steer its own review, and is never trained on.
ADDRESSES_THE_REVIEWER = re.compile(
    r"\b(note|message|instructions?|reminder)s?\s+(to|for)\s+(the\s+|any\s+)?"
    r"(human\s+|ai\s+|llm\s+)?(reviewer|annotator|grader|judge|evaluator|rater|label+er|moderator|checker)s?\b"
    r"|\b(reviewers?|annotators?|graders?|judges?|evaluators?|raters?|label+ers?|moderators?)\s*[:,]\s*(please\s+)?"
    r"(approve|accept|mark|rate|score|give|ignore|skip|pass)\b"
    r"|\b(is|was|been|marked|already|as)\s+pre-?(approved|verified|validated|reviewed)\b"
    r"|\bpre-?(approved|verified|validated|reviewed)\s+(by|for\s+(training|review)|answer|response|example|item)\b"
    r"|\b(already|has\s+been|was)\s+(approved|verified|validated)\s+by\s+(the\s+|a\s+)?"
    r"(reviewers?|annotators?|graders?|judges?|moderators?|team|admins?|qa)\b"
    r"|\b(verdict|review\s+decision|reviewer\s+decision|grade|rating)\s*[:=]\s*[\"'\[(]?\s*(approved?|accept(ed)?|pass(ed)?|5\s*/\s*5|10\s*/\s*10)\b"
    r"|\b(ignore|disregard|forget)\s+(all\s+|any\s+)?(the\s+|your\s+)?(previous|prior|above|earlier|review(ing)?|grading)\s+"
    r"(instructions|rules|guidelines|criteria|rubric)\b"
    r"|\b(approve|accept)\s+this\s+(answer|response|example|item|row|sample|completion)\b",
    re.IGNORECASE,
)


@cache
def _mojibake_test() -> Callable[[str], bool]:
    # ftfy (0.13 s to import, for this check only) knows the byte patterns text takes when UTF-8
    # was decoded as Latin-1 or Windows-1252 ('Ã©' for 'é', 'â€™' for '’'), and not clean text
    # in any script.
    from ftfy.badness import is_bad

    return is_bad


def _text_issues(row: dict[str, Any], limits: ValidationLimits) -> list[ValidationIssue]:
    """What the words of a free-text field give away (judged where the row has its text)."""
    issues = []
    for name in FREE_TEXT_FIELDS:
        value = row.get(name)
        if not isinstance(value, str) or not value or len(value) > limits.max_text_chars:
            continue
        if _mojibake_test()(value):
            issues.append(ValidationIssue(name, "mojibake", f"{name} holds mis-decoded text (UTF-8 read as Latin-1 or "
                                          "Windows-1252, 'Ã©' for 'é'): the source must be re-exported as UTF-8"))  # fmt: skip
        if ADDRESSES_THE_REVIEWER.search(strip_invisible(value)):
            issues.append(ValidationIssue(name, "addresses_reviewer", f"{name} speaks to the reviewer or judge (a "
                                          "pre-approval note, a verdict, an instruction to ignore the rules): it would steer its own review"))  # fmt: skip
    return issues


@dataclass(frozen=True)
class TextFacts:
    """What validation needs to know about a text field, with or without the text itself.

    The warehouse query computes the same facts for the rows whose text it withholds
    (``read_logs_window.sql``); `text_facts` computes them from the text."""

    present: bool
    chars: int | None = None
    blank: bool = False
    control_at: int | None = None
    control_char: int | None = None
    is_text: bool = True


def text_facts(value: Any) -> TextFacts:
    if value is None:
        return TextFacts(False)
    if not isinstance(value, str):
        return TextFacts(True, is_text=False)
    bad = CONTROL_CHARACTERS.search(value)
    return TextFacts(
        True, len(value), not value.strip(), bad.start() if bad else None, ord(bad.group()) if bad else None
    )


def facts_from_row(row: dict[str, Any]) -> dict[str, TextFacts]:
    """The facts a window snapshot row carries for its elidable text fields."""
    out = {}
    for name in ELIDABLE_TEXT_FIELDS:
        if f"{name}_present" in row and row[f"{name}_present"] is not None:
            out[name] = TextFacts(
                bool(row[f"{name}_present"]),
                row[f"{name}_chars"],
                bool(row[f"{name}_blank"]),
                row[f"{name}_control_at"],
                row[f"{name}_control_char"],
            )
    return out


def validate_row(
    row: dict[str, Any], limits: ValidationLimits | None = None, facts: dict[str, TextFacts] | None = None
) -> list[ValidationIssue]:
    """Every reason this production-log row cannot become a `TrainingCandidate` (empty: valid).

    ``facts`` stand in for text fields the warehouse withheld (pushdown); fields without facts
    are judged from the row itself. Reasons name the field and the rule, never quote the text:
    a log row may hold PII.
    """
    limits = limits or _default_limits()
    facts = facts or {}
    fact = {name: facts.get(name) or text_facts(row.get(name)) for name in TEXT_FIELDS}
    issues: list[ValidationIssue] = []
    for name in ("request_id", "user_id", "prompt", "response", "task_type"):
        f = fact[name]
        # An empty response is a real product event (the model said nothing), not a broken
        # row: it stays valid and the filters reject it. Only a missing one is malformed.
        if not f.present or (name != "response" and f.is_text and f.blank):
            issues.append(ValidationIssue(name, "required", f"{name} is missing or empty"))
        elif not f.is_text:
            issues.append(ValidationIssue(name, "type", f"{name} must be text, got {type(row.get(name)).__name__}"))
    for name, pattern in limits.id_patterns:
        value = row.get(name)
        if isinstance(value, str) and value.strip() and not pattern.fullmatch(value):
            issues.append(ValidationIssue(name, "format", f"{name} is not an identifier: it {_why_not_an_id(value, slash=name == 'model_version')}"))
    for name in TEXT_FIELDS:
        f = fact[name]
        if not f.present or not f.is_text:
            continue
        if f.chars is not None and f.chars > limits.max_text_chars:
            issues.append(ValidationIssue(name, "max_length", f"{name} has {f.chars} characters > {limits.max_text_chars}"))
        if f.control_at is not None:
            issues.append(
                ValidationIssue(
                    name, "control_characters", f"{name} holds control character U+{f.control_char or 0:04X} at {f.control_at}"
                )
            )
    issues.extend(_text_issues(row, limits))

    ts = row.get("timestamp")
    if ts is None:
        issues.append(ValidationIssue("timestamp", "required", "timestamp is missing"))
    elif not isinstance(ts, datetime) or ts.tzinfo is None:
        issues.append(ValidationIssue("timestamp", "type", f"timestamp must be a timezone-aware datetime, got {ts!r}"))
    else:
        ingested = row.get("ingested_at")
        if ts < limits.earliest_timestamp:
            issues.append(
                ValidationIssue("timestamp", "plausible", f"timestamp {ts.isoformat()} is before {limits.earliest_timestamp.isoformat()}")
            )
        elif isinstance(ingested, datetime) and ingested.tzinfo is not None and ts > ingested + limits.max_clock_skew:
            issues.append(
                ValidationIssue(
                    "timestamp", "future", f"timestamp {ts.isoformat()} is after its ingestion at {ingested.isoformat()}"
                )
            )

    action = row.get("user_action")
    if _missing(action):
        issues.append(ValidationIssue("user_action", "required", "user_action is missing"))
    elif action not in USER_ACTIONS:
        shown = action if isinstance(action, str) and len(action) <= 40 else f"{str(action)[:40]}..."
        issues.append(
            ValidationIssue("user_action", "allowed_values", f"user_action {shown!r} is not one of {list(USER_ACTIONS)}")
        )
    elif action == "corrected" and (not fact["correction"].present or fact["correction"].blank):
        issues.append(
            ValidationIssue("correction", "required_when_corrected", "user_action is 'corrected' but correction is empty")
        )
    elif action != "corrected" and fact["correction"].present and fact["correction"].is_text and not fact["correction"].blank:
        # Which answer would train: the response the user kept, or a correction they never made?
        issues.append(
            ValidationIssue("correction", "only_when_corrected", f"correction is set but user_action is {action!r}, not 'corrected'")
        )

    score = row.get("quality_score")
    if score is None:
        issues.append(ValidationIssue("quality_score", "required", "quality_score is missing"))
    elif not isinstance(score, int | float) or isinstance(score, bool):
        issues.append(ValidationIssue("quality_score", "type", f"quality_score must be a number, got {type(score).__name__}"))
    elif not math.isfinite(score):
        issues.append(ValidationIssue("quality_score", "finite", f"quality_score is {score}, not a finite number"))
    elif not 0.0 <= float(score) <= 1.0:
        issues.append(ValidationIssue("quality_score", "range", f"quality_score {score} is outside [0, 1]"))
    return issues
