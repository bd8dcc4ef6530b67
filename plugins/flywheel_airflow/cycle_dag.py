"""What the flywheel DAGs share: the operators' params and the chain of stages.

Each DAG file declares its schedule, docs and fixed overrides, and calls `cycle_chain`, so the
weekly, monthly and bootstrap cycles run the same stages in the same order with the same gates.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, Param, TriggerRule, chain

from flywheel_airflow.assets import MODEL_DECISION
from flywheel_airflow.notifiers import FlywheelAlertNotifier
from flywheel_airflow.operators import (
    BuildDatasetOperator,
    CalibrateFiltersOperator,
    EvaluateGoldenSetOperator,
    ExtractWindowOperator,
    FilterCandidatesOperator,
    GateRawWindowOperator,
    GateTrainingSetOperator,
    PromoteIfBetterOperator,
    RecordCycleOperator,
    SampleForReviewOperator,
    TrainLoraOperator,
    TrainTwinOperator,
    ValidateRowsOperator,
    WriteReportOperator,
)
from flywheel_airflow.review_sensor import WaitForReviewSensor


def default_args(config_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retries, owner and the failure alert on every task; the DAG's fixed config overrides."""
    return {
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": [FlywheelAlertNotifier()],
        "config_overrides": dict(config_overrides or {}),
    }


def cycle_params(*, lag_days: int = 14) -> dict[str, Param]:
    """Params an operator may set when triggering a cycle by hand; empty keeps the config."""
    return {
        "lag_days": Param(lag_days, type="integer", minimum=0, description="Days between the window's end and the run."),
        "window_days": Param(None, type=["null", "integer"], minimum=1, description="Window length in days (config: extract.window_days)."),
        "window_start": Param(None, type=["null", "string"], format="date",
                              description="Override the window: read [window_start, window_start + window_days) instead of the lagged window."),
        "dry_run": Param(False, type="boolean", description="Run every stage, but never move the champion (the decision is recorded as a dry run)."),
        "skip_training": Param(False, type="boolean", description="Stop after the training-set gate: no challenger, no evaluation; the cycle is still recorded."),
        "force_review": Param(None, type=["null", "boolean"],
                              description="true: send this run's sample to human review even where the DAG skips it (monthly, bootstrap); false: no review this run."),
        "min_quality_score": Param(None, type=["null", "number"], minimum=0, maximum=1, description="Quality filter threshold (config: 0.6)."),
        "epochs": Param(None, type=["null", "number"], exclusiveMinimum=0, description="LoRA epochs (config: 1)."),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, description="LoRA learning rate."),
        "base_model": Param(None, type=["null", "string"], description="Base model: a Hugging Face name or path (config: tiny-llama)."),
        "lora_r": Param(None, type=["null", "integer"], minimum=1, description="LoRA rank."),
        "lora_alpha": Param(None, type=["null", "integer"], minimum=1, description="LoRA alpha."),
        "lora_dropout": Param(None, type=["null", "number"], minimum=0, exclusiveMaximum=1, description="LoRA dropout."),
        "target_modules": Param(None, type=["null", "array"], items={"type": "string"}, description="Modules LoRA adapts."),
        "batch_size": Param(None, type=["null", "integer"], minimum=1, description="Per-device batch size."),
        "max_length": Param(None, type=["null", "integer"], minimum=9, description="Max tokens per example."),
        "seed": Param(None, type=["null", "integer"], description="Training seed."),
        "min_improvement": Param(None, type=["null", "number"], minimum=0, description="Accuracy margin the challenger must beat."),
        "compare_new_data": Param(None, type=["null", "boolean"],
                                  description="true: also train a twin without the window's newest days and report whether they helped (monthly: on); a window that hurt is flagged and kept out."),
    }  # fmt: skip


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
        FilterCandidatesOperator(task_id="filter_candidates"),
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
