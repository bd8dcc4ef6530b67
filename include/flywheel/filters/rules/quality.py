"""Quality score: keep what the product's own quality estimate rates at least ``min_score``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from flywheel.config import FiltersConfig
from flywheel.filters.base import Calibration, ChainInputs, FilterDecision, RowRule
from flywheel.records import TrainingCandidate


@dataclass(frozen=True)
class QualityScoreRule(RowRule):
    name = "quality_score"
    settings = ("min_quality_score",)
    calibration = Calibration("min_quality_score", keeps_at_or_above=True)

    min_score: float

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        return cls(config.min_quality_score)

    def pushdown(self) -> dict[str, Any]:
        return {"min_quality_score": self.min_score}

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        ok = c.quality_score >= self.min_score
        op = ">=" if ok else "<"
        return FilterDecision(
            c.request_id, self.name, ok, c.quality_score, self.min_score, f"quality_score {c.quality_score:.3f} {op} {self.min_score}"
        )
