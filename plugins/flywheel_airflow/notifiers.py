"""Failure alerts: every failed task (a failed gate above all) becomes an alert operators see.

`FlywheelAlertNotifier` writes the alert to the warehouse's ``alerts`` table (the dashboard and
any on-call tooling read it there) and logs it at ERROR level. Delivery by e-mail or Slack,
through Airflow connections, is layered on the same message.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

log = logging.getLogger(__name__)


def alert_message(context: Any) -> dict[str, Any]:
    """What an operator needs: which DAG, task and run, what failed, where to look."""
    ti = context["ti"]
    exception = context.get("exception") or getattr(context.get("task"), "failure_reason", None)
    text = str(exception) if exception else "task failed (see the task log)"
    kind = "gate_failed" if "gate '" in text else "task_failed"
    link = next((line.split("Data Docs: ", 1)[1].strip() for line in text.splitlines() if "Data Docs: " in line), None)
    logical = context.get("logical_date")
    return {
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "logical_date": logical,
        "kind": kind,
        "message": f"[{ti.dag_id}.{ti.task_id}] {text}",
        "link": link,
    }


class FlywheelAlertNotifier(BaseNotifier):
    """Records and logs a task failure; used as the DAGs' ``on_failure_callback``."""

    template_fields = ()

    def __init__(self, config_path: str | None = None) -> None:
        super().__init__()
        self.config_path = config_path

    def notify(self, context: Any) -> None:
        from flywheel.schema import rows_to_table
        from flywheel_airflow.hooks import FlywheelWarehouseHook
        from flywheel_airflow.operators import config_for_run

        alert = alert_message(context)
        raised = datetime.now(UTC)
        ti = context["ti"]
        try_number = getattr(ti, "try_number", 0)
        alert_id = hashlib.sha256(f"{ti.dag_id}|{ti.task_id}|{ti.run_id}|{try_number}".encode()).hexdigest()[:24]
        log.error("FLYWHEEL ALERT %s", alert["message"])
        try:
            config = config_for_run(dict(context.get("params") or {}), self.config_path)
            warehouse = FlywheelWarehouseHook(config).get_warehouse()
            warehouse.ensure_schema()
            warehouse.merge("alerts", rows_to_table("alerts", [{**alert, "alert_id": alert_id, "raised_at": raised}]))
        except Exception:  # an alert that cannot be stored must still be seen in the log
            log.exception("could not store the alert for %s.%s in the warehouse", ti.dag_id, ti.task_id)
