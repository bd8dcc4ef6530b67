"""The warehouse hook: where an Airflow run gets its `flywheel.warehouse.Warehouse`."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from flywheel.config import FlywheelConfig
from flywheel.warehouse import Warehouse, warehouse_from_config


class FlywheelWarehouseHook(BaseHook):
    """Opens the warehouse the flywheel config names.

    The embedded default (DuckDB) needs no credentials: its file lives under FLYWHEEL_HOME.
    Cloud warehouses take their credentials from the Airflow connection ``warehouse_conn_id``
    (never from code or config files).
    """

    conn_name_attr = "warehouse_conn_id"
    default_conn_name = "flywheel_warehouse"
    hook_name = "Flywheel warehouse"

    def __init__(self, config: FlywheelConfig, warehouse_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.warehouse_conn_id = warehouse_conn_id

    def get_warehouse(self) -> Warehouse:
        return warehouse_from_config(self.config)

    def get_conn(self) -> Warehouse:
        return self.get_warehouse()
