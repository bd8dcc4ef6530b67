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
# BigQuery configs handed out since the last `drop_bigquery_datasets` (the contract tests' fixture
# drops their datasets after each test).
_bigquery_configs: list[FlywheelConfig] = []


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
    config = FlywheelConfig(home=home).with_overrides({**settings, **overrides})
    if backend == "bigquery":
        _bigquery_configs.append(config)
    return config


def drop_bigquery_datasets() -> None:
    """Drop the datasets of the BigQuery configs handed out so far. The emulator slows down with
    every table it holds (a contract test's schema setup took 5 s first and 28 s twenty tests
    later, and the weekly cycle 115 s in place of 360 s), so a test leaves nothing behind."""
    while _bigquery_configs:
        config = _bigquery_configs.pop()
        client = open_warehouse(config).client  # type: ignore[attr-defined]
        client.delete_dataset(f"{client.project}.{config.warehouse.bigquery_dataset}", delete_contents=True, not_found_ok=True)


def open_warehouse(config: FlywheelConfig, run: dict[str, str] | None = None) -> Warehouse:
    from flywheel_airflow.hooks import FlywheelWarehouseHook

    return FlywheelWarehouseHook(config, run=run or {}).get_warehouse()
