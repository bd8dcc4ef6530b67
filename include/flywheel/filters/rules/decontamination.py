"""Decontamination: no kept input may be an exact or near duplicate of a golden-set input, at
its own threshold: never train on the test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from flywheel.config import FiltersConfig
from flywheel.filters.base import BatchRule, ChainInputs, FilterDecision, Row, Stage
from flywheel.filters.dedup import DedupIndex, MinHasher


def golden_index(config: FiltersConfig, golden_inputs: Sequence[str]) -> DedupIndex:
    """The golden set's inputs, indexed for decontamination at its own threshold."""
    hasher = MinHasher.from_config(config)
    index = DedupIndex(hasher, config.decontamination_threshold)
    if golden_inputs:
        index.add(hasher.fingerprint(list(golden_inputs)), [f"golden item {i}" for i in range(len(golden_inputs))])
    return index


@dataclass(frozen=True)
class DecontaminationRule(BatchRule):
    name = "decontamination"
    stage = Stage.TEXT
    settings = ("decontamination_threshold", "minhash_permutations", "shingle_words")

    golden: DedupIndex

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        return cls(golden_index(config, inputs.golden_inputs))

    def judge(self, rows: Sequence[Row]) -> list[FilterDecision]:
        fp = self.golden.hasher.fingerprint([r.input for r in rows])
        matches = self.golden.check(fp, [r.candidate.request_id for r in rows], add_unique=False)
        threshold = self.golden.threshold
        return [
            FilterDecision(
                row.candidate.request_id, self.name, m is None, m.similarity if m else 0.0, threshold,
                "no golden-set overlap" if m is None
                else f"input is an {m.kind} duplicate of {m.label} (similarity {m.similarity:.2f}): never train on the test",
            )
            for row, m in zip(rows, matches, strict=True)
        ]  # fmt: skip
