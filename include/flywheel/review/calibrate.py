"""Filter calibration: fit the threshold filters to human verdicts on the random review slice.

Only the random slice is used: it is a uniform sample of every candidate (kept by the filters
or not), so the filters' precision and recall measured on it are unbiased, which the
prioritised slice (picked for being hard) is not. The rules calibrated are those of the filter
registry that declare a `Calibration` (today quality score: keep at or above; toxicity: keep
below; grounding: keep at or above, a candidate without context not judged). A candidate
"passes" when all of them keep it; agreement is the share of reviewed candidates where passing
matches the human verdict.

Thresholds are fitted by coordinate ascent over the observed scores (within
`calibration.bounds`) and adopted, as a new config version the next cycles run under, only
when agreement gains at least `calibration.min_gain` on at least `calibration.min_reviews`
reviews. Every fit is recorded (`config_versions`), adopted or not, with agreement before and
after and each rule's precision and recall.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.config import CalibrationConfig, FiltersConfig
from flywheel.filters import Calibration, rules
from flywheel.review.items import verdicts
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse

# rule name in the decisions -> the threshold it exposes (its config field, the side that keeps)
RULES: dict[str, Calibration] = {rule.name: rule.calibration for rule in rules.RULES if rule.calibration}


@dataclass(frozen=True)
class Judged:
    """One reviewed candidate: its scores per rule and the human verdict."""

    scores: dict[str, float | None]
    approved: bool


def keeps(rule: str, score: float | None, threshold: float) -> bool:
    if score is None:
        return True  # the rule did not judge it (grounding without context)
    return RULES[rule].keeps(score, threshold)


def passes(item: Judged, thresholds: dict[str, float]) -> bool:
    return all(keeps(rule, item.scores.get(rule), t) for rule, t in thresholds.items())


def agreement(items: Sequence[Judged], thresholds: dict[str, float]) -> float:
    return sum(passes(i, thresholds) == i.approved for i in items) / len(items) if items else 0.0


def precision_recall(items: Sequence[Judged], rule: str, threshold: float) -> dict[str, float | None]:
    """The rule alone as a classifier of "good to train on": precision of what it keeps, recall
    of what humans approved."""
    kept = [i for i in items if keeps(rule, i.scores.get(rule), threshold)]
    approved = [i for i in items if i.approved]
    tp = sum(i.approved for i in kept)
    return {"precision": tp / len(kept) if kept else None, "recall": tp / len(approved) if approved else None}


def fit(items: Sequence[Judged], current: dict[str, float], bounds: dict[str, list[float]], passes_: int = 3) -> dict[str, float]:
    """Thresholds maximising agreement: each rule in turn over its observed scores (and its
    current value), ties broken towards the current value; a few passes."""
    best = dict(current)
    for _ in range(passes_):
        changed = False
        for rule in RULES:
            lo, hi = bounds.get(RULES[rule].setting, [0.0, 1.0])
            scores = {s for i in items if (s := i.scores.get(rule)) is not None}
            # Thresholds just above each observed score too, so "keep below" can cut at any point.
            options = {best[rule]} | {s for s in scores if lo <= s <= hi} | {min(hi, s + 1e-6) for s in scores if lo <= s + 1e-6 <= hi}
            ranked = sorted(options, key=lambda t: (-agreement(items, {**best, rule: t}), abs(t - current[rule])))
            if ranked[0] != best[rule] and agreement(items, {**best, rule: ranked[0]}) > agreement(items, best):
                best[rule] = ranked[0]
                changed = True
        if not changed:
            break
    return {k: round(v, 6) for k, v in best.items()}


def current_thresholds(filters: FiltersConfig) -> dict[str, float]:
    return {rule: float(getattr(filters, cal.setting)) for rule, cal in RULES.items()}


def judged_items(wh: Warehouse, since: datetime, until: datetime) -> list[Judged]:
    """The random slice's reviewed items of the cycles in ``(since, until]``, with verdicts."""
    cycles = wh.query(
        "SELECT DISTINCT cycle_id FROM review_items WHERE slice = 'random' AND logical_date > $s AND logical_date <= $u",
        {"s": since, "u": until},
    ).column("cycle_id").to_pylist()
    out = []
    for cycle_id in sorted(cycles):
        v = verdicts(wh, cycle_id)
        for item in wh.select("review_items", {"cycle_id": cycle_id, "slice": "random"}).to_pylist():
            if item["request_id"] in v:
                scores = json.loads(item["filter_scores_json"] or "{}")
                out.append(Judged({r: scores.get(r) for r in RULES}, v[item["request_id"]].approved))
    return out


def calibrate(
    wh: Warehouse, *, cycle_id: str, logical_date: datetime, filters: FiltersConfig, config: CalibrationConfig
) -> dict[str, Any]:
    """Fit, record, and adopt when it helps; returns the record (also in `config_versions`)."""
    items = judged_items(wh, logical_date - timedelta(days=config.lookback_days), logical_date)
    current = current_thresholds(filters)
    fitted = fit(items, current, config.bounds) if items else dict(current)
    before, after = agreement(items, current), agreement(items, fitted)
    adopted = len(items) >= config.min_reviews and after - before >= config.min_gain and fitted != current
    per_rule = {
        rule: {"threshold_before": current[rule], "threshold_after": fitted[rule],
               "before": precision_recall(items, rule, current[rule]), "after": precision_recall(items, rule, fitted[rule])}
        for rule in RULES
    }  # fmt: skip
    overrides = {f"filters.{RULES[r].setting}": fitted[r] for r in RULES if fitted[r] != current[r]} if adopted else {}
    if not items:
        why = "no reviewed random-slice items yet"
    elif len(items) < config.min_reviews:
        why = f"{len(items)} reviews < calibration.min_reviews={config.min_reviews}"
    elif not adopted:
        why = f"agreement {before:.3f} -> {after:.3f}, gain below calibration.min_gain={config.min_gain}"
    else:
        why = f"agreement {before:.3f} -> {after:.3f} on {len(items)} reviews"
    record = {
        "version_id": hashlib.sha256(f"{cycle_id}|{json.dumps(overrides, sort_keys=True)}".encode()).hexdigest()[:16],
        "cycle_id": cycle_id, "logical_date": logical_date, "overrides_json": json.dumps(overrides, sort_keys=True),
        "n_reviews": len(items), "agreement_before": before, "agreement_after": after,
        "per_rule_json": json.dumps(per_rule, sort_keys=True), "adopted": adopted, "created_at": datetime.now(UTC),
    }  # fmt: skip
    wh.replace_partition("config_versions", {"cycle_id": cycle_id}, rows_to_table("config_versions", [record]))
    return {**record, "logical_date": logical_date.isoformat(), "created_at": None, "per_rule": per_rule, "why": why,
            "thresholds_before": current, "thresholds_after": fitted}  # fmt: skip


def overrides_before(wh: Warehouse, logical_date: datetime) -> dict[str, Any]:
    """The latest adopted calibration before ``logical_date``: the overrides a cycle runs under."""
    rows = wh.query(
        "SELECT overrides_json FROM config_versions WHERE adopted AND logical_date < $t ORDER BY logical_date DESC LIMIT 1",
        {"t": logical_date},
    ).to_pylist()
    return json.loads(rows[0]["overrides_json"]) if rows else {}
