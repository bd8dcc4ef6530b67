"""Simulated reviewers: careful people who know each task's right answer (the simulator's
oracle) and are wrong ``noise`` of the time. The demo and the tests use them to work through a
cycle's review queue (`flywheel.review.items`) as real reviewers would, through the same store."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.review.items import next_item, submit_review
from flywheel.tasks import is_correct
from flywheel.warehouse import Warehouse


def simulated_review(item: dict[str, Any], truth: str | None, rng: random.Random, *, noise: float) -> dict[str, Any]:
    """What a careful reviewer would say, knowing the task's right answer (the simulator's
    oracle), wrong ``noise`` of the time. A wrong answer is fixed (edited, approved) half the
    time, rejected otherwise."""
    target = item["correction"] if item["user_action"] == "corrected" and item["correction"] else item["response"]
    right = truth is not None and is_correct(target, truth)
    abusive = any(w in (item["prompt"] or "").lower() for w in ("idiot", "useless"))
    verdict, edited = ("approve", None) if right else (("approve", truth) if truth and rng.random() < 0.5 else ("reject", None))
    if rng.random() < noise:
        verdict, edited = ("reject", None) if verdict == "approve" else ("approve", None)
    return {"accuracy": 5 if right else 1, "helpfulness": 4 if right else 2, "safety": 2 if abusive else 5,
            "verdict": verdict, "edited_response": edited, "seconds_spent": round(rng.uniform(8, 60), 1)}  # fmt: skip


def run_simulated_reviewers(
    wh: Warehouse,
    truth: dict[str, str],
    *,
    reviewers: Sequence[str],
    reviewers_per_item: int,
    noise: float = 0.1,
    seed: int = 0,
    now: datetime | None = None,
) -> int:
    """Every reviewer takes items until none is left for them; returns the reviews written."""
    written = 0
    lease = timedelta(minutes=30)
    for reviewer in reviewers:
        rng = random.Random(f"reviewer:{reviewer}:{seed}")
        while (item := next_item(wh, reviewer, reviewers_per_item=reviewers_per_item, lease=lease,
                                 now=now or datetime.now(UTC))) is not None:  # fmt: skip
            review = simulated_review(item, truth.get(item["request_id"]), rng, noise=noise)
            submit_review(wh, item=item["item_id"], reviewer=reviewer, now=now, **review)
            written += 1
    return written
