"""Selection: rank what every other rule kept by a composite score (quality, grounding,
non-toxicity, correction; weights in ``score_weights``) and keep the best ``keep_fraction`` of each
task type's candidates in the window (at least ``min_per_task_type``), so a rare type keeps its
share instead of losing every slot to the common ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from flywheel.config import FiltersConfig
from flywheel.filters.base import ChainInputs, FilterDecision, Row, WindowRule
from flywheel.filters.rules.grounding import GroundingRule
from flywheel.filters.rules.toxicity import ToxicityRule


def select_top(
    survivors: Sequence[tuple[str, str, float]],
    candidates_per_type: dict[str, int],
    *,
    keep_fraction: float,
    min_per_task_type: int,
) -> tuple[list[FilterDecision], set[str]]:
    """Keep the best-scored survivors of each task type: its quota is ``keep_fraction`` of the
    type's candidates in the window (at least ``min_per_task_type``).

    ``survivors`` are ``(request_id, task_type, score)``; ties go to the smaller request id.
    """
    by_type: dict[str, list[tuple[str, float]]] = {}
    for rid, task_type, score in survivors:
        by_type.setdefault(task_type, []).append((rid, score))
    decisions: list[FilterDecision] = []
    selected: set[str] = set()
    for task_type, items in sorted(by_type.items()):
        items.sort(key=lambda x: (-x[1], x[0]))
        quota = max(min_per_task_type, math.ceil(keep_fraction * candidates_per_type.get(task_type, len(items))))
        cutoff = items[min(quota, len(items)) - 1][1]
        for rank, (rid, score) in enumerate(items, start=1):
            ok = rank <= quota
            if ok:
                selected.add(rid)
            decisions.append(
                FilterDecision(
                    rid, SelectionRule.name, ok, score, cutoff,
                    f"rank {rank} of {len(items)} in task_type {task_type!r} (quota {quota}, score {score:.3f}"
                    + (")" if ok else f" < cutoff {cutoff:.3f})"),
                )
            )
    return decisions, selected


@dataclass(frozen=True)
class SelectionRule(WindowRule):
    name = "selection"
    settings = ("keep_fraction", "min_per_task_type", "score_weights")

    keep_fraction: float
    min_per_task_type: int
    weights: dict[str, float]

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        return cls(config.keep_fraction, config.min_per_task_type, dict(config.score_weights))

    def score(self, row: Row) -> float:
        c, w = row.candidate, self.weights
        g = row.score(GroundingRule)
        tox = row.score(ToxicityRule) or 0.0
        return (
            w.get("quality", 0) * c.quality_score
            + w.get("grounding", 0) * (1.0 if g is None else g)
            + w.get("non_toxicity", 0) * (1.0 - tox)
            + w.get("correction", 0) * (1.0 if c.user_action == "corrected" else 0.0)
        ) / (sum(w.values()) or 1.0)

    def select(
        self, survivors: Sequence[tuple[str, str, float]], candidates_per_type: dict[str, int]
    ) -> tuple[list[FilterDecision], set[str]]:
        return select_top(survivors, candidates_per_type, keep_fraction=self.keep_fraction, min_per_task_type=self.min_per_task_type)
