"""
### Weekly flywheel cycle

Turns last-but-two week's production traffic into a challenger model, and promotes it only if
it beats the champion on the golden set.

**Window.** A run whose data interval ends at `T` reads the logs of `[T - lag - 7 days, T - lag)`
(`lag_days` = 14 by default): users' corrections and regenerations settle before their rows
are used. The window comes from the run, never from the wall clock, so a backfill of any past
Monday reads exactly that week.

**Tasks.** `extract_window` (the user-action and quality-score rules run inside the warehouse
query: rejected rows' text stays there) → `gate_raw_window` (Great Expectations: schema, nulls, enums,
ranges, unique ids, volume against recent cycles) → `validate_and_quarantine` (malformed rows go
to the `quarantine` table with their reason) → `filter_candidates` (user action, length, quality
score, PII, toxicity, grounding, golden-set decontamination, dedup, top-share selection per task
type; a decision per row and rule) → `build_dataset` (chat format; corrections become the
target; skipped with a reason when too few examples survive) → `gate_training_set` (no PII, no
golden overlap, class balance, lengths) → `train_lora` (continues from the champion's adapter)
→ `evaluate_golden_set` → `promote_if_better` → `record_cycle_metrics`.

**Gates fail closed.** A failed gate fails its task with the failed expectations and a link to
its Data Docs page (`data_docs/` in the artefact store); nothing downstream runs, the champion
stays, and the failure is recorded in the `alerts` table by the failure notifier.

**Idempotent.** Every task rewrites its own outputs for the logical date: clear any task, or
rerun or backfill the run, and nothing is duplicated.

**Params** override the YAML config (`include/config/flywheel.yaml`) for one run; leave a param
empty to keep the configured value.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, TriggerRule, chain, dag
from airflow.timetables.trigger import CronTriggerTimetable

from flywheel_airflow.notifiers import FlywheelAlertNotifier
from flywheel_airflow.operators import (
    BuildDatasetOperator,
    EvaluateGoldenSetOperator,
    ExtractWindowOperator,
    FilterCandidatesOperator,
    GateRawWindowOperator,
    GateTrainingSetOperator,
    PromoteIfBetterOperator,
    RecordCycleOperator,
    TrainLoraOperator,
    ValidateRowsOperator,
)


@dag(
    dag_id="flywheel_weekly",
    schedule=CronTriggerTimetable("0 0 * * 1", timezone="UTC"),  # Mondays 00:00 UTC
    start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # each cycle starts from the champion the previous one left
    tags=["flywheel", "weekly", "training"],
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "on_failure_callback": [FlywheelAlertNotifier()],
    },
    doc_md=__doc__,
    params={
        "lag_days": Param(14, type="integer", minimum=0, description="Days between the window's end and the run."),
        "window_days": Param(None, type=["null", "integer"], minimum=1, description="Window length in days (config: 7)."),
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
    },
)
def flywheel_weekly():
    extract = ExtractWindowOperator(task_id="extract_window")
    raw_gate = GateRawWindowOperator(task_id="gate_raw_window")
    validate = ValidateRowsOperator(task_id="validate_and_quarantine")
    filtered = FilterCandidatesOperator(task_id="filter_candidates")
    dataset = BuildDatasetOperator(task_id="build_dataset")
    training_gate = GateTrainingSetOperator(task_id="gate_training_set")
    train = TrainLoraOperator(
        task_id="train_lora",
        execution_timeout=timedelta(hours=12),
        # A GPU worker pool listens on its own queue; set where the DAG is parsed (no file I/O).
        queue=os.environ.get("FLYWHEEL_TRAINING_QUEUE", "default"),
    )
    evaluate = EvaluateGoldenSetOperator(task_id="evaluate_golden_set")
    promote = PromoteIfBetterOperator(task_id="promote_if_better")
    record = RecordCycleOperator(task_id="record_cycle_metrics", trigger_rule=TriggerRule.NONE_FAILED)
    chain(extract, raw_gate, validate, filtered, dataset, training_gate, train, evaluate, promote, record)


flywheel_weekly()
