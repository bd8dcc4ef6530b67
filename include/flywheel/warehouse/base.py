"""The warehouse interface: what every backend offers the stages.

Writes are idempotent: `merge` replaces rows by the table's keys and `replace_partition` deletes
a cycle's rows before inserting them again, so a rerun or backfill of a logical date never
duplicates anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from flywheel.errors import WarehouseError
from flywheel.warehouse.source import LogSource, reading
from flywheel.warehouse.sql import CANONICAL_DIALECT, canonical_sql, check_identifier, where_clause
from flywheel.warehouse.window import DEFAULT_SKEW, NO_PUSHDOWN, Pushdown


class Warehouse(ABC):
    """What every backend offers the stages. Tables and their keys are in `flywheel.tables`."""

    dialect: str = CANONICAL_DIALECT
    # The product's own log table, read in place as production_logs (`flywheel.warehouse.source`);
    # None: the flywheel's production_logs table.
    source: LogSource | None = None

    @abstractmethod
    def ensure_schema(self) -> None:
        """Create the flywheel's tables when they are missing."""

    @abstractmethod
    def query(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        """Run canonical SQL with bound parameters; return the result as Arrow."""

    @abstractmethod
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a canonical SQL statement with bound parameters."""

    @abstractmethod
    def merge(self, table: str, rows: pa.Table) -> int:
        """Insert rows, replacing any existing rows with the same keys; return rows written."""

    @abstractmethod
    def replace_partition(self, table: str, where: dict[str, Any], rows: pa.Table) -> int:
        """Delete the rows matching ``where`` (column = value), then insert ``rows``."""

    @abstractmethod
    def read_logs_window(
        self,
        start: datetime,
        end: datetime,
        *,
        batch_rows: int = 5000,
        max_skew: timedelta = DEFAULT_SKEW,
        pushdown: Pushdown = NO_PUSHDOWN,
    ) -> Iterator[pa.RecordBatch]:
        """Stream production logs of ``[start, end)`` as Arrow batches of `WINDOW_SNAPSHOT`.

        Rows are windowed by event time, except rows with no usable event time (missing, or
        later than their ingestion plus ``max_skew``), which are windowed by ingestion time.
        Rows the ``pushdown`` rules reject come without their text, with its facts instead."""

    def cancel(self) -> None:
        """Cancel what this warehouse is running on the task's behalf (the task was killed).
        An embedded warehouse runs nothing of its own: its work dies with the process."""
        return None

    # Convenience built on the primitives above ------------------------------------------
    def read_window(
        self,
        table: str,
        start: datetime,
        end: datetime,
        *,
        batch_rows: int = 5000,
        max_skew: timedelta = DEFAULT_SKEW,
        pushdown: Pushdown = NO_PUSHDOWN,
    ) -> Iterator[pa.RecordBatch]:
        if table != "production_logs":
            raise WarehouseError(f"windowed reads are defined for production_logs, not {table!r}")
        batches = self.read_logs_window(start, end, batch_rows=batch_rows, max_skew=max_skew, pushdown=pushdown)
        return batches if self.source is None else self._naming_source(batches)

    def _naming_source(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """A failed read of the product's own table says which table and mapping it was (a note
        on the client's own error, whose type the task's retries and kill handling see)."""
        try:
            yield from batches
        except Exception as exc:
            exc.add_note(f"reading the log source {self.source} (source.table) mapped by source.columns "
                         f"{self.source.columns if self.source else {}}; its event-time column must be a timestamp")  # fmt: skip
            raise

    def logs_query(self, sql: str, params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Canonical SQL that reads ``production_logs``, as it reads this warehouse's logs (the
        product's own table when a source is configured), with its bound values."""
        return reading(self.source, sql, params)

    def query_logs(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self.query(*self.logs_query(sql, params))

    def named_query(self, name: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self.query(canonical_sql(name), params)

    def count(self, table: str, where: dict[str, Any] | None = None) -> int:
        check_identifier(table)
        clause, params = where_clause(where or {})
        return int(self.query(f"SELECT COUNT(*) AS n FROM {table}{clause}", params).column("n")[0].as_py())

    def select(self, table: str, where: dict[str, Any] | None = None, order_by: str | None = None) -> pa.Table:
        check_identifier(table)
        clause, params = where_clause(where or {})
        order = f" ORDER BY {', '.join(check_identifier(c.strip()) for c in order_by.split(','))}" if order_by else ""
        return self.query(f"SELECT * FROM {table}{clause}{order}", params)
