"""What the contract tests share: how a config points the flywheel at a backend, and rows."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from flywheel.config import FlywheelConfig
from flywheel.warehouse import Warehouse
from tests.helpers.simulated_product import SIMULATED_PRODUCT

BACKENDS = ("duckdb", "snowflake", "bigquery")
_namespace = itertools.count()


def backend_config(backend: str, home: Path, running: dict[str, Any], **overrides: Any) -> FlywheelConfig:
    """The config that points the flywheel at ``backend`` (the only thing that changes), for
    the simulated product whose traffic the contract tests run."""
    n = next(_namespace)
    settings: dict[str, Any] = {**SIMULATED_PRODUCT, "warehouse.backend": backend}
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
