"""What the flywheel DAGs share: the operators' params and the chain of stages.

Each DAG file declares its schedule, docs and fixed overrides, and calls `cycle_chain`, so the
weekly, monthly and bootstrap cycles run the same stages in the same order with the same gates.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, Param, TriggerRule, chain

from flywheel.config import FlywheelConfig, load_config
from flywheel.errors import ConfigError
from flywheel.runconfig import RUN_PARAMS
from flywheel_airflow.assets import MODEL_DECISION
from flywheel_airflow.notifiers import FlywheelAlertNotifier
from flywheel_airflow.operators import (
    BuildDatasetOperator,
    CalibrateFiltersOperator,
    EvaluateGoldenSetOperator,
    ExtractWindowOperator,
    FilterCandidatesOperator,
    FilterShardOperator,
    GateRawWindowOperator,
    GateTrainingSetOperator,
    MergeFilterShardsOperator,
    PlanFilterShardsOperator,
    PromoteIfBetterOperator,
    RecordCycleOperator,
    SampleForReviewOperator,
    TrainLoraOperator,
    TrainTwinOperator,
    ValidateRowsOperator,
    WriteReportOperator,
)
from flywheel_airflow.review_sensor import WaitForReviewSensor

log = logging.getLogger(__name__)


def retry_delay() -> timedelta:
    """How long a failed task waits before its retry: ``FLYWHEEL_RETRY_DELAY_SECONDS`` where the
    DAG is parsed (no file I/O at parse time), 120 by default."""
    raw = os.environ.get("FLYWHEEL_RETRY_DELAY_SECONDS", "120")
    if not raw.isdigit():
        raise ValueError(f"FLYWHEEL_RETRY_DELAY_SECONDS must be a whole number of seconds, got {raw!r}")
    return timedelta(seconds=int(raw))


def default_args(config_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retries, owner and the failure alert on every task; the DAG's fixed config overrides."""
    return {
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": retry_delay(),
        "on_failure_callback": [FlywheelAlertNotifier()],
        "config_overrides": dict(config_overrides or {}),
    }


def cycle_params(config_overrides: dict[str, Any] | None = None, *, bootstrap: bool = False) -> dict[str, Param]:
    """The params an operator may set when triggering a cycle by hand, from `RUN_PARAMS`; an
    empty one keeps the config. Each description shows the value the run gets when its param is
    left empty: the YAML with the DAG's fixed overrides (``config_overrides``), read once here
    (a small file; a YAML that does not load shows the keys only, and fails the run's tasks).
    ``bootstrap`` adds the cold start's own params (manual labels, synthetic examples)."""
    try:
        config: FlywheelConfig | None = load_config().with_overrides(config_overrides)
    except ConfigError as exc:
        log.warning("params without configured values: %s", exc)
        config = None
    return {
        p.name: Param(p.default, type=p.json_type, description=p.describe(config), **p.json_schema)
        for p in RUN_PARAMS
        if bootstrap or not p.bootstrap_only
    }


def filter_tasks() -> list[Any]:
    """The filter stage: one task, or with ``scale.filter_shards`` above 1 (read here, where the
    DAG is parsed), a plan, a shard task mapped over the plan's shards (dynamic task mapping: any
    worker takes any shard) and the merge, which keeps the one task's id ``filter_candidates``."""
    try:
        shards = load_config().scale.filter_shards
    except ConfigError:
        shards = 1  # the run's first task reports the broken config
    if shards <= 1:
        return [FilterCandidatesOperator(task_id="filter_candidates")]
    plan = PlanFilterShardsOperator(task_id="plan_filter_shards")
    mapped = FilterShardOperator.partial(task_id="filter_shard").expand(shard=plan.output)
    return [plan, mapped, MergeFilterShardsOperator(task_id="filter_candidates")]


def cycle_chain(extract: BaseOperator | None = None) -> list[BaseOperator]:
    """extract → raw gate → validate → filter → sample for review → wait for review (deferred)
    → calibrate filters → dataset → training-set gate → train → train the twin without the
    newest window (where asked) → evaluate → promote → record →
    report. Record and report run whenever nothing upstream failed, so a
    skipped training (too little data, or ``skip_training``) still leaves its cycle recorded."""
    tasks: list[BaseOperator] = [
        extract or ExtractWindowOperator(task_id="extract_window"),
        GateRawWindowOperator(task_id="gate_raw_window"),
        ValidateRowsOperator(task_id="validate_and_quarantine"),
        *filter_tasks(),
        SampleForReviewOperator(task_id="sample_for_review"),
        # Deferred while people review: no worker slot is held (hours or days).
        WaitForReviewSensor(task_id="wait_for_review"),
        CalibrateFiltersOperator(task_id="calibrate_filters"),
        BuildDatasetOperator(task_id="build_dataset"),
        GateTrainingSetOperator(task_id="gate_training_set"),
        TrainLoraOperator(
            task_id="train_lora",
            execution_timeout=timedelta(hours=12),
            # A GPU worker pool listens on its own queue; set where the DAG is parsed (no file I/O).
            queue=os.environ.get("FLYWHEEL_TRAINING_QUEUE", "default"),
        ),
        TrainTwinOperator(
            task_id="train_twin_without_newest_window",
            execution_timeout=timedelta(hours=12),
            queue=os.environ.get("FLYWHEEL_TRAINING_QUEUE", "default"),
        ),
        EvaluateGoldenSetOperator(task_id="evaluate_golden_set"),
        PromoteIfBetterOperator(task_id="promote_if_better", outlets=[MODEL_DECISION]),
        RecordCycleOperator(task_id="record_cycle_metrics", trigger_rule=TriggerRule.NONE_FAILED),
        WriteReportOperator(task_id="write_report", trigger_rule=TriggerRule.NONE_FAILED),
    ]
    chain(*tasks)
    return tasks
