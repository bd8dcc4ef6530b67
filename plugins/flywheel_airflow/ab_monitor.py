"""The A/B monitor's operators: judge experiments and the live champion, alert, publish.

`MonitorExperimentsOperator` calls `flywheel.evaluation.monitor.monitor` for the run's date: it ramps,
promotes, stops or rolls back, and sends every rollback to operators through the same channels
as a failed gate (warehouse `alerts`, log, e-mail, Slack). `PublishChampionOperator` updates the
`flywheel://registry/champion` asset only when the champion pointer moved, so DAGs and serving
deployments that follow it react to a promotion or a rollback and to nothing else.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from airflow.exceptions import AirflowSkipException
from airflow.sdk import BaseOperator, Context

from flywheel.config import load_config
from flywheel.data.extract import as_utc
from flywheel.errors import ConfigError, RegistryError
from flywheel.evaluation import experiment
from flywheel.evaluation.monitor import monitor
from flywheel.runconfig import build_run_config
from flywheel_airflow.hooks import FlywheelWarehouseHook
from flywheel_airflow.notifiers import deliver_alert
from flywheel_airflow.operators import FlywheelOperator

log = logging.getLogger(__name__)


def as_of_from_context(context: Context) -> datetime:
    """The instant the run judges: its logical date, or, for a run an asset event triggered
    (which has none), when the run was due."""
    when: datetime | None = context.get("logical_date") or context.get("data_interval_end")
    return as_utc(when if when is not None else context["dag_run"].run_after)


class MonitorExperimentsOperator(FlywheelOperator):
    """Judge the running A/B experiment and the newly promoted champion; apply and alert."""

    ui_color = "#fde8e8"

    def execute(self, context: Context) -> dict[str, Any]:
        as_of = as_of_from_context(context)
        try:
            base = load_config(self.config_path)
            wh = FlywheelWarehouseHook(base, self.warehouse_conn_id).get_warehouse()
            # Judged under the config a cycle at ``as_of`` would run under (phase policy included).
            config = build_run_config(base, warehouse=wh, logical_date=as_of, dag_overrides=self.config_overrides,
                                      params=context.get("params")).config  # fmt: skip
        except (ConfigError, ValueError) as exc:
            raise self.fail_now(exc) from exc
        if wh.count("promotions") == 0:
            log.info("no champion yet (run the bootstrap first): nothing to watch")
            return {"as_of": as_of.isoformat(), "decisions": [], "champion_changed": False}
        try:
            decisions = monitor(wh, config, as_of)
        except (RegistryError, experiment.ExperimentError) as exc:
            raise self.fail_now(exc) from exc
        ti = context["ti"]
        for d in decisions:
            log.info("%s: %s (%s)", d.subject, d.action, d.reason)
            if d.alert:
                message = f"[{ti.dag_id}] {d.reason}; champion now {d.champion_after}"
                log.error("FLYWHEEL ALERT %s", message)
                alert = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id, "logical_date": as_of,
                         "kind": "rollback", "message": message, "link": None}  # fmt: skip
                alert_id = hashlib.sha256(f"rollback|{d.subject}|{d.champion_before}|{as_of.isoformat()}".encode()).hexdigest()[:24]
                deliver_alert(config, alert, alert_id=alert_id, raised_at=datetime.now(UTC))
        return {
            "as_of": as_of.isoformat(),
            "decisions": [{"subject": d.subject, "action": d.action, "reason": d.reason, "champion_before": d.champion_before,
                           "champion_after": d.champion_after, "traffic_share": d.traffic_share, "p_value": d.p_value,
                           "required_per_arm": d.required_per_arm, "arms": d.arms} for d in decisions],
            "champion_changed": any(d.champion_changed for d in decisions),
            "champion": decisions[-1].champion_after if decisions else None,
        }  # fmt: skip


class PublishChampionOperator(BaseOperator):
    """Emit the champion asset's event when, and only when, the monitor moved the pointer."""

    ui_color = "#e6f4ea"

    def __init__(self, *, monitor_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.monitor_task_id = monitor_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        result = context["ti"].xcom_pull(task_ids=self.monitor_task_id) or {}
        moved = [d for d in result.get("decisions", []) if d["champion_before"] != d["champion_after"]]
        if not moved:
            raise AirflowSkipException("champion pointer unchanged: no asset event")
        extra = {"as_of": result["as_of"], "champion": moved[-1]["champion_after"], "previous": moved[-1]["champion_before"],
                 "action": moved[-1]["action"], "reason": moved[-1]["reason"]}  # fmt: skip
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra
        return extra
