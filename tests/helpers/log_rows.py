"""Production-log rows for tests: one well-formed row, and whatever a test overrides in it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 2, 2, tzinfo=UTC)  # a Monday


def log_row(request_id: str | None, ts: datetime | None, **overrides: Any) -> dict[str, Any]:
    """A well-formed production-log row, long enough to pass the length filter where it counts
    the prompt with the response, as for the simulated product (`simulated_product`)."""
    row: dict[str, Any] = {
        "request_id": request_id,
        "timestamp": ts,
        "user_id": "user-0001",
        "prompt": "Please rewrite the word garden in capital letters for the heading of my school poster, I want it to stand out.",
        "response": "GARDEN",
        "user_action": "accepted",
        "correction": None,
        "task_type": "uppercase",
        "quality_score": 0.9,
        "included_in_training": False,
        "model_version": "base:tiny-llama",
        "context": None,
        "ingested_at": (ts or T0) + timedelta(seconds=5),
    }
    row.update(overrides)
    return row
