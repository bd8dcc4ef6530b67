"""A task the product answers, and how an answer to it is judged: the unit of the golden set.

The core knows tasks only through this record and through `TaskTemplates`, the interface a
product's task templates offer (the golden set the core draws when no curated file is set, and
the synthetic examples of the cold start). The simulated product is one such provider
(`flywheel.sim.traffic`); `flywheel.providers` finds providers by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Task:
    """One request the product receives, with the answer a careful human would accept."""

    task_type: str
    prompt: str
    answer: str
    context: str | None = None


def normalise_answer(text: str | None) -> str:
    return " ".join((text or "").split())


def is_correct(answer: str | None, expected: str) -> bool:
    """Exact match after whitespace normalisation: the golden set's references are checkable."""
    return normalise_answer(answer) == normalise_answer(expected)


class TaskTemplates(Protocol):
    """What a product's task templates provide (a module with these names will do)."""

    TASK_TYPES: Sequence[str]

    def golden_set(self, n: int, seed: int) -> list[Task]:
        """A fixed evaluation set: the same ``(n, seed)`` always gives the same tasks."""
        ...

    def synthetic_tasks(self, per_task_type: int, seed: int) -> list[Task]:
        """``per_task_type`` template tasks of every task type, for the cold start."""
        ...
