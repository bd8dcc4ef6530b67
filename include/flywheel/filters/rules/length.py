"""Length: the response (the training target: the user's correction when there is one) must be
longer than ``min_words`` words or ``min_tokens`` tokens, as the method asks: very short answers
carry too little to learn from. ``length_counts: prompt_and_response`` counts the prompt with
it, for a product whose right answers are a word or two (checkable by exact match), where the
response alone would reject every exchange."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from flywheel.config import FiltersConfig, LengthCounts
from flywheel.filters.base import ChainInputs, FilterDecision, RowRule
from flywheel.records import TrainingCandidate
from flywheel.text import count_tokens, count_words


@dataclass(frozen=True)
class LengthRule(RowRule):
    name = "length"
    settings = ("length_counts", "min_words", "min_tokens")

    min_words: int
    min_tokens: int
    counts: LengthCounts = "response"

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        return cls(config.min_words, config.min_tokens, config.length_counts)

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        if not c.target.strip():
            return FilterDecision(c.request_id, self.name, False, 0.0, float(self.min_words), "empty answer: nothing to learn")
        if self.counts == "response":
            what, text = "response", c.target
        else:
            what, text = "prompt + response", f"{c.prompt} {c.target}"
        words, tokens = count_words(text), count_tokens(text)
        ok = words > self.min_words or tokens > self.min_tokens
        if ok:
            reason = f"{what}: {words} words / {tokens} tokens exceeds {self.min_words} words or {self.min_tokens} tokens"
        else:
            reason = f"too short: {what} {words} words <= {self.min_words} and {tokens} tokens <= {self.min_tokens}"
        return FilterDecision(c.request_id, self.name, ok, float(words), float(self.min_words), reason)
