"""Toxicity: the interaction's toxicity, by the configured scorer, must stay below ``max_toxicity``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from flywheel.config import FiltersConfig
from flywheel.filters.base import BatchRule, Calibration, ChainInputs, FilterDecision, Row, Stage
from flywheel.filters.scorers import ToxicityScorer, make_toxicity_scorer


@dataclass(frozen=True)
class ToxicityRule(BatchRule):
    name = "toxicity"
    stage = Stage.TEXT
    settings = ("toxicity_scorer", "max_toxicity")
    calibration = Calibration("max_toxicity", keeps_at_or_above=False)

    scorer: ToxicityScorer
    max_toxicity: float

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        return cls(inputs.toxicity or make_toxicity_scorer(config.toxicity_scorer), config.max_toxicity)

    def judge(self, rows: Sequence[Row]) -> list[FilterDecision]:
        scores = self.scorer.score([r.text for r in rows])
        out: list[FilterDecision] = []
        for row, s in zip(rows, scores, strict=True):
            ok = s < self.max_toxicity
            out.append(
                FilterDecision(
                    row.candidate.request_id, self.name, ok, s, self.max_toxicity,
                    f"toxicity {s:.3f} {'<' if ok else '>='} {self.max_toxicity} ({self.scorer.name})",
                )
            )  # fmt: skip
        return out
