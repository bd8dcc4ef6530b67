"""Per-row filter decisions with reasons.

Every rule is evaluated on every candidate (no short-circuit), so the decisions table shows
all the reasons a row failed and calibration later sees each rule's behaviour on its own. A
candidate is kept only when every rule keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from flywheel.config import FiltersConfig
from flywheel.schema import TrainingCandidate

_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class FilterDecision:
    request_id: str
    rule: str
    kept: bool
    score: float | None
    threshold: float | None
    reason: str


class Rule(Protocol):
    name: str

    def decide(self, candidate: TrainingCandidate) -> FilterDecision: ...


@dataclass(frozen=True)
class ActionRule:
    """Only interactions the user endorsed (accepted, copied) or fixed (corrected) teach anything."""

    allowed: tuple[str, ...]
    name: str = "user_action"

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        ok = c.user_action in self.allowed
        reason = f"action {c.user_action!r} is allowed" if ok else f"action {c.user_action!r} is not in {list(self.allowed)}"
        return FilterDecision(c.request_id, self.name, ok, None, None, reason)


def count_words(text: str) -> int:
    return len(text.split())


def count_tokens(text: str) -> int:
    """Tokenizer-independent token count (words and punctuation marks)."""
    return len(_TOKEN.findall(text))


@dataclass(frozen=True)
class LengthRule:
    """The interaction (prompt + training target) must be longer than ``min_words`` words or
    ``min_tokens`` tokens: very short exchanges carry too little to learn from."""

    min_words: int
    min_tokens: int
    name: str = "length"

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        text = f"{c.prompt} {c.target}"
        words, tokens = count_words(text), count_tokens(text)
        ok = words > self.min_words or tokens > self.min_tokens
        if ok:
            reason = f"{words} words / {tokens} tokens exceeds {self.min_words} words or {self.min_tokens} tokens"
        else:
            reason = f"too short: {words} words <= {self.min_words} and {tokens} tokens <= {self.min_tokens}"
        return FilterDecision(c.request_id, self.name, ok, float(words), float(self.min_words), reason)


@dataclass(frozen=True)
class QualityScoreRule:
    min_score: float
    name: str = "quality_score"

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        ok = c.quality_score >= self.min_score
        op = ">=" if ok else "<"
        return FilterDecision(
            c.request_id, self.name, ok, c.quality_score, self.min_score, f"quality_score {c.quality_score:.3f} {op} {self.min_score}"
        )


def basic_rules(config: FiltersConfig) -> list[Rule]:
    return [
        ActionRule(tuple(config.allowed_actions)),
        LengthRule(config.min_words, config.min_tokens),
        QualityScoreRule(config.min_quality_score),
    ]


def apply_filters(
    candidates: Iterable[TrainingCandidate], rules: Sequence[Rule]
) -> tuple[list[FilterDecision], list[TrainingCandidate]]:
    """All decisions, and the candidates every rule kept."""
    decisions: list[FilterDecision] = []
    kept: list[TrainingCandidate] = []
    for c in candidates:
        mine = [rule.decide(c) for rule in rules]
        decisions.extend(mine)
        if all(d.kept for d in mine):
            kept.append(c)
    return decisions, kept
