"""What a filter rule is, and what it judges: the contract every module in `flywheel.filters.rules`
fulfils, so that the chain, the pushdown, calibration, the metrics and the report can take the
rules from one registry instead of each keeping its own list."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import Any, ClassVar, Self

from flywheel.config import FiltersConfig
from flywheel.data.dataset import user_message
from flywheel.filters.dedup import DedupIndex
from flywheel.filters.pii import PiiScanner
from flywheel.filters.scorers import GroundingScorer, ToxicityScorer
from flywheel.records import TrainingCandidate


@dataclass(frozen=True)
class FilterDecision:
    request_id: str
    rule: str
    kept: bool
    score: float | None
    threshold: float | None
    reason: str


class Stage(IntEnum):
    """When a rule judges. Each stage judges the rows every earlier stage kept; within a stage
    every rule judges every row (no short-circuit), so the decisions show all the reasons a row
    failed and calibration sees each rule on its own."""

    # Every candidate, on its non-text columns: the only stage the warehouse query can decide.
    CHEAP = 1
    # Rewrites the text (PII) before any later rule, index or file sees it.
    REDACT = 2
    # The text scorers, batched.
    TEXT = 3
    # Against an index carried across batches: only what every other rule kept may claim a slot.
    DEDUP = 4
    # The whole window at once, after the stream (selection); exactly one such rule.
    WINDOW = 5


@dataclass(frozen=True)
class Calibration:
    """A threshold that `flywheel.review.calibrate` may fit to human verdicts: the
    `FiltersConfig` field holding it, and which side of it a score passes."""

    setting: str
    keeps_at_or_above: bool

    def keeps(self, score: float, threshold: float) -> bool:
        return score >= threshold if self.keeps_at_or_above else score < threshold


@dataclass(frozen=True)
class ChainInputs:
    """What a chain is built from besides its config: the golden set's inputs, earlier training
    sets (for dedup), and detectors a caller has already loaded (else each rule makes its own)."""

    golden_inputs: Sequence[str] = ()
    history: DedupIndex | None = None
    toxicity: ToxicityScorer | None = None
    grounding: GroundingScorer | None = None
    pii: PiiScanner | None = None


def interaction_text(c: TrainingCandidate) -> str:
    """What a training example is made of: the user turn (context + prompt) and the target."""
    return f"{user_message(c.prompt, c.context)}\n{c.target}"


def input_text(c: TrainingCandidate) -> str:
    return user_message(c.prompt, c.context)


class Row:
    """One candidate on its way through a batch: what the next rule sees (the REDACT stage
    replaces it), the texts the text rules share, and the decisions so far by rule name."""

    def __init__(self, candidate: TrainingCandidate) -> None:
        self.candidate = candidate
        self.decisions: dict[str, FilterDecision] = {}

    def rewrite(self, candidate: TrainingCandidate) -> None:
        self.candidate = candidate
        self.__dict__.pop("text", None)
        self.__dict__.pop("input", None)

    @cached_property
    def text(self) -> str:
        return interaction_text(self.candidate)

    @cached_property
    def input(self) -> str:
        return input_text(self.candidate)

    @property
    def kept(self) -> bool:
        return all(d.kept for d in self.decisions.values())

    def score(self, rule: type[Rule]) -> float | None:
        return self.decisions[rule.name].score


class Rule(ABC):
    """A filter rule: its name (the ``rule`` of its decisions), its stage, the `FiltersConfig`
    fields it reads (``settings``; `from_config` reads no other), and optionally the threshold
    it exposes to calibration and the part of it the warehouse query decides (`pushdown`)."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    settings: ClassVar[tuple[str, ...]]
    calibration: ClassVar[Calibration | None] = None

    @classmethod
    @abstractmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self: ...

    def pushdown(self) -> dict[str, Any]:
        """The `flywheel.warehouse.Pushdown` fields this rule sets, so that the window query
        decides it next to the data and withholds the text of the rows it rejects. Only a
        CHEAP rule, whose SQL comparison agrees with `decide` by construction, may have one."""
        return {}


class BatchRule(Rule):
    """A rule that judges each batch's rows: one decision per row, in order."""

    @abstractmethod
    def judge(self, rows: Sequence[Row]) -> list[FilterDecision]: ...


class RowRule(BatchRule):
    """A CHEAP rule: one candidate at a time, on its columns, with no detector to load."""

    stage: ClassVar[Stage] = Stage.CHEAP

    @abstractmethod
    def decide(self, c: TrainingCandidate) -> FilterDecision: ...

    def judge(self, rows: Sequence[Row]) -> list[FilterDecision]:
        return [self.decide(r.candidate) for r in rows]


@dataclass
class Survivor:
    """A candidate every batch rule kept (its text redacted), with what selection ranks it by."""

    candidate: TrainingCandidate
    score: float


class WindowRule(Rule):
    """The rule that judges the window after the stream: it scores each survivor as its batch
    ends (so only ``(id, type, score)`` is held per survivor), then decides over all of them."""

    stage: ClassVar[Stage] = Stage.WINDOW

    @abstractmethod
    def score(self, row: Row) -> float: ...

    @abstractmethod
    def select(
        self, survivors: Sequence[tuple[str, str, float]], candidates_per_type: dict[str, int]
    ) -> tuple[list[FilterDecision], set[str]]: ...
