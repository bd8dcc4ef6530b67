"""The chain: every registered rule over batches of candidates, stage by stage, then selection
over the window; and the warehouse pushdown the rules declare."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import groupby
from typing import Any

from flywheel.config import FiltersConfig
from flywheel.filters.base import (
    BatchRule,
    ChainInputs,
    FilterDecision,
    Row,
    RowRule,
    Stage,
    Survivor,
    WindowRule,
)
from flywheel.filters.dedup import DedupIndex
from flywheel.filters.pii import PiiScanner
from flywheel.filters.rules import RULES
from flywheel.filters.rules.dedup import DedupRule
from flywheel.filters.scorers import GroundingScorer, ToxicityScorer
from flywheel.records import TrainingCandidate
from flywheel.warehouse import Pushdown


def basic_rules(config: FiltersConfig) -> list[RowRule]:
    """The CHEAP rules, built from ``config``."""
    return [rule.from_config(config, ChainInputs()) for rule in RULES if issubclass(rule, RowRule)]


def pushdown_for(config: FiltersConfig) -> Pushdown:
    """The window query's `Pushdown`: the fields every rule that declares one sets, so that SQL
    and Python decide those rules with the same values."""
    fields: dict[str, Any] = {}
    for rule in basic_rules(config):
        fields.update(rule.pushdown())
    return Pushdown(**fields)


def apply_filters(
    candidates: Iterable[TrainingCandidate], rules: Sequence[RowRule]
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


@dataclass
class FilterBatch:
    """A batch of valid rows: candidates with their text, and rows the pushdown rejected."""

    candidates: Sequence[TrainingCandidate]
    pushed_down: Sequence[TrainingCandidate] = ()


@dataclass
class FilterOutcome:
    decisions: list[FilterDecision]
    survivors: list[Survivor]


class FilterChain:
    """Every registered rule over batches of candidates, with a decision per row and rule.

    State carried across batches: the dedup index (earlier training sets, then each kept row of
    the window in order), so the first copy of an interaction wins and later ones are rejected
    with the request they duplicate.
    """

    def __init__(
        self,
        config: FiltersConfig,
        *,
        golden_inputs: Sequence[str] = (),
        history: DedupIndex | None = None,
        toxicity: ToxicityScorer | None = None,
        grounding: GroundingScorer | None = None,
        pii: PiiScanner | None = None,
    ) -> None:
        self.config = config
        inputs = ChainInputs(golden_inputs, history, toxicity, grounding, pii)
        rules = [rule.from_config(config, inputs) for rule in RULES]
        batch_rules = [r for r in rules if isinstance(r, BatchRule)]
        self.stages: list[tuple[Stage, list[BatchRule]]] = [
            (stage, list(group)) for stage, group in groupby(batch_rules, key=lambda r: r.stage)
        ]
        self.pushdown_rules: list[RowRule] = [r for r in batch_rules if isinstance(r, RowRule) and r.pushdown()]
        (self.selection,) = [r for r in rules if isinstance(r, WindowRule)]
        (self._dedup,) = [r for r in rules if isinstance(r, DedupRule)]
        # A filter shard runs every stage but dedup, and the merge dedups in window order: exact
        # only while dedup judges last, on what every other rule kept.
        assert self.stages[-1][0] is Stage.DEDUP, "dedup must be the chain's last stage"

    @property
    def dedup_rule(self) -> DedupRule:
        return self._dedup

    @property
    def dedup(self) -> DedupIndex:
        """The dedup index as it stands: earlier training sets and the window's kept rows so far."""
        return self._dedup.index

    def process(
        self, candidates: Sequence[TrainingCandidate], pushed_down: Sequence[TrainingCandidate] = (), *, dedup: bool = True
    ) -> FilterOutcome:
        """Judge a batch. ``pushed_down`` rows were rejected by the rules the warehouse query
        decided (`pushdown_for`) and came without their text: they get those rules' decisions
        only. Without ``dedup`` the last stage is left out and the survivors are those every
        other rule kept: a filter shard's part, whose merge dedups the shards in window order."""
        decisions: list[FilterDecision] = []
        live = [Row(c) for c in candidates]
        for stage, rules in self.stages:
            if stage is Stage.DEDUP and not dedup:
                continue
            if live:
                judged = [rule.judge(live) for rule in rules]
                for i, row in enumerate(live):
                    for rule, mine in zip(rules, judged, strict=True):
                        row.decisions[rule.name] = mine[i]
                        decisions.append(mine[i])
                live = [row for row in live if row.kept]
            if stage is Stage.CHEAP:
                for c in pushed_down:
                    for rule in self.pushdown_rules:
                        d = rule.decide(c)
                        decisions.append(replace(d, reason=f"{d.reason} (decided in the warehouse query)"))
        return FilterOutcome(decisions, [Survivor(row.candidate, self.selection.score(row)) for row in live])


@dataclass
class StreamResult:
    candidates: int
    candidates_per_type: Counter[str]
    survivors: list[tuple[str, str, float]]  # (request_id, task_type, score), for selection


def filter_stream(
    batches: Iterable[FilterBatch],
    chain: FilterChain,
    *,
    on_decisions: Callable[[list[FilterDecision]], object],
    on_survivors: Callable[[list[Survivor]], object],
) -> tuple[StreamResult, list[FilterDecision], set[str]]:
    """Run ``chain`` over batches, then selection; memory stays bounded by the batch size plus
    the dedup index and one (id, type, score) per survivor.

    ``on_decisions`` and ``on_survivors`` receive each batch's output (to a file, the warehouse,
    or a counter). Returns the stream's counts, the selection decisions and the selected ids.
    """
    result = StreamResult(0, Counter(), [])
    for batch in batches:
        result.candidates += len(batch.candidates) + len(batch.pushed_down)
        result.candidates_per_type.update(c.task_type for c in (*batch.candidates, *batch.pushed_down))
        outcome = chain.process(batch.candidates, batch.pushed_down)
        on_decisions(outcome.decisions)
        if outcome.survivors:
            result.survivors.extend((s.candidate.request_id, s.candidate.task_type, s.score) for s in outcome.survivors)
            on_survivors(outcome.survivors)
    selection, selected = chain.selection.select(result.survivors, dict(result.candidates_per_type))
    on_decisions(selection)
    return result, selection, selected
