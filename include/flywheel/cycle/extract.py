"""Extract: the cycle's snapshot of its window, with the gold set and, at cold start, the
manual labels and synthetic examples that stand in for traffic."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from flywheel.cycle.spec import CycleSpec
from flywheel.data import bootstrap
from flywheel.data.extract import extract_window_snapshot
from flywheel.filters import pushdown_for
from flywheel.providers import task_templates
from flywheel.warehouse import Warehouse

log = logging.getLogger(__name__)


def extract_window(cycle: CycleSpec, wh: Warehouse, extra_rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Snapshot the window (plus the accumulated gold set when `extract.include_gold`)."""
    wh.ensure_schema()
    extra = list(extra_rows or [])
    gold = gold_rows_before(wh, cycle.logical_date) if cycle.config.extract.include_gold else []
    rows = extract_window_snapshot(
        wh,
        cycle.window,
        cycle.file("extract.parquet"),
        batch_rows=cycle.config.warehouse.read_batch_rows,
        max_skew=cycle.limits.max_clock_skew,
        pushdown=pushdown_for(cycle.config.filters),  # what the rules let the warehouse query decide
        extra_rows=extra + gold,
        superseded_ids={g["request_id"] for g in gold},
    )
    log.info("%s: %d rows in window [%s, %s) (%d gold, %d from other sources), phase policy %s",
             cycle.cycle_id, rows, cycle.window.start, cycle.window.end, len(gold), len(extra), cycle.phase)  # fmt: skip
    unwindowed = rows_in_no_window(wh)
    if unwindowed:
        log.warning("%d rows of the log source %s have no event time and the source maps no ingested_at column, so "
                    "no cycle reads or quarantines them; map source.columns.ingested_at to the rows' load time",
                    unwindowed, wh.source)  # fmt: skip
    return {
        "cycle_id": cycle.cycle_id,
        "rows_in_window": rows,
        "gold_rows": len(gold),
        "extra_rows": len(extra),
        "phase_policy": cycle.phase,
        "window_start": cycle.window.start.isoformat(),
        "window_end": cycle.window.end.isoformat(),
        "snapshot": str(cycle.file("extract.parquet")),
        **({"source": str(wh.source), "source_rows_in_no_window": unwindowed} if wh.source else {}),
    }


def rows_in_no_window(wh: Warehouse) -> int:
    """Rows of a log source with no load-time column that have no event time either: no window
    holds them. The flywheel's own table needs no count: its loader stamps every row's ingested_at."""
    if wh.source is None or not wh.source.windows_by_event_time_only:
        return 0
    return int(wh.query_logs('SELECT COUNT(*) AS n FROM production_logs WHERE "timestamp" IS NULL').column("n")[0].as_py())


def extract_bootstrap(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Cold start: the beta users' traffic in the window, plus manual labels and synthetic
    examples (`flywheel.data.bootstrap`). Lines of a labels file that cannot be read as a row are
    kept for `validate.validate_rows` to quarantine with their reason."""
    cfg = cycle.config.bootstrap
    templates = task_templates(cycle.config.evaluation.task_templates)
    extra = bootstrap.synthetic_rows(templates, cfg.synthetic_per_task_type, seed=cfg.synthetic_seed, created_at=cycle.window.start)
    problems: list[bootstrap.LabelProblem] = []
    if cfg.labels_path:
        labels, problems = bootstrap.read_manual_labels(cycle.config.resolve(cfg.labels_path), labelled_at=cycle.window.start)
        extra += labels
    cycle.work_dir.mkdir(parents=True, exist_ok=True)
    cycle.file("unreadable.json").write_text(json.dumps([p.__dict__ for p in problems]))
    out = extract_window(cycle, wh, extra)
    n_manual = sum(r["model_version"] == bootstrap.MANUAL_MODEL_VERSION for r in extra)
    return out | {"manual_labels": n_manual, "synthetic": len(extra) - n_manual, "unreadable_label_lines": len(problems)}


def unreadable_lines(cycle: CycleSpec) -> list[dict[str, Any]]:
    """The labels file's lines `extract_bootstrap` could not read (none outside cold start)."""
    path = cycle.file("unreadable.json")
    return json.loads(path.read_text()) if path.is_file() else []


def gold_rows_before(wh: Warehouse, logical_date: datetime) -> list[dict[str, Any]]:
    """Every gold example accepted by a cycle before ``logical_date``, as log rows."""
    rows = wh.query(
        "SELECT * FROM gold_examples WHERE logical_date < $t ORDER BY request_id", {"t": logical_date}
    ).to_pylist()
    return [
        {"request_id": g["request_id"], "timestamp": g["logical_date"], "user_id": g["labeler"] or g["source"],
         "prompt": g["prompt"], "response": g["response"], "user_action": "accepted", "correction": None,
         "task_type": g["task_type"], "quality_score": 1.0, "included_in_training": False,
         "model_version": f"gold:{g['source']}", "context": g["context"], "ingested_at": g["logical_date"]}
        for g in rows
    ]  # fmt: skip
