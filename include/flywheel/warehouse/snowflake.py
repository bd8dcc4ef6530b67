"""The Snowflake backend, on `snowflake-connector-python`.

It takes a connection factory (in Airflow, `SnowflakeHook.get_conn`, which carries the
credentials and the run's query tag) and keeps one session for its lifetime. Values are bound
server-side (``qmark``), so a NaN, a quote or a control character in a value stays a value.

Writes go through a temporary staging table filled by array inserts (one round trip per
``write_batch_rows``; the connector moves large ones through a stage by itself), then one
transaction deletes the rows they replace and inserts them. Not a MERGE statement: a batch may
hold two rows with one request_id (a conflicting re-delivery, kept so that validation can
quarantine it), and Snowflake's MERGE refuses, or picks one of, several source rows per target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from flywheel.errors import WarehouseError
from flywheel.tables import TABLES
from flywheel.warehouse.base import Warehouse
from flywheel.warehouse.sql import (
    canonical_sql,
    check_identifier,
    conform_rows,
    merge_deletes,
    prepare,
    sql_type,
    where_clause,
)
from flywheel.warehouse.window import (
    DEFAULT_SKEW,
    NO_PUSHDOWN,
    Pushdown,
    conform_window_batch,
    rebatch,
    window_params,
)

log = logging.getLogger(__name__)


class SnowflakeWarehouse(Warehouse):
    dialect = "snowflake"

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        database: str | None = None,
        schema: str = "FLYWHEEL",
        write_batch_rows: int = 50000,
    ) -> None:
        self._connect = connect
        self.database = check_identifier(database) if database else None
        self.schema = check_identifier(schema)
        self.write_batch_rows = write_batch_rows
        self._con: Any = None

    def __repr__(self) -> str:
        return f"SnowflakeWarehouse({self.database or '<connection database>'}.{self.schema})"

    @property
    def con(self) -> Any:
        if self._con is None:
            con = self._connect()
            cur = con.cursor()
            if self.database:
                cur.execute(f"USE DATABASE {self.database}")
            cur.execute(f"USE SCHEMA {self.schema}")
            self._con = con
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def cancel(self) -> None:
        """Abort the session's running statement (the task was killed); Snowflake rolls back
        the open transaction with it."""
        if self._con is not None:
            try:
                self._con.cursor().execute("SELECT SYSTEM$CANCEL_ALL_QUERIES(CURRENT_SESSION()::INTEGER)")
            finally:
                self.close()

    def _cursor(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        text, positional = prepare(sql, params, self.dialect)
        cur = self.con.cursor()
        cur.execute(text, [_bindable(v) for v in positional])
        return cur

    def ensure_schema(self) -> None:
        """Create the schema and missing tables; add columns a newer version has (a migration)."""
        con = self._connect()
        try:
            cur = con.cursor()
            if self.database:
                cur.execute(f"USE DATABASE {self.database}")
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        finally:
            con.close()
        cur = self.con.cursor()
        for table, spec in TABLES.items():
            cols = ", ".join(f"{_name(f.name)} {sql_type(f.type, self.dialect)}" for f in spec.schema)
            cluster = ' CLUSTER BY (TO_DATE("TIMESTAMP"))' if "timestamp" in spec.schema.names else ""
            cur.execute(f"CREATE TABLE IF NOT EXISTS {check_identifier(table)} ({cols}){cluster}")
            cur.execute(
                "SELECT LOWER(column_name) FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
                [self.schema.upper(), table.upper()],
            )
            have = {r[0] for r in cur.fetchall()}
            for f in spec.schema:
                if f.name not in have:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {_name(f.name)} {sql_type(f.type, self.dialect)}")

    def query(self, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
        return _normalise(self._cursor(sql, params).fetch_arrow_all(force_return_table=True))

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self._cursor(sql, params)

    def merge(self, table: str, rows: pa.Table) -> int:
        incoming = conform_rows(table, rows)
        self._write(table, incoming, merge_deletes(table))
        return incoming.num_rows

    def replace_partition(self, table: str, where: dict[str, Any], rows: pa.Table) -> int:
        if not where:
            raise WarehouseError("replace_partition needs a non-empty partition filter")
        incoming = conform_rows(table, rows)
        clause, params = where_clause(where)
        self._write(table, incoming, [(f"DELETE FROM {check_identifier(table)}{clause}", params)])
        return incoming.num_rows

    def _write(self, table: str, incoming: pa.Table, deletes: list[Any]) -> None:
        """Stage ``incoming``, then delete what it replaces and insert it, in one transaction."""
        cur = self.con.cursor()
        schema = TABLES[table].schema
        names = ", ".join(_name(n) for n in schema.names)
        # Bound as text where the connector's binding of a type is not portable: binary as hex,
        # timestamps as ISO 8601 (a bound TIMESTAMP_TZ travels as an epoch and an offset, which
        # fakesnow cannot read); converted once staged, so the deletes compare like with like.
        raw = ", ".join(f"{_name(f.name)} {_staged_type(f.type)}" for f in schema)
        cur.execute(f"CREATE OR REPLACE TEMPORARY TABLE _incoming_raw ({raw})")
        marks = ", ".join("?" for _ in schema)
        for batch in incoming.to_batches(self.write_batch_rows):
            columns = [_bindable_column(batch.column(i)) for i in range(batch.num_columns)]
            cur.executemany(f"INSERT INTO _incoming_raw ({names}) VALUES ({marks})", list(zip(*columns, strict=True)))
        typed = ", ".join(
            f"{_converted(f.name, f.type)} AS {_name(f.name)}" for f in schema
        )
        cur.execute(f"CREATE OR REPLACE TEMPORARY TABLE _incoming AS SELECT {typed} FROM _incoming_raw")
        cur.execute("BEGIN")
        try:
            for statement in deletes:
                sql, params = statement if isinstance(statement, tuple) else (statement, {})
                self._cursor(sql, params)
            cur.execute(f"INSERT INTO {check_identifier(table)} ({names}) SELECT {names} FROM _incoming")
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.execute("DROP TABLE IF EXISTS _incoming")
            cur.execute("DROP TABLE IF EXISTS _incoming_raw")

    def read_logs_window(
        self,
        start: datetime,
        end: datetime,
        *,
        batch_rows: int = 5000,
        max_skew: timedelta = DEFAULT_SKEW,
        pushdown: Pushdown = NO_PUSHDOWN,
    ) -> Iterator[pa.RecordBatch]:
        """Streams the result's Arrow chunks as Snowflake serves them (one at a time)."""
        cur = self._cursor(*self.logs_query(canonical_sql("read_logs_window"), window_params(start, end, max_skew, pushdown)))
        chunks = (b for table in cur.fetch_arrow_batches() for b in table.to_batches())
        for batch in rebatch(chunks, batch_rows):
            yield conform_window_batch(batch)


def _name(column: str) -> str:
    """A column as Snowflake stores an unquoted name (upper case), quoted so that no column
    name can collide with a keyword."""
    return f'"{check_identifier(column).upper()}"'


def _staged_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_binary(arrow_type) or pa.types.is_timestamp(arrow_type):
        return "VARCHAR"
    return sql_type(arrow_type, "snowflake")


def _converted(column: str, arrow_type: pa.DataType) -> str:
    if pa.types.is_binary(arrow_type):
        return f"TO_BINARY({_name(column)}, 'HEX')"
    if pa.types.is_timestamp(arrow_type):
        return f"CAST({_name(column)} AS TIMESTAMP_TZ)"
    return _name(column)


def _bindable(value: Any) -> Any:
    """A parameter value as the connector binds it portably (see `SnowflakeWarehouse._write`)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise WarehouseError(f"timestamp parameter {value!r} has no time zone")
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _bindable_column(column: pa.Array) -> list[Any]:
    if pa.types.is_timestamp(column.type):
        return [None if v is None else v.isoformat() for v in column.to_pylist()]
    if pa.types.is_binary(column.type):
        return [None if v is None else v.hex() for v in column.to_pylist()]
    return column.to_pylist()


def _normalise(table: pa.Table) -> pa.Table:
    """Snowflake answers in upper case and with NUMBER(38, 0) for integers; the flywheel's
    tables and queries are lower case and use int64."""
    columns = []
    for col in table.columns:
        if pa.types.is_decimal(col.type) and col.type.scale == 0:
            col = col.cast(pa.int64())
        elif pa.types.is_timestamp(col.type):
            col = col.cast(pa.timestamp("us", tz="UTC"))
        columns.append(col)
    return pa.Table.from_arrays(columns, names=[n.lower() for n in table.column_names])
