"""User action: only interactions the user endorsed (accepted, copied) or fixed (corrected) teach
anything; a regenerated answer is one the user walked away from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from flywheel.config import FiltersConfig
from flywheel.filters.base import ChainInputs, FilterDecision, RowRule
from flywheel.records import TrainingCandidate


@dataclass(frozen=True)
class ActionRule(RowRule):
    name = "user_action"
    settings = ("allowed_actions",)

    allowed: tuple[str, ...]

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        return cls(tuple(config.allowed_actions))

    def pushdown(self) -> dict[str, Any]:
        return {"allowed_actions": self.allowed}

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        ok = c.user_action in self.allowed
        reason = f"action {c.user_action!r} is allowed" if ok else f"action {c.user_action!r} is not in {list(self.allowed)}"
        return FilterDecision(c.request_id, self.name, ok, None, None, reason)
