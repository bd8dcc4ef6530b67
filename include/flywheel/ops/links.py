"""Where an operator reads about a cycle in the browser: the dashboard's pages under
``alerts.airflow_base_url`` + ``/flywheel`` (the Airflow API server serves the dashboard app).
Alerts, failed gates and the operators' extra links all point here."""

from __future__ import annotations

from urllib.parse import quote

from flywheel.config import FlywheelConfig


def dashboard_url(config: FlywheelConfig, path: str = "") -> str:
    return f"{config.alerts.airflow_base_url.rstrip('/')}/flywheel/{path}"


def quarantine_url(config: FlywheelConfig, cycle_id: str) -> str:
    """The cycle's quarantined rows, each with its field, rule and reason."""
    return dashboard_url(config, f"quarantine?cycle_id={quote(cycle_id, safe='')}")


def gate_docs_url(config: FlywheelConfig, cycle_id: str, gate: str) -> str:
    """The Data Docs page of the cycle's gate result (the dashboard redirects to it)."""
    return dashboard_url(config, f"gates/{quote(cycle_id, safe='')}/{quote(gate, safe='')}")


def review_url(config: FlywheelConfig) -> str:
    return dashboard_url(config, "review/")
