"""The DuckDB backend: the embedded default, one file under the flywheel's data folder."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from flywheel.errors import WarehouseError
from flywheel.tables import TABLES
from flywheel.warehouse.base import Warehouse
from flywheel.warehouse.sql import (
    canonical_sql,
    check_identifier,
    conform_rows,
    create_table_sql,
    insert_sql,
    merge_deletes,
    sql_type,
    where_clause,
)
from flywheel.warehouse.window import (
    DEFAULT_SKEW,
    NO_PUSHDOWN,
    Pushdown,
    conform_window_batch,
    window_params,
)

# One lock per database file, for the threads of one process. DuckDB shares one database
# instance among a process's connections to a file and tears it down when the last one closes.
# The demo, whose simulated reviewers work in a thread, once failed in the main thread's merge
# with "Table Function with name python_arrow_scan does not exist" while the reviewers' thread
# was connecting and closing; it did not recur in isolation (8 threads x 150 merges), so this is
# a precaution, not a proven fix: the file admits one writing process anyway, so the process's
# threads take turns too, and no connection opens while another closes.
_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.RLock:
    with _FILE_LOCKS_GUARD:
        return _FILE_LOCKS.setdefault(str(path.resolve()), threading.RLock())


class DuckDBWarehouse(Warehouse):
    """The embedded default: one DuckDB file under the flywheel's data folder.

    A DuckDB file admits one writing process at a time, so each operation opens a short-lived
    connection and retries while another process (a parallel task, the demo) holds the lock;
    within a process, threads take turns (`_file_lock`).
    """

    dialect = "duckdb"

    def __init__(self, path: str | Path, *, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"DuckDBWarehouse({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.path):
            deadline = time.monotonic() + self.lock_timeout_s
            delay = 0.05
            while True:
                try:
                    con = duckdb.connect(str(self.path))
                    break
                except duckdb.IOException as exc:
                    if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                        raise WarehouseError(f"cannot open DuckDB warehouse {self.path}: {exc}") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
            try:
                con.execute("SET TimeZone = 'UTC'")
                yield con
            finally:
                con.close()

    def ensure_schema(self) -> None:
        """Create missing tables; add columns a newer version of a table has (a migration)."""
        with self._connect() as con:
            for table, spec in TABLES.items():
                con.execute(create_table_sql(table))
                have = {r[0] for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]
                ).fetchall()}  # fmt: skip
                for f in spec.schema:
                    if f.name not in have:
                        con.execute(f'ALTER TABLE {table} ADD COLUMN "{check_identifier(f.name)}" {sql_type(f.type)}')

    def query(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        with self._connect() as con:
            return con.sql(sql, params=params or {}).to_arrow_table()

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with self._connect() as con:
            con.execute(sql, params or {})

    def merge(self, table: str, rows: pa.Table) -> int:
        incoming = conform_rows(table, rows)
        with self._connect() as con:
            con.register("_incoming", incoming)
            con.execute("BEGIN TRANSACTION")
            try:
                for statement in merge_deletes(table):
                    con.execute(statement)
                con.execute(insert_sql(table))
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        return incoming.num_rows

    def replace_partition(self, table: str, where: dict[str, Any], rows: pa.Table) -> int:
        if not where:
            raise WarehouseError("replace_partition needs a non-empty partition filter")
        incoming = conform_rows(table, rows)
        clause, params = where_clause(where)
        with self._connect() as con:
            con.register("_incoming", incoming)
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"DELETE FROM {check_identifier(table)}{clause}", params)
                con.execute(insert_sql(table))
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        return incoming.num_rows

    def read_logs_window(
        self,
        start: datetime,
        end: datetime,
        *,
        batch_rows: int = 5000,
        max_skew: timedelta = DEFAULT_SKEW,
        pushdown: Pushdown = NO_PUSHDOWN,
    ) -> Iterator[pa.RecordBatch]:
        sql, params = self.logs_query(canonical_sql("read_logs_window"), window_params(start, end, max_skew, pushdown))
        with self._connect() as con:
            reader = con.sql(sql, params=params).to_arrow_reader(batch_rows)
            for batch in reader:
                yield conform_window_batch(batch)
