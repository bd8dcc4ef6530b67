"""What the contract tests share: how a config points the flywheel at a backend, and rows."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flywheel.config import FlywheelConfig
from flywheel.warehouse import Warehouse

BACKENDS = ("duckdb", "snowflake", "bigquery")
T0 = datetime(2026, 2, 2, tzinfo=UTC)
_namespace = itertools.count()


def backend_config(backend: str, home: Path, running: dict[str, Any], **overrides: Any) -> FlywheelConfig:
    """The config that points the flywheel at ``backend``: the only thing that changes."""
    n = next(_namespace)
    settings: dict[str, Any] = {"warehouse.backend": backend}
    if backend != "duckdb":
        running[backend]  # noqa: B018 - starts the emulator and defines its connection
        settings["warehouse.conn_id"] = f"flywheel_{backend}_emulator"
        settings["warehouse.bigquery_dataset"] = f"t{os.getpid()}_{n}"
        settings["warehouse.snowflake_database"] = "FLYWHEEL_TEST"
        settings["warehouse.snowflake_schema"] = f"T{os.getpid()}_{n}"
    return FlywheelConfig(home=home).with_overrides({**settings, **overrides})


def open_warehouse(config: FlywheelConfig, run: dict[str, str] | None = None) -> Warehouse:
    from flywheel_airflow.hooks import FlywheelWarehouseHook

    return FlywheelWarehouseHook(config, run=run or {}).get_warehouse()


def log_row(request_id: str | None, ts: datetime | None, **overrides: Any) -> dict[str, Any]:
    """A well-formed production-log row."""
    row: dict[str, Any] = {
        "request_id": request_id,
        "timestamp": ts,
        "user_id": "user-0001",
        "prompt": "Please rewrite the word garden in capital letters for the heading of my school poster.",
        "response": "GARDEN",
        "user_action": "accepted",
        "correction": None,
        "task_type": "uppercase",
        "quality_score": 0.9,
        "included_in_training": False,
        "model_version": "base:tiny-llama",
        "context": None,
        "ingested_at": (ts or T0) + timedelta(seconds=5),
    }
    row.update(overrides)
    return row
