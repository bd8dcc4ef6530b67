"""The warehouse: the flywheel's system of record, behind one interface.

`base` is the interface every stage uses; `sql` writes SQL once and translates it per dialect;
`window` is the windowed read of production logs that every backend runs alike, and `source` lets
those reads see a product's own log table in place of production_logs. One module per
backend: `duckdb` (the embedded default), `bigquery`, `snowflake`. The cloud ones are opened
through their Airflow connection by `flywheel_airflow.hooks.FlywheelWarehouseHook`, so that
credentials never pass through config; `warehouse_from_config` opens the embedded one.
"""

from flywheel.warehouse.base import Warehouse
from flywheel.warehouse.factory import reading_source, warehouse_from_config
from flywheel.warehouse.source import LogSource
from flywheel.warehouse.window import DEFAULT_SKEW, NO_PUSHDOWN, Pushdown

__all__ = ["DEFAULT_SKEW", "NO_PUSHDOWN", "LogSource", "Pushdown", "Warehouse", "reading_source", "warehouse_from_config"]
