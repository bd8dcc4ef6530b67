"""The one way the core opens a warehouse from config."""

from __future__ import annotations

from flywheel.config import FlywheelConfig
from flywheel.errors import WarehouseError
from flywheel.warehouse.base import Warehouse
from flywheel.warehouse.duckdb import DuckDBWarehouse
from flywheel.warehouse.source import LogSource


def warehouse_from_config(config: FlywheelConfig) -> Warehouse:
    """The embedded default. The cloud backends need their Airflow connection's credentials:
    `flywheel_airflow.hooks.FlywheelWarehouseHook` opens them (and the embedded one too)."""
    backend = config.warehouse.backend
    if backend == "duckdb":
        return reading_source(DuckDBWarehouse(config.duckdb_path), config)
    raise WarehouseError(
        f"warehouse backend {backend!r} is opened through its Airflow connection "
        f"{config.warehouse.conn_id!r}: use flywheel_airflow.hooks.FlywheelWarehouseHook"
    )


def reading_source(warehouse: Warehouse, config: FlywheelConfig) -> Warehouse:
    """``warehouse``, reading its logs from the product's own table when ``source.table`` names one."""
    warehouse.source = LogSource.from_config(config.source)
    return warehouse
