"""The flywheel record: one production interaction, and how a log row becomes one.

Production logs are stored loosely typed (every column nullable, the action a free string), so
that a malformed row still lands in the warehouse and can be quarantined with its reason instead
of breaking the loader or, worse, vanishing. `flywheel.validation` judges a row; only a row it
passed becomes a `TrainingCandidate`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class TrainingCandidate:
    """One production interaction that may become a training example."""

    request_id: str
    timestamp: datetime
    user_id: str
    prompt: str
    response: str
    user_action: str
    correction: str | None
    task_type: str
    quality_score: float
    included_in_training: bool = False
    model_version: str | None = None
    context: str | None = None

    @property
    def target(self) -> str:
        """What the model should have said: the user's correction when there is one."""
        if self.user_action == "corrected" and self.correction:
            return self.correction
        return self.response

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


PRODUCTION_LOG_FIELDS = (
    "request_id",
    "timestamp",
    "user_id",
    "prompt",
    "response",
    "user_action",
    "correction",
    "task_type",
    "quality_score",
    "included_in_training",
    "model_version",
    "context",
)

# The text fields a pushed-down read may withhold, and the facts it returns about each instead.
ELIDABLE_TEXT_FIELDS = ("prompt", "response", "correction", "context")


def content_fingerprint(row: dict[str, Any]) -> str:
    """The row's content (everything but its ingestion time), to tell a re-delivery of the same
    event from two different events that share a request_id."""
    fields = {k: row.get(k) for k in PRODUCTION_LOG_FIELDS}
    if row.get("text_digest") is not None:  # a snapshot row: its texts may have been withheld
        for name in ELIDABLE_TEXT_FIELDS:
            fields.pop(name)
        fields["text_digest"] = row["text_digest"]
    return hashlib.sha256(json.dumps(fields, default=str, sort_keys=True).encode()).hexdigest()


def candidate_from_row(row: dict[str, Any]) -> TrainingCandidate:
    """Build a candidate from a row that `validate_row` passed."""
    return TrainingCandidate(
        request_id=row["request_id"],
        timestamp=row["timestamp"],
        user_id=row["user_id"],
        prompt=row["prompt"],
        response=row["response"],
        user_action=row["user_action"],
        correction=row.get("correction") or None,
        task_type=row["task_type"],
        quality_score=float(row["quality_score"]),
        included_in_training=bool(row.get("included_in_training") or False),
        model_version=row.get("model_version"),
        context=row.get("context") or None,
    )


def row_to_json(row: dict[str, Any]) -> str:
    """The raw row, kept with its quarantine reason so nothing is lost."""
    return json.dumps(row, default=str, sort_keys=True)
