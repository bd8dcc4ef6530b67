"""Failure alerts: every failed task (a failed gate above all) becomes an alert operators see.

`FlywheelAlertNotifier` writes the alert to the warehouse's ``alerts`` table (the dashboard and
any on-call tooling read it there), logs it at ERROR level, and sends it by e-mail (the SMTP
provider's hook) and to Slack (the Slack webhook provider's hook) when the connections named in
the config's ``alerts`` section exist. The message names the DAG, the task, the run and what
failed, and links the Data Docs page and the run.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.sdk import BaseHook
from airflow.sdk.bases.notifier import BaseNotifier

from flywheel.config import FlywheelConfig, load_config
from flywheel.runconfig import build_run_config
from flywheel.tables import rows_to_table
from flywheel_airflow.hooks import FlywheelWarehouseHook

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
        alert = alert_message(context)
        raised = datetime.now(UTC)
        ti = context["ti"]
        try_number = getattr(ti, "try_number", 0)
        alert_id = hashlib.sha256(f"{ti.dag_id}|{ti.task_id}|{ti.run_id}|{try_number}".encode()).hexdigest()[:24]
        log.error("FLYWHEEL ALERT %s", alert["message"])
        try:
            # Where alerts go is the YAML's, or the failed task's DAG overrides'. No warehouse or
            # logical date (the phase policy and calibration set filters, not alert channels,
            # and the warehouse may be what failed), and no params: none sets an alert channel,
            # and a run that failed on a bad param must still alert.
            config = build_run_config(
                load_config(self.config_path), dag_overrides=getattr(context.get("task"), "config_overrides", None)
            ).config
        except Exception:
            log.exception("no flywheel config: the alert is only in this log")
            return
        deliver_alert(config, alert, alert_id=alert_id, raised_at=raised)


def deliver_alert(config: FlywheelConfig, alert: dict[str, Any], *, alert_id: str, raised_at: datetime) -> None:
    """Store the alert in the warehouse, then e-mail it and post it to Slack where configured."""
    try:
        warehouse = FlywheelWarehouseHook(config).get_warehouse()
        warehouse.ensure_schema()
        warehouse.merge("alerts", rows_to_table("alerts", [{**alert, "alert_id": alert_id, "raised_at": raised_at}]))
    except Exception:  # an alert that cannot be stored must still be seen in the log
        log.exception("could not store the alert for %s.%s in the warehouse", alert["dag_id"], alert["task_id"])
    subject, body = render_alert(alert, base_url=config.alerts.airflow_base_url)
    if config.alerts.email_to:
        send_email(config.alerts.smtp_conn_id, config.alerts.email_to, subject, body)
    send_slack(config.alerts.slack_conn_id, f"*{subject}*\n{body}")


def run_url(base_url: str, dag_id: str, run_id: str) -> str:
    return f"{base_url.rstrip('/')}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"


def render_alert(alert: dict[str, Any], *, base_url: str) -> tuple[str, str]:
    """Subject and plain-text body of an alert."""
    what = {"gate_failed": "gate failed", "stagnation": "flywheel stagnant", "starved": "flywheel starved of data", "rollback": "model rolled back"}.get(
        alert["kind"], "task failed"
    )
    subject = f"[flywheel] {alert['dag_id']}.{alert['task_id']}: {what}"
    lines = [
        f"DAG:   {alert['dag_id']}",
        f"Task:  {alert['task_id']}",
        f"Run:   {alert['run_id']} (logical date {alert['logical_date']})",
        f"Link:  {run_url(base_url, alert['dag_id'], alert['run_id'])}",
    ]
    if alert.get("link"):
        lines.append(f"Data Docs: {alert['link']}")
    lines += ["", alert["message"]]
    return subject, "\n".join(lines)


def _connection_exists(conn_id: str) -> bool:
    try:
        BaseHook.get_connection(conn_id)
        return True
    except Exception:
        return False


def send_email(conn_id: str, to: list[str], subject: str, body: str) -> None:
    if not _connection_exists(conn_id):
        log.warning("alerts.email_to is set but there is no Airflow connection %r: no e-mail sent", conn_id)
        return
    try:
        with SmtpHook(smtp_conn_id=conn_id) as smtp:
            smtp.send_email_smtp(to=to, subject=subject, html_content=f"<pre>{escape(body)}</pre>")
        log.info("alert e-mailed to %s", ", ".join(to))
    except Exception:
        log.exception("could not e-mail the alert through connection %r", conn_id)


def send_slack(conn_id: str, text: str) -> None:
    if not _connection_exists(conn_id):
        return
    try:
        # Most of a second to import (slack_sdk): paid only where a Slack connection exists.
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        SlackWebhookHook(slack_webhook_conn_id=conn_id).send(text=text)
        log.info("alert sent to Slack through %r", conn_id)
    except Exception:
        log.exception("could not send the alert to Slack through connection %r", conn_id)
