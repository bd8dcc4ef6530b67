"""The demo's story run in this process: the same simulated product, the same cycles, no Airflow.

`flywheel.sim.demo` runs every cycle through real Airflow (`airflow dags test`). The learning
benchmark (`benchmarks/flywheel_curve.py`) and the slow learning test run the story many times,
over arms and seeds, where Airflow's start-up per cycle would cost more than the training; they
call `run_flywheel`, which runs the DAGs' stages in process (`flywheel.cycle.inprocess`) and the
A/B monitor's function between slices of each served week, as the demo's `ab_monitor` runs do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flywheel.config import FlywheelConfig
from flywheel.cycle.inprocess import run_cycle
from flywheel.evaluation.monitor import monitor, needs_monitoring
from flywheel.model import registry
from flywheel.ops.metrics import cycles_report
from flywheel.runconfig import build_run_config
from flywheel.sim.product import (
    BETA_SHARE,
    BETA_WEEKS,
    FIRST_WEEK,
    MONITOR_DAYS,
    serve_week,
    write_demo_labels,
)
from flywheel.sim.reviewers import run_simulated_reviewers
from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model
from flywheel.warehouse import Warehouse, warehouse_from_config

log = logging.getLogger(__name__)

REVIEWERS = ("sim-reviewer-1", "sim-reviewer-2")


@dataclass
class FlywheelRun:
    """What one run of the story left: every cycle's row (`cycles_report`) and the warehouse."""

    cycles: list[dict[str, Any]]
    wh: Warehouse
    truth: dict[str, str] = field(default_factory=dict)

    def champion_curve(self) -> list[float]:
        """Golden accuracy of the champion after each cycle, bootstrap first (the A/B decisions
        made during a week count from the next cycle's row on)."""
        return [r["champion_next_accuracy"] for r in self.cycles]


def run_flywheel(
    config: FlywheelConfig,
    *,
    cycles: int,
    poison_weeks: frozenset[int] = frozenset(),
    review: bool = True,
    labels_dir: Path | None = None,
) -> FlywheelRun:
    """Beta weeks served by the base model, the bootstrap, the lag's weeks, then ``cycles``
    weekly cycles, each followed by a served week with the A/B monitor between its slices.
    Weeks in ``poison_weeks`` (0 = the first product week) are served with
    ``simulate.poison_rate`` of 0.3 unless the config sets one."""
    build_tiny_model(config)
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
    truth: dict[str, str] = {}
    for w in range(BETA_WEEKS, 0, -1):
        serve_week(config, wh, FIRST_WEEK - timedelta(weeks=w), truth=truth, volume=BETA_SHARE)
    labels = write_demo_labels((labels_dir or config.home / "labels") / "manual_labels.jsonl")
    run_cycle("flywheel_bootstrap", FIRST_WEEK, config, wh, params={"labels_path": str(labels)}, write_report=False)
    weekly = build_run_config(config).config
    lag_weeks = (weekly.extract.lag_days + weekly.extract.window_days) // 7
    poison = config.simulate.poison_rate or 0.3

    def serve(monday: datetime, week: int) -> None:
        rate = poison if week in poison_weeks else None
        t = monday
        for k, days in enumerate(MONITOR_DAYS):
            serve_week(config, wh, t, days=days, truth=truth, poison_rate=rate)
            t += timedelta(days=days)
            if k < len(MONITOR_DAYS) - 1 and needs_monitoring(wh, t, config.experiment):
                monitor(wh, build_run_config(config, warehouse=wh, logical_date=t).config, t)

    for w in range(lag_weeks):
        serve(FIRST_WEEK + timedelta(weeks=w), w)

    def reviewed(_cycle: Any) -> None:
        if review:
            run_simulated_reviewers(wh, truth, reviewers=REVIEWERS, reviewers_per_item=config.review.reviewers_per_item)

    for k in range(cycles):
        monday = FIRST_WEEK + timedelta(weeks=lag_weeks + k)
        out = run_cycle("flywheel_weekly", monday, config, wh, review_fn=reviewed, write_report=False)
        log.info("cycle %s: %s", f"{monday:%Y-%m-%d}", out.get("promote_if_better") or out.get("skipped"))
        serve(monday, lag_weeks + k)
    return FlywheelRun(_with_champion_after(wh), wh, truth)


def _with_champion_after(wh: Warehouse) -> list[dict[str, Any]]:
    """`cycles_report` rows, each with the golden accuracy of the champion in force at the next
    cycle (or now, for the last): what the flywheel had really gained by then, A/B included."""
    rows = cycles_report(wh)
    scores: dict[str, float] = {}
    for r in rows:
        if r["champion_before"] and r["champion_accuracy"] is not None:
            scores.setdefault(r["champion_before"], r["champion_accuracy"])
        if r["challenger"] and r["challenger_accuracy"] is not None:
            scores[r["challenger"]] = r["challenger_accuracy"]
    for i, r in enumerate(rows):
        after = rows[i + 1]["champion_before"] if i + 1 < len(rows) else registry.current_champion(wh)
        r["champion_next"] = after
        r["champion_next_accuracy"] = scores.get(after, r["champion_accuracy"])
    return rows
