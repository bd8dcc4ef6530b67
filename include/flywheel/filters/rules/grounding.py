"""Grounding: where a context is given, the share of the answer it supports must reach
``min_grounding``; a row without context is not judged (kept, with no score)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from flywheel.config import FiltersConfig
from flywheel.filters.base import BatchRule, Calibration, ChainInputs, FilterDecision, Row, Stage
from flywheel.filters.scorers import GroundingScorer, make_grounding_scorer


@dataclass(frozen=True)
class GroundingRule(BatchRule):
    name = "grounding"
    stage = Stage.TEXT
    settings = ("grounding_scorer", "min_grounding")
    calibration = Calibration("min_grounding", keeps_at_or_above=True)

    scorer: GroundingScorer
    min_grounding: float

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        return cls(inputs.grounding or make_grounding_scorer(config.grounding_scorer), config.min_grounding)

    def judge(self, rows: Sequence[Row]) -> list[FilterDecision]:
        with_context = [i for i, r in enumerate(rows) if r.candidate.context]
        pairs = [(rows[i].candidate.target, rows[i].candidate.context or "") for i in with_context]
        grounded = dict(zip(with_context, self.scorer.score(pairs), strict=True))
        out: list[FilterDecision] = []
        for i, row in enumerate(rows):
            g = grounded.get(i)
            ok = g is None or g >= self.min_grounding
            out.append(
                FilterDecision(
                    row.candidate.request_id, self.name, ok, g, self.min_grounding if g is not None else None,
                    "no context: not applicable" if g is None
                    else f"grounding {g:.3f} {'>=' if ok else '<'} {self.min_grounding} ({self.scorer.name})",
                )
            )  # fmt: skip
        return out
