"""Dedup: exact and near duplicates of an interaction, within the window and (with
``dedup_against_history``, which the cycle reads to build the history) against every earlier
training set. It judges only what every other rule kept, so the first *usable* copy wins and
later ones are rejected with the request they duplicate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from flywheel.config import FiltersConfig
from flywheel.filters.base import BatchRule, ChainInputs, FilterDecision, Row, Stage
from flywheel.filters.dedup import DedupIndex, Fingerprints, MinHasher


@dataclass(frozen=True)
class DedupRule(BatchRule):
    name = "dedup"
    stage = Stage.DEDUP
    settings = ("near_dup_threshold", "minhash_permutations", "shingle_words", "dedup_against_history")

    # Carried across batches: earlier training sets, then each kept row of the window in order.
    index: DedupIndex
    threshold: float

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        hasher = MinHasher.from_config(config)
        history = inputs.history
        if history is not None and history.hasher.spec != hasher.spec:
            raise ValueError(f"history fingerprints use {history.hasher.spec}, the chain {hasher.spec}")
        index = history if history is not None else DedupIndex(hasher, config.near_dup_threshold)
        return cls(index, config.near_dup_threshold)

    def judge(self, rows: Sequence[Row]) -> list[FilterDecision]:
        return self.judge_fingerprints(self.index.hasher.fingerprint([r.text for r in rows]), [r.candidate.request_id for r in rows])

    def judge_fingerprints(self, fp: Fingerprints, request_ids: Sequence[str]) -> list[FilterDecision]:
        """The decisions for texts already fingerprinted (a filter shard does that part), in
        order: each is checked against the index and the earlier ones, and a first copy joins it."""
        dups = self.index.check(fp, [f"request {r}" for r in request_ids])
        return [
            FilterDecision(
                rid, self.name, m is None, m.similarity if m else 0.0, self.threshold,
                "first copy" if m is None else f"{m.kind} duplicate of {m.label} (similarity {m.similarity:.2f})",
            )
            for rid, m in zip(request_ids, dups, strict=True)
        ]  # fmt: skip
