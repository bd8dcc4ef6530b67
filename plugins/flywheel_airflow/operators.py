"""Thin operators: one per stage of the weekly cycle, each calling `flywheel.cycle`.

Every operator derives the cycle from the run (its data interval and logical date) and the
run's params, so a task can be cleared and rerun on its own: inputs and outputs live at paths
derived from the cycle id, and warehouse writes replace the cycle's partition. XCom carries only
the small summary each stage returns (counts, paths, versions, accuracies).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from airflow.exceptions import AirflowFailException, AirflowSkipException
from airflow.sdk import BaseOperator, Context

from flywheel.config import load_config
from flywheel.cycle import CycleSpec, InsufficientDataError, make_cycle
from flywheel.cycle.data_gates import gate_raw_window, gate_training_set
from flywheel.cycle.dataset import build_dataset
from flywheel.cycle.evaluate import evaluate_golden_set
from flywheel.cycle.extract import extract_bootstrap, extract_window
from flywheel.cycle.filter_shards import filter_shard, merge_filter_shards, plan_filter_shards
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.promote import promote_if_better
from flywheel.cycle.record import record_cycle
from flywheel.cycle.report import write_report
from flywheel.cycle.review import calibrate_filters, sample_for_review
from flywheel.cycle.train import train_challenger, train_twin
from flywheel.cycle.validate import validate_rows
from flywheel.runconfig import build_run_config
from flywheel.warehouse import Warehouse
from flywheel_airflow.hooks import FlywheelWarehouseHook
from flywheel_airflow.links import DataDocsLink, QuarantineLink, links_for, remember_links
from flywheel_airflow.notifiers import deliver_alert

log = logging.getLogger(__name__)


def cycle_from_context(
    context: Context,
    config_path: str | None = None,
    dag_overrides: dict[str, Any] | None = None,
    warehouse_conn_id: str = "flywheel_warehouse",
) -> tuple[CycleSpec, Warehouse]:
    """The run's cycle and its warehouse, under the config `build_run_config` builds for the
    run's logical date (the YAML opens the warehouse; see its docstring for the precedence)."""
    base = load_config(config_path)
    warehouse = FlywheelWarehouseHook(base, warehouse_conn_id).get_warehouse()
    run = build_run_config(
        base,
        warehouse=warehouse,
        logical_date=context.get("logical_date") or context.get("data_interval_end"),
        dag_overrides=dag_overrides,
        params=context.get("params"),
    )
    cycle = make_cycle(
        context["dag"].dag_id,
        data_interval_end=context.get("data_interval_end"),
        logical_date=context.get("logical_date"),
        config=run.config,
        window_start=run.window_start,
        dry_run=run.dry_run,
    )
    return replace(cycle, phase=run.phase), warehouse


def _alert(context: Context, kind: str, message: str) -> tuple[dict[str, Any], str]:
    """An alert about this task's run, and its id: one per kind and run, so a retried task
    replaces its alert instead of raising a second one."""
    ti = context["ti"]
    alert = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "logical_date": context.get("logical_date"),
             "kind": kind, "message": message, "link": None}  # fmt: skip
    return alert, hashlib.sha256(f"{kind}|{ti.dag_id}|{ti.run_id}".encode()).hexdigest()[:24]


class FlywheelOperator(BaseOperator):
    """What every flywheel operator takes: the config file, the DAG's fixed config overrides
    and the warehouse connection; and how it fails when a retry would fail the same way."""

    template_fields: Sequence[str] = ("config_path",)
    # Set when the task fails deterministically: the failure notifier reads it where the run
    # does not pass the exception in the callback's context (`airflow dags test` runs in-process).
    failure_reason: str | None = None

    def __init__(
        self,
        *,
        config_path: str | None = None,
        config_overrides: dict[str, Any] | None = None,
        warehouse_conn_id: str = "flywheel_warehouse",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        # The DAG's fixed overrides (dotted config keys), e.g. the monthly DAG's 28-day window.
        self.config_overrides = dict(config_overrides or {})
        self.warehouse_conn_id = warehouse_conn_id

    def fail_now(self, exc: Exception) -> AirflowFailException:
        """The exception to raise for a deterministic failure: no retry, the reason recorded."""
        self.failure_reason = f"{self.task_id} [{type(exc).__name__}]: {exc}"
        return AirflowFailException(self.failure_reason)


class FlywheelStageOperator(FlywheelOperator):
    """Runs one stage of the cycle for the run's logical date and returns its summary."""

    ui_color = "#e8f0fe"
    # The stage function this operator runs (one of `flywheel.cycle.STAGES`); each subclass
    # sets it as ``staticmethod(fn)``.
    stage: ClassVar[Callable[..., dict[str, Any]]]
    # The gate a gate operator runs: its "Data Docs" link opens that gate's result.
    gate: ClassVar[str | None] = None

    def execute(self, context: Context) -> dict[str, Any]:
        from flywheel.errors import (
            ConfigError,
            GateError,
            RegistryError,
            TrainingError,
            WindowError,
        )
        try:
            cycle, warehouse = cycle_from_context(context, self.config_path, self.config_overrides, self.warehouse_conn_id)
        except (ConfigError, WindowError, ValueError) as exc:
            raise self.fail_now(exc) from exc
        self._warehouse, self._config = warehouse, cycle.config
        remember_links(self, links_for(self, cycle.config, cycle.cycle_id, self.gate))
        log.info("cycle %s, window [%s, %s), phase policy %s%s", cycle.cycle_id, cycle.window.start, cycle.window.end,
                 cycle.phase, " (dry run)" if cycle.dry_run else "")  # fmt: skip
        try:
            result = self.stage(cycle, warehouse, **self.stage_kwargs())
        except (ConfigError, GateError, RegistryError, TrainingError, WindowError) as exc:
            # Deterministic failures: a retry would fail the same way, so fail now, loudly.
            raise self.fail_now(exc) from exc
        log.info("%s: %s", self.stage.__name__, result)
        return result

    def stage_kwargs(self) -> dict[str, Any]:
        """What the stage takes besides the cycle and the warehouse (a mapped task's own part)."""
        return {}

    def on_kill(self) -> None:
        """Cancel the warehouse jobs the killed task had in flight (BigQuery jobs, a Snowflake
        statement): a kill must not leave them running, or let them commit after it."""
        warehouse = getattr(self, "_warehouse", None)
        if warehouse is not None:
            warehouse.cancel()


class ExtractWindowOperator(FlywheelStageOperator):
    """Snapshot the lagged window's production logs (`[end - lag - window, end - lag)`)."""

    stage = staticmethod(extract_window)


class ExtractBootstrapOperator(FlywheelStageOperator):
    """Cold start: beta traffic, plus manual labels (validated like logs) and synthetic examples."""

    stage = staticmethod(extract_bootstrap)


class GateRawWindowOperator(FlywheelStageOperator):
    """Great Expectations on the raw window; a failure fails the run before any filtering."""

    stage = staticmethod(gate_raw_window)
    ui_color = "#f3e8fd"
    gate = "raw_window"
    operator_extra_links = (DataDocsLink(), QuarantineLink())


class GateTrainingSetOperator(FlywheelStageOperator):
    """Great Expectations on the training set (no PII, no golden overlap, balance, length)."""

    stage = staticmethod(gate_training_set)
    ui_color = "#f3e8fd"
    gate = "training_set"
    operator_extra_links = (DataDocsLink(),)


class ValidateRowsOperator(FlywheelStageOperator):
    """Quarantine malformed rows with their reasons; pass the valid ones on."""

    stage = staticmethod(validate_rows)
    operator_extra_links = (QuarantineLink(),)
    ui_color = "#fde8e8"


class FilterCandidatesOperator(FlywheelStageOperator):
    """Every filter of the method (action, length, quality, PII, toxicity, grounding,
    decontamination, dedup, selection); a decision per row and rule."""

    stage = staticmethod(filter_candidates)


class PlanFilterShardsOperator(FlywheelStageOperator):
    """The filter stage's shards (``scale.filter_shards``); returns their numbers, which the
    mapped `FilterShardOperator` expands over."""

    stage = staticmethod(plan_filter_shards)

    def execute(self, context: Context) -> list[int]:  # type: ignore[override]
        return super().execute(context)["shards"]


class FilterShardOperator(FlywheelStageOperator):
    """One shard of the window through every filter but dedup (a mapped task, on any worker)."""

    stage = staticmethod(filter_shard)

    def __init__(self, *, shard: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shard = shard

    def stage_kwargs(self) -> dict[str, Any]:
        return {"shard": self.shard}


class MergeFilterShardsOperator(FlywheelStageOperator):
    """Dedup and selection over every shard in window order: the decisions and kept rows one
    filter task would have left."""

    stage = staticmethod(merge_filter_shards)


class SampleForReviewOperator(FlywheelStageOperator):
    """Send a prioritised, stratified 5-10% sample (and a random calibration slice) to review."""

    stage = staticmethod(sample_for_review)
    ui_color = "#fdf3e1"


class CalibrateFiltersOperator(FlywheelStageOperator):
    """Refit the threshold filters to the reviews' verdicts; adopted fits apply to later cycles."""

    stage = staticmethod(calibrate_filters)
    ui_color = "#fdf3e1"


class BuildDatasetOperator(FlywheelStageOperator):
    """Kept candidates → a chat-format `datasets` dataset. Too few examples skips training."""

    stage = staticmethod(build_dataset)

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            return super().execute(context)
        except InsufficientDataError as exc:
            raise AirflowSkipException(str(exc)) from exc


class TrainLoraOperator(FlywheelStageOperator):
    """Fine-tune a LoRA adapter (the challenger), continuing from the champion's adapter.

    The ``skip_training`` param skips it (and so evaluation and promotion): the run still
    extracts, gates, filters, builds the dataset and records the cycle."""

    stage = staticmethod(train_challenger)
    ui_color = "#fff4e0"

    def execute(self, context: Context) -> dict[str, Any]:
        if (context.get("params") or {}).get("skip_training"):
            raise AirflowSkipException("skip_training param set: no challenger this run")
        return super().execute(context)


class TrainTwinOperator(FlywheelStageOperator):
    """New data vs old data: the challenger's twin, trained without the window's newest days.

    Runs where `evaluation.compare_new_data` is on (the monthly DAG; the ``compare_new_data``
    param for one run); otherwise it succeeds at once, saying why there is no twin."""

    stage = staticmethod(train_twin)
    ui_color = "#fff4e0"

    def execute(self, context: Context) -> dict[str, Any]:
        result = super().execute(context)
        if result.get("failed"):  # the cycle goes on without a twin; operators hear of it
            message = f"[{context['ti'].dag_id}] {result['skipped']}; the cycle goes on without the new-data check"
            alert, alert_id = _alert(context, "twin_failed", message)
            deliver_alert(self._config, alert, alert_id=alert_id, raised_at=datetime.now(UTC))
        return result


class EvaluateGoldenSetOperator(FlywheelStageOperator):
    """Champion, challenger (and its twin, when one was trained) on the fixed golden set."""

    stage = staticmethod(evaluate_golden_set)


class PromoteIfBetterOperator(FlywheelStageOperator):
    """Move the champion pointer to the challenger only if it evaluated better."""

    stage = staticmethod(promote_if_better)
    ui_color = "#e6f4ea"


class WriteReportOperator(FlywheelStageOperator):
    """The cycle's Markdown report with its velocity plots (artefact store, `reports/`)."""

    stage = staticmethod(write_report)
    ui_color = "#eef7ee"


def stagnation_alert_due(result: dict[str, Any], params: dict[str, Any] | None) -> bool:
    """Whether `record_cycle`'s result should alert operators of a stagnant or starved flywheel."""
    stagnation = result.get("stagnation") or {}
    if not (stagnation.get("stagnant") or stagnation.get("starved")):
        return False
    if (params or {}).get("skip_training"):
        log.info("stagnation diagnosed but not alerted: this run was told to skip training")
        return False
    return True


class RecordCycleOperator(FlywheelStageOperator):
    """The cycle's summary row and velocity metrics; runs even when training was skipped.

    When the flywheel is stagnant (no real gain over several cycles that evaluated a challenger)
    or starved (several cycles in a row trained none) it alerts operators with the likely
    causes, through the same channels as a failed gate; the task itself succeeds. A
    run an operator told to train nothing (``skip_training``) records the diagnosis but raises
    no alert: it is no evidence that the flywheel stalled."""

    stage = staticmethod(record_cycle)

    def execute(self, context: Context) -> dict[str, Any]:
        result = super().execute(context)
        if stagnation_alert_due(result, context.get("params")):
            stagnation = result["stagnation"]
            kind = "stagnation" if stagnation["stagnant"] else "starved"
            alert, alert_id = _alert(context, kind, f"[{context['ti'].dag_id}] flywheel {stagnation['summary']}")
            log.warning("FLYWHEEL ALERT %s", alert["message"])
            deliver_alert(self._config, alert, alert_id=alert_id, raised_at=datetime.now(UTC))
        return result
