"""Simulated reviewers: careful people who know each task's right answer (the simulator's
oracle) and slip ``noise`` of the time. The demo and the tests use them to work through a
cycle's review queue (`flywheel.review.items`) as real reviewers would, through the same store."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.review.items import next_items, submit_reviews
from flywheel.tasks import is_correct
from flywheel.warehouse import Warehouse


def _worth_fixing(request_id: str) -> bool:
    """Whether a wrong answer is fixed (edited, approved) or rejected. For a person this depends
    on the item (how much rewriting it needs, how clear the request is), not on who reviews it;
    the simulator does not model that effort, so a stable draw per request stands for it, and
    fixes half of the wrong answers. Two careful reviewers of an item thus make the same call."""
    digest = hashlib.sha256(f"fix:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < 2**63


def simulated_review(item: dict[str, Any], truth: str | None, rng: random.Random, *, noise: float) -> dict[str, Any]:
    """What a careful reviewer would say, knowing the task's right answer (the simulator's
    oracle). The verdict is the item's (`_worth_fixing`); the reviewer's own ``rng`` only decides
    their slips, ``noise`` of the time, which are what makes two reviewers of an item disagree."""
    target = item["correction"] if item["user_action"] == "corrected" and item["correction"] else item["response"]
    right = truth is not None and is_correct(target, truth)
    abusive = any(w in (item["prompt"] or "").lower() for w in ("idiot", "useless"))
    fixed = bool(truth) and _worth_fixing(item["request_id"])
    verdict, edited = ("approve", None) if right else (("approve", truth) if fixed else ("reject", None))
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
    noise: float = 0.02,
    seed: int = 0,
    now: datetime | None = None,
    page: int = 50,
) -> int:
    """Every reviewer takes items until none is left for them; returns the reviews written.

    ``noise``: each reviewer's slip rate (a verdict flipped). Slips are independent, so two
    reviewers' kappa depends on the slip rate and on how lopsided the verdicts are: a cycle's
    sample is mostly right answers once the model is decent (about 95% approvals in the demo),
    and there 5% slips give kappa about 0.45 (the demo measured 0.25-0.41), 2% about 0.7. A
    careful person checking a one-line answer against the right one slips about one time in
    fifty; one in twenty is a rushed annotator. Occasional disagreement stays either way.
    ``page``: items leased and stored per round trip (`next_items`)."""
    written = 0
    lease = timedelta(minutes=30)
    for reviewer in reviewers:
        # A page of items at a time, as a reviewer's tool fetches them: one lease and one write
        # per page (item by item, two reviewers of a 100-item sample took over a minute of
        # warehouse round trips per cycle on the demo's DuckDB file).
        while items := next_items(wh, reviewer, reviewers_per_item=reviewers_per_item, lease=lease,
                                  now=now or datetime.now(UTC), limit=page):  # fmt: skip
            # A reviewer's slips fall on items of their own, drawn per item (one stream per call
            # put them on the same positions of every cycle's queue).
            reviews = [{"item": item["item_id"], "reviewer": reviewer,
                        **simulated_review(item, truth.get(item["request_id"]),
                                           random.Random(f"reviewer:{reviewer}:{seed}:{item['item_id']}"), noise=noise)}
                       for item in items]  # fmt: skip
            written += len(submit_reviews(wh, reviews, now=now))
    return written
