"""PII: redact it in place (or drop the row) before any later rule, index or file sees the text.
A decision names the kinds and counts found, never a value."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Self

from flywheel.config import FiltersConfig
from flywheel.filters.base import BatchRule, ChainInputs, FilterDecision, Row, Stage
from flywheel.filters.pii import PiiScanner, default_scanner
from flywheel.records import TrainingCandidate


def redact_candidate(c: TrainingCandidate, scanner: Any) -> tuple[TrainingCandidate, tuple[str, ...]]:
    changes: dict[str, Any] = {}
    entities: list[str] = []
    for name in ("prompt", "response", "correction", "context"):
        value = getattr(c, name)
        if value:
            red = scanner.redact(value)
            if red.changed:
                changes[name] = red.text
                entities.extend(red.entities)
    return (replace(c, **changes) if changes else c), tuple(entities)


@dataclass(frozen=True)
class PiiRule(BatchRule):
    name = "pii"
    stage = Stage.REDACT
    settings = ("pii_policy", "pii_entities", "pii_min_score")

    scanner: PiiScanner
    drop: bool  # pii_policy "drop": reject the row instead of redacting it

    @classmethod
    def from_config(cls, config: FiltersConfig, inputs: ChainInputs) -> Self:
        return cls(inputs.pii or default_scanner(config.pii_entities, config.pii_min_score), config.pii_policy == "drop")

    def judge(self, rows: Sequence[Row]) -> list[FilterDecision]:
        out: list[FilterDecision] = []
        for row in rows:
            rid = row.candidate.request_id
            redacted, entities = redact_candidate(row.candidate, self.scanner)
            if not entities:
                out.append(FilterDecision(rid, self.name, True, 0.0, 0.0, "no PII found"))
                row.rewrite(redacted)
                continue
            found = ", ".join(f"{e} x{n}" for e, n in sorted(Counter(entities).items()))
            if self.drop:
                out.append(FilterDecision(rid, self.name, False, float(len(entities)), 0.0, f"PII found ({found}); policy drops the row"))
            else:
                out.append(FilterDecision(rid, self.name, True, float(len(entities)), 0.0, f"PII redacted ({found})"))
                row.rewrite(redacted)
        return out
