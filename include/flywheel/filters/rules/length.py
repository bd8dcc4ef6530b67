"""Length: the interaction (prompt + training target) must be longer than ``min_words`` words or
``min_tokens`` tokens: very short exchanges carry too little to learn from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from flywheel.config import FiltersConfig
from flywheel.filters.base import ChainInputs, FilterDecision, RowRule
from flywheel.records import TrainingCandidate
from flywheel.text import count_tokens, count_words


@dataclass(frozen=True)
class LengthRule(RowRule):
    name = "length"
    settings = ("min_words", "min_tokens")

    min_words: int
    min_tokens: int

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        return cls(config.min_words, config.min_tokens)

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        if not c.target.strip():
            return FilterDecision(c.request_id, self.name, False, 0.0, float(self.min_words), "empty answer: nothing to learn")
        text = f"{c.prompt} {c.target}"
        words, tokens = count_words(text), count_tokens(text)
        ok = words > self.min_words or tokens > self.min_tokens
        if ok:
            reason = f"{words} words / {tokens} tokens exceeds {self.min_words} words or {self.min_tokens} tokens"
        else:
            reason = f"too short: {words} words <= {self.min_words} and {tokens} tokens <= {self.min_tokens}"
        return FilterDecision(c.request_id, self.name, ok, float(words), float(self.min_words), reason)
