"""Human review: the cycle's sample sent to reviewers, and the filters refit to their verdicts."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pyarrow.parquet as pq

from flywheel.artefacts import ArtefactStore
from flywheel.cycle import spec
from flywheel.cycle.filtering import kept_candidates
from flywheel.cycle.spec import CycleSpec
from flywheel.cycle.train import ensure_base_model
from flywheel.filters import redact_candidate
from flywheel.filters.pii import default_scanner
from flywheel.model import registry
from flywheel.model.inference import load_model
from flywheel.records import TrainingCandidate, candidate_from_row
from flywheel.review import calibrate, items, prioritize
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse


def sample_for_review(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Send `review.sample_rate` of the window's candidates to human review (`flywheel.review.items`):
    a uniform random slice for calibration and a prioritised, stratified slice of the kept ones.
    Reviewers only ever see PII-redacted text."""
    cfg = cycle.config.review
    if not cfg.enabled:
        wh.replace_partition("review_items", {"cycle_id": cycle.cycle_id}, rows_to_table("review_items", []))
        return {"skipped": "review.enabled is false", "items": 0}
    valid = pq.read_table(cycle.file("valid.parquet")).to_pylist()
    candidates = [candidate_from_row(r) for r in valid]
    kept = kept_candidates(cycle)
    decisions = wh.select("decisions", {"cycle_id": cycle.cycle_id}).to_pylist()
    scores: dict[str, dict[str, float | None]] = {}
    rejected = set()
    for d in decisions:
        if d["rule"] in calibrate.RULES:
            scores.setdefault(d["request_id"], {})[d["rule"]] = d["score"]
        if not d["kept"]:
            rejected.add(d["request_id"])
    budget = min(len(candidates), max(cfg.min_items, round(cfg.sample_rate * len(candidates))))
    uncertainty, change = _model_signals(cycle, wh, kept) if cfg.model_signals and kept else (None, None)
    priorities = prioritize.prioritise(
        kept, weights=cfg.priority_weights, filter_scores=scores, thresholds=calibrate.current_thresholds(cycle.config.filters),
        window_mix=Counter(c.task_type for c in candidates), uncertainty=uncertainty, behaviour_change=change,
    )  # fmt: skip
    sample = items.draw_sample(candidates, kept, {p.request_id: p for p in priorities}, budget=budget,
                               random_share=cfg.random_share, seed=cycle.cycle_id)  # fmt: skip
    redacted = {c.request_id: c for c in kept}
    sample = items.Sample(_redacted_texts(cycle, wh, sample.random, redacted), sample.priority)
    kept_ids = {c.request_id for c in kept if c.request_id not in rejected}
    rows = items.item_rows(cycle.cycle_id, cycle.logical_date, sample, kept_ids=kept_ids, filter_scores=scores, now=spec.now())
    wh.replace_partition("review_items", {"cycle_id": cycle.cycle_id}, rows_to_table("review_items", rows))
    strata = Counter(f"{r['task_type']}/{r['user_action']}" for r in rows if r["slice"] == "priority")
    return {"items": len(rows), "random": len(sample.random), "priority": len(sample.priority), "candidates": len(candidates),
            "model_signals": uncertainty is not None, "priority_strata": dict(strata)}  # fmt: skip


def calibrate_filters(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Refit the threshold filters to the random slices' verdicts of the last
    `calibration.lookback_days` (`flywheel.review.calibrate`); an adopted fit is the config version the
    next cycles run under. It runs where the cycle itself sends nothing to review too: the
    monthly cycle recalibrates on its month's weekly reviews."""
    if not cycle.config.calibration.enabled:
        return {"skipped": "calibration.enabled is false"}
    return calibrate.calibrate(wh, cycle_id=cycle.cycle_id, logical_date=cycle.logical_date, filters=cycle.config.filters,
                               config=cycle.config.calibration)  # fmt: skip


def _model_signals(cycle: CycleSpec, wh: Warehouse, kept: list[TrainingCandidate]) -> tuple[Any, Any]:
    """The champion's uncertainty on each kept answer, and how far it moved from its parent."""
    ensure_base_model(cycle.config, wh)
    store = ArtefactStore(cycle.config)
    champion = registry.get_model(wh, registry.champion_as_of(wh, cycle.logical_date))
    loaded = load_model(champion.base_model, champion.adapter_path, version=champion.version, store=store)
    parent = None
    if champion.parent_version:
        p = registry.get_model(wh, champion.parent_version)
        parent = load_model(p.base_model, p.adapter_path, version=p.version, store=store)
    return prioritize.answer_token_stats(loaded, kept, reference=parent)


def _redacted_texts(
    cycle: CycleSpec, wh: Warehouse, picked: list[TrainingCandidate], already: dict[str, TrainingCandidate]
) -> list[TrainingCandidate]:
    """The random slice with its text, PII-redacted: rows whose text the window query withheld
    (the pushed-down rules rejected them) are read back from the warehouse by id."""
    missing = {c.request_id for c in picked if c.request_id not in already and not c.prompt}
    texts: dict[str, dict[str, Any]] = {}
    if missing:
        for batch in wh.read_window("production_logs", cycle.window.start, cycle.window.end,
                                    batch_rows=cycle.config.warehouse.read_batch_rows, max_skew=cycle.limits.max_clock_skew):  # fmt: skip
            for r in batch.to_pylist():
                if r["request_id"] in missing:
                    texts[r["request_id"]] = r
    f = cycle.config.filters
    scanner = default_scanner(f.pii_entities, f.pii_min_score)
    out = []
    for c in picked:
        if c.request_id in already:
            out.append(already[c.request_id])
            continue
        src = texts.get(c.request_id)
        if src is not None:
            c = replace(c, prompt=src["prompt"], response=src["response"], correction=src["correction"], context=src["context"])
        out.append(redact_candidate(c, scanner)[0])
    return out
