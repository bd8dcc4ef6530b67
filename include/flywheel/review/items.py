"""Human review: the sample, the store, the verdicts, and what they change.

Each cycle sends `review.sample_rate` (5-10%) of its window's candidates to reviewers:

- a **random slice** (`review.random_share` of the budget), drawn uniformly from every valid
  candidate, kept by the filters or not, so that calibration (`flywheel.review.calibrate`) measures the
  filters without the bias of the prioritised picks;
- a **prioritised slice** from the candidates the filters kept, stratified by task type and user
  action (each stratum gets its proportional share, at least one), highest priority first
  (`flywheel.review.prioritize`). Each item records why it was picked.

Reviewers see PII-redacted text only. A review scores accuracy, helpfulness and safety (1-5),
gives a verdict (approve / reject) and may edit the response. An item's verdict is its
reviewers' majority (a tie rejects). Approved items the filters kept become gold examples
(the edited response replaces the original) and train with `training.gold_weight`; rejected
ones are left out of the dataset. Approved items the filters rejected are the filters' misses:
they feed calibration, which may let their like through in later cycles.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.errors import FlywheelError
from flywheel.records import TrainingCandidate
from flywheel.review.prioritize import Priority
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse

# statsmodels is imported inside the functions that use it: it takes seconds to
# import, and DAG parsing and the light stages import this module without needing it.

VERDICTS = ("approve", "reject")


class ReviewError(FlywheelError):
    """A review that cannot be stored as given (unknown item, score out of range, ...)."""


def item_id(cycle_id: str, request_id: str) -> str:
    return f"{cycle_id}:{request_id}"


def allocate(strata: dict[tuple[str, str], int], n: int) -> dict[tuple[str, str], int]:
    """``n`` picks shared among strata in proportion to their sizes (largest remainders), every
    non-empty stratum getting at least one while ``n`` allows, none more than it holds."""
    sizes = {k: v for k, v in strata.items() if v > 0}
    total = sum(sizes.values())
    n = min(n, total)
    if n <= 0:
        return dict.fromkeys(sizes, 0)
    out = dict.fromkeys(sizes, 0)
    for k in sorted(sizes, key=lambda k: (-sizes[k], k))[:n]:
        out[k] = 1  # every stratum is seen, the largest first when n is short
    left = n - sum(out.values())
    if left > 0:
        quota = {k: left * sizes[k] / total for k in sizes}
        for k in sizes:
            out[k] += min(int(quota[k]), sizes[k] - out[k])
        rest = n - sum(out.values())
        for k in sorted(sizes, key=lambda k: (-(quota[k] - int(quota[k])), k)):
            if rest <= 0:
                break
            if out[k] < sizes[k]:
                out[k] += 1
                rest -= 1
    return out


@dataclass(frozen=True)
class Sample:
    random: list[TrainingCandidate]
    priority: list[tuple[TrainingCandidate, Priority]]


def draw_sample(
    candidates: Sequence[TrainingCandidate],
    kept: Sequence[TrainingCandidate],
    priorities: dict[str, Priority],
    *,
    budget: int,
    random_share: float,
    seed: str,
) -> Sample:
    """The random slice (uniform over ``candidates``) and the prioritised slice (stratified
    over ``kept``, excluding the random picks)."""
    n_random = min(round(budget * random_share), len(candidates))
    rng = random.Random(f"review:{seed}")
    ordered = sorted(candidates, key=lambda c: c.request_id)
    picked = rng.sample(ordered, n_random) if n_random else []
    taken = {c.request_id for c in picked}
    pool = [c for c in kept if c.request_id not in taken]
    strata: dict[tuple[str, str], list[TrainingCandidate]] = defaultdict(list)
    for c in pool:
        strata[(c.task_type, c.user_action)].append(c)
    share = allocate({k: len(v) for k, v in strata.items()}, budget - n_random)
    chosen: list[tuple[TrainingCandidate, Priority]] = []
    for key, members in sorted(strata.items()):
        ranked = sorted(members, key=lambda c: (-priorities[c.request_id].score, c.request_id))
        chosen += [(c, priorities[c.request_id]) for c in ranked[: share.get(key, 0)]]
    return Sample(sorted(picked, key=lambda c: c.request_id), chosen)


def item_rows(
    cycle_id: str,
    logical_date: datetime,
    sample: Sample,
    *,
    kept_ids: set[str],
    filter_scores: dict[str, dict[str, float | None]],
    now: datetime,
) -> list[dict[str, Any]]:
    """Review items for the sample (the candidates' text must already be PII-redacted)."""
    rows = []
    for slice_name, entries in (("random", [(c, None) for c in sample.random]), ("priority", sample.priority)):
        for c, p in entries:
            rows.append({
                "item_id": item_id(cycle_id, c.request_id), "cycle_id": cycle_id, "logical_date": logical_date,
                "request_id": c.request_id, "slice": slice_name, "priority": p.score if p else None,
                "reasons_json": json.dumps(p.reasons if p else ["uniform random slice (calibration)"]),
                "task_type": c.task_type, "user_action": c.user_action, "prompt": c.prompt, "context": c.context,
                "response": c.response, "correction": c.correction, "filter_kept": c.request_id in kept_ids,
                "filter_scores_json": json.dumps(filter_scores.get(c.request_id, {}), sort_keys=True), "created_at": now,
            })  # fmt: skip
    return rows


# --- The store -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    items: int
    complete: int  # items with their configured number of reviews

    @property
    def share(self) -> float:
        return self.complete / self.items if self.items else 1.0


def progress(wh: Warehouse, cycle_id: str, reviewers_per_item: int) -> Progress:
    rows = wh.query(
        "SELECT i.item_id, COUNT(r.reviewer) AS n FROM review_items i LEFT JOIN reviews r ON r.item_id = i.item_id "
        "WHERE i.cycle_id = $c GROUP BY i.item_id",
        {"c": cycle_id},
    ).to_pylist()
    return Progress(len(rows), sum(r["n"] >= reviewers_per_item for r in rows))


def next_items(
    wh: Warehouse, reviewer: str, *, reviewers_per_item: int, lease: timedelta, now: datetime, limit: int = 1
) -> list[dict[str, Any]]:
    """Up to ``limit`` items for ``reviewer``, leased to them together (nobody else gets them
    while the lease runs): oldest cycle first, highest priority first; items this reviewer
    already holds come back to them first. A batch costs one query and one write, whatever its
    size (a tool that works through a page of items, or the simulated reviewers)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ReviewError(f"limit must be a positive integer, got {limit!r}")
    rows = wh.query(
        "SELECT i.* FROM review_items i "
        "WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.item_id = i.item_id AND r.reviewer = $who) "
        "AND (SELECT COUNT(*) FROM reviews r WHERE r.item_id = i.item_id) "
        "  + (SELECT COUNT(*) FROM review_assignments a WHERE a.item_id = i.item_id AND a.reviewer <> $who "
        "     AND a.assigned_at > $since AND NOT EXISTS "
        "       (SELECT 1 FROM reviews r WHERE r.item_id = a.item_id AND r.reviewer = a.reviewer)) < $k "
        "ORDER BY (SELECT COUNT(*) FROM review_assignments a WHERE a.item_id = i.item_id AND a.reviewer = $who) DESC, "
        f"i.logical_date, i.priority DESC NULLS LAST, i.item_id LIMIT {limit}",
        {"who": reviewer, "since": now - lease, "k": reviewers_per_item},
    ).to_pylist()
    if rows:
        wh.merge("review_assignments", rows_to_table("review_assignments",
                 [{"item_id": r["item_id"], "reviewer": reviewer, "assigned_at": now} for r in rows]))  # fmt: skip
    return rows


def next_item(wh: Warehouse, reviewer: str, *, reviewers_per_item: int, lease: timedelta, now: datetime) -> dict[str, Any] | None:
    """The next item for ``reviewer`` (`next_items` with a batch of one), or None when none is left."""
    rows = next_items(wh, reviewer, reviewers_per_item=reviewers_per_item, lease=lease, now=now)
    return rows[0] if rows else None


def _review_row(
    cycles: dict[str, str],
    *,
    item: str,
    reviewer: str,
    accuracy: int,
    helpfulness: int,
    safety: int,
    verdict: str,
    edited_response: str | None = None,
    seconds_spent: float | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One review checked and made a row; ``cycles`` maps the known item ids to their cycle."""
    if item not in cycles:
        raise ReviewError(f"no review item {item!r}")
    for name, value in (("accuracy", accuracy), ("helpfulness", helpfulness), ("safety", safety)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 5:
            raise ReviewError(f"{name} must be an integer from 1 to 5, got {value!r}")
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    if not reviewer:
        raise ReviewError("a review needs its reviewer")
    edited = (edited_response or "").strip() or None
    return {"item_id": item, "reviewer": reviewer, "cycle_id": cycles[item], "accuracy": accuracy,
            "helpfulness": helpfulness, "safety": safety, "verdict": verdict, "edited_response": edited,
            "seconds_spent": seconds_spent, "reviewed_at": now or datetime.now(UTC)}  # fmt: skip


def submit_reviews(wh: Warehouse, reviews: Sequence[dict[str, Any]], *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Store several reviews in one write, each given as `submit_review`'s keyword arguments.
    Every review is checked before any is stored: one bad review stores none. A second review
    by the same reviewer of an item replaces the first."""
    if not reviews:
        return []
    ids = sorted({str(r.get("item")) for r in reviews})
    cycles = {r["item_id"]: r["cycle_id"] for r in wh.query(
        "SELECT item_id, cycle_id FROM review_items WHERE list_contains($ids, item_id)", {"ids": ids}
    ).to_pylist()}  # fmt: skip
    rows = [_review_row(cycles, **{"now": now, **r}) for r in reviews]
    latest = {(r["item_id"], r["reviewer"]): r for r in rows}  # within a batch, too, the last one stands
    wh.merge("reviews", rows_to_table("reviews", list(latest.values())))
    return rows


def submit_review(
    wh: Warehouse,
    *,
    item: str,
    reviewer: str,
    accuracy: int,
    helpfulness: int,
    safety: int,
    verdict: str,
    edited_response: str | None = None,
    seconds_spent: float | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Store one review (a second submission by the same reviewer replaces the first)."""
    review = {"item": item, "reviewer": reviewer, "accuracy": accuracy, "helpfulness": helpfulness, "safety": safety,
              "verdict": verdict, "edited_response": edited_response, "seconds_spent": seconds_spent}  # fmt: skip
    return submit_reviews(wh, [review], now=now)[0]


@dataclass(frozen=True)
class Verdict:
    request_id: str
    approved: bool
    edited_response: str | None
    n_reviews: int


def verdicts(wh: Warehouse, cycle_id: str) -> dict[str, Verdict]:
    """Each reviewed item's majority verdict (a tie rejects) and the edit of its approvers
    (the most common one)."""
    rows = wh.query(
        "SELECT i.request_id, r.verdict, r.edited_response FROM reviews r JOIN review_items i ON i.item_id = r.item_id "
        "WHERE i.cycle_id = $c ORDER BY r.item_id, r.reviewer",
        {"c": cycle_id},
    ).to_pylist()
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["request_id"]].append(r)
    out = {}
    for rid, rs in by.items():
        approvals = [r for r in rs if r["verdict"] == "approve"]
        approved = len(approvals) * 2 > len(rs)
        edits = Counter(r["edited_response"] for r in approvals if r["edited_response"])
        out[rid] = Verdict(rid, approved, edits.most_common(1)[0][0] if approved and edits else None, len(rs))
    return out


def agreement(wh: Warehouse, cycle_ids: Sequence[str]) -> dict[str, float | int | None]:
    """Agreement between reviewers on items with several reviews: the share of pairs that gave
    the same verdict, and Fleiss' kappa (agreement beyond chance)."""
    if not cycle_ids:
        return {"items": 0, "pairwise": None, "kappa": None}
    rows = [
        r
        for c in cycle_ids
        for r in wh.query(
            "SELECT r.item_id, r.verdict FROM reviews r JOIN review_items i ON i.item_id = r.item_id WHERE i.cycle_id = $c",
            {"c": c},
        ).to_pylist()
    ]
    by: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        by[r["item_id"]][r["verdict"]] += 1
    multi = {k: v for k, v in by.items() if sum(v.values()) >= 2}
    if not multi:
        return {"items": 0, "pairwise": None, "kappa": None}
    same = pairs = 0
    for counts in multi.values():
        n = sum(counts.values())
        pairs += n * (n - 1) // 2
        same += sum(c * (c - 1) // 2 for c in counts.values())
    kappa = None
    sizes = {sum(v.values()) for v in multi.values()}
    if len(sizes) == 1:  # Fleiss' kappa needs the same number of ratings per item
        from statsmodels.stats.inter_rater import fleiss_kappa

        table = [[counts.get(v, 0) for v in VERDICTS] for counts in multi.values()]
        value = float(fleiss_kappa(table, method="fleiss"))
        kappa = value if value == value else None  # NaN when every item got one verdict
    return {"items": len(multi), "pairwise": same / pairs, "kappa": kappa}


# --- Label Studio -------------------------------------------------------------------------


def to_label_studio(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as Label Studio tasks (``data`` holds what a reviewer sees; ``meta`` our ids)."""
    return [
        {"data": {"item_id": i["item_id"], "prompt": i["prompt"], "context": i["context"] or "",
                  "response": i["response"], "correction": i["correction"] or "", "task_type": i["task_type"]},
         "meta": {"cycle_id": i["cycle_id"], "slice": i["slice"], "reasons": json.loads(i["reasons_json"] or "[]")}}
        for i in items
    ]  # fmt: skip


def from_label_studio(tasks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reviews from a Label Studio export (JSON, one task per item) with choices named
    ``verdict`` (approve/reject), ratings ``accuracy``/``helpfulness``/``safety`` and an optional
    textarea ``edited_response``; one review per annotation, keyed by its annotator."""
    out = []
    for task in tasks:
        item = task.get("data", {}).get("item_id")
        for ann in task.get("annotations", []):
            fields: dict[str, Any] = {}
            for res in ann.get("result", []):
                value = res.get("value", {})
                if "choices" in value:
                    fields[res["from_name"]] = value["choices"][0]
                elif "rating" in value:
                    fields[res["from_name"]] = int(value["rating"])
                elif "text" in value:
                    fields[res["from_name"]] = value["text"][0] if value["text"] else None
            reviewer = ann.get("completed_by")
            reviewer = reviewer.get("email") if isinstance(reviewer, dict) else reviewer
            out.append({"item": item, "reviewer": f"label-studio:{reviewer}", "verdict": fields.get("verdict"),
                        "accuracy": fields.get("accuracy"), "helpfulness": fields.get("helpfulness"),
                        "safety": fields.get("safety"), "edited_response": fields.get("edited_response"),
                        "seconds_spent": ann.get("lead_time")})  # fmt: skip
    return out
