"""The warehouse hook: where an Airflow run gets its `flywheel.warehouse.Warehouse`.

Which warehouse is a config and connection change only: ``warehouse.backend`` picks DuckDB,
BigQuery or Snowflake, and the Airflow connection ``warehouse.conn_id`` (a ``google_cloud_platform``
or a ``snowflake`` connection) holds the credentials, through the providers' own hooks.
"""

from __future__ import annotations

import json
import re
from typing import Any

from airflow.sdk import BaseHook

from flywheel.config import FlywheelConfig
from flywheel.warehouse import Warehouse, reading_source, warehouse_from_config


class FlywheelWarehouseHook(BaseHook):
    """Opens the warehouse the flywheel config names.

    The embedded default (DuckDB) needs no credentials: its file lives under FLYWHEEL_HOME.
    Cloud warehouses take their credentials from the Airflow connection ``warehouse.conn_id``
    (never from code or config files). Inside a task, the run names what the warehouse does:
    BigQuery jobs get ids derived from the DAG, task and run (a retry re-attaches to a job its
    earlier try submitted instead of running it twice), Snowflake sessions a query tag.
    """

    conn_name_attr = "warehouse_conn_id"
    default_conn_name = "flywheel_warehouse"
    hook_name = "Flywheel warehouse"

    def __init__(
        self,
        config: FlywheelConfig,
        warehouse_conn_id: str | None = None,
        *,
        run: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        # The config names the connection; an operator's own conn id wins when it differs from
        # the default (a DAG may point one task elsewhere).
        chosen = warehouse_conn_id if warehouse_conn_id not in (None, self.default_conn_name) else None
        self.warehouse_conn_id = chosen or config.warehouse.conn_id
        self.run = run if run is not None else _current_run()

    def get_warehouse(self) -> Warehouse:
        cfg = self.config.warehouse
        # The cloud providers' hooks take about a second to import: DAG files import this module
        # at parse time, so each backend's hook is imported only where that backend is used.
        if cfg.backend == "bigquery":
            from flywheel.warehouse.bigquery import BigQueryWarehouse
            from flywheel_airflow.cloud_hooks import FlywheelBigQueryHook

            hook = FlywheelBigQueryHook(gcp_conn_id=self.warehouse_conn_id, use_legacy_sql=False, location=cfg.bigquery_location)
            client = hook.get_client(project_id=cfg.bigquery_project, location=cfg.bigquery_location)
            return reading_source(BigQueryWarehouse(
                client,
                cfg.bigquery_dataset,
                storage_client=hook.get_storage_client(),
                job_prefix=_job_prefix(self.run),
                labels=_labels(self.run),
                write_batch_rows=cfg.write_batch_rows,
            ), self.config)
        if cfg.backend == "snowflake":
            from flywheel.warehouse.snowflake import SnowflakeWarehouse
            from flywheel_airflow.cloud_hooks import FlywheelSnowflakeHook

            session = {"QUERY_TAG": json.dumps({"app": "flywheel", **self.run}, sort_keys=True)} if self.run else None
            sf = FlywheelSnowflakeHook(snowflake_conn_id=self.warehouse_conn_id, session_parameters=session)
            return reading_source(SnowflakeWarehouse(
                sf.get_conn,
                database=cfg.snowflake_database,
                schema=cfg.snowflake_schema,
                write_batch_rows=cfg.write_batch_rows,
            ), self.config)
        return warehouse_from_config(self.config)

    def get_conn(self) -> Warehouse:
        return self.get_warehouse()


def _current_run() -> dict[str, str]:
    """The running task's DAG, task and run ids; empty outside a task."""
    try:
        from airflow.sdk import get_current_context

        context = get_current_context()
    except Exception:  # noqa: BLE001 - no task is running: nothing names the work
        return {}
    ti = context["ti"]
    run = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id}
    if getattr(ti, "map_index", -1) not in (-1, None):
        run["map_index"] = str(ti.map_index)
    return run


def _job_prefix(run: dict[str, str]) -> str | None:
    """A BigQuery job id prefix for the task run (letters, digits, _ and - only). The try number
    is left out on purpose: it is what lets a retry find the jobs of the try before it."""
    if not run:
        return None
    raw = "_".join(run[k] for k in ("dag_id", "task_id", "run_id", "map_index") if k in run)
    return "flywheel_" + re.sub(r"[^A-Za-z0-9_-]", "_", raw)[:600]


def _labels(run: dict[str, str]) -> dict[str, str]:
    """BigQuery job labels (lower case, 63 characters) naming the task run, for billing and audit."""
    return {k: re.sub(r"[^a-z0-9_-]", "_", v.lower())[:63] for k, v in run.items()}
