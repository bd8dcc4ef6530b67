"""A cycle run in this process: the DAG's stages in the DAG's order, with no scheduler.

Airflow runs the cycles in production, the demo and the integration tests. The learning
benchmark (`benchmarks/flywheel_curve.py`) and the learning test run dozens of cycles over
several arms and seeds, where `airflow dags test`'s start-up per cycle would cost more than the
training; they run the same stage functions, under the config `build_run_config` builds for the
DAG and the date, with the same skip rules as the DAG's trigger rules:

- too few examples (`InsufficientDataError` from ``build_dataset``) or the ``skip_training``
  param skip training, evaluation and promotion, and the cycle is still recorded and reported;
- any other error fails the cycle where it happened, as a failed task fails the DAG run.

The review wait is the caller's ``review`` function: it is called with the cycle after its
sample is drawn and returns when the reviewing it stands for is done (a sensor in the DAG).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from flywheel.config import FlywheelConfig
from flywheel.cycle import BEFORE_REVIEW, MODEL_STAGES, dataset, extract, record, report, review
from flywheel.cycle.spec import CycleSpec, InsufficientDataError, make_cycle
from flywheel.data.extract import as_utc
from flywheel.runconfig import DAG_OVERRIDES, build_run_config
from flywheel.warehouse import Warehouse


def run_cycle(
    dag_id: str,
    logical_date: datetime,
    base: FlywheelConfig,
    wh: Warehouse,
    *,
    params: Mapping[str, Any] | None = None,
    review_fn: Callable[[CycleSpec], None] | None = None,
    write_report: bool = True,
) -> dict[str, Any]:
    """Run ``dag_id``'s cycle for ``logical_date``; returns each stage's summary by name
    (``"skipped"`` holds the reason the model stages did not run, if they did not)."""
    if dag_id not in DAG_OVERRIDES:
        raise ValueError(f"unknown cycle DAG {dag_id!r}; one of {sorted(DAG_OVERRIDES)}")
    when = as_utc(logical_date)
    run = build_run_config(base, warehouse=wh, logical_date=when, dag_overrides=DAG_OVERRIDES[dag_id], params=params)
    cycle = make_cycle(dag_id, data_interval_end=when, logical_date=when, config=run.config,
                       window_start=run.window_start, dry_run=run.dry_run)  # fmt: skip
    cycle = replace(cycle, phase=run.phase)
    first = extract.extract_bootstrap if dag_id == "flywheel_bootstrap" else extract.extract_window
    out: dict[str, Any] = {}
    for stage in (first, *BEFORE_REVIEW):
        out[stage.__name__] = stage(cycle, wh)
    if review_fn is not None and cycle.config.review.enabled:
        review_fn(cycle)
    out["calibrate_filters"] = review.calibrate_filters(cycle, wh)
    try:
        out["build_dataset"] = dataset.build_dataset(cycle, wh)
    except InsufficientDataError as exc:
        out["skipped"] = str(exc)
    if "skipped" not in out and (params or {}).get("skip_training"):
        out["skipped"] = "skip_training param set: no challenger this run"
    if "skipped" not in out:
        for stage in MODEL_STAGES:
            out[stage.__name__] = stage(cycle, wh)
    out["record_cycle"] = record.record_cycle(cycle, wh)
    if write_report:
        out["write_report"] = report.write_report(cycle, wh)
    return out
