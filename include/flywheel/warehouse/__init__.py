"""The warehouse: the flywheel's system of record, behind one interface.

SQL is written once, in DuckDB's dialect with ``$name`` parameters (``include/sql``), and
transpiled with sqlglot for each backend (`prepare`); values are always bound, never spliced.
Writes are idempotent: `merge` replaces rows by the table's keys and `replace_partition` deletes
a cycle's rows before inserting them again, so a rerun or backfill of a logical date never
duplicates anything.

Three backends: DuckDB here (the embedded default), `flywheel.warehouse.bigquery` and
`flywheel.warehouse.snowflake`. The cloud ones are opened through their Airflow connection by
`flywheel_airflow.hooks.FlywheelWarehouseHook`, so that credentials never pass through config.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from flywheel.config import PROJECT_ROOT, USER_ACTIONS, FlywheelConfig
from flywheel.errors import WarehouseError
from flywheel.schema import _CONTROL, TABLES, WINDOW_SNAPSHOT

SQL_DIR = PROJECT_ROOT / "include" / "sql"
CANONICAL_DIALECT = "duckdb"
DEFAULT_SKEW = timedelta(minutes=10)


@dataclass(frozen=True)
class Pushdown:
    """The cheap rules a windowed read decides in the warehouse (see read_logs_window.sql).

    The default keeps every row: a read without pushdown returns every text."""

    allowed_actions: tuple[str, ...] = USER_ACTIONS
    min_quality_score: float = -1e308

    def params(self) -> dict[str, Any]:
        return {"allowed_actions": list(self.allowed_actions), "min_quality_score": float(self.min_quality_score)}


NO_PUSHDOWN = Pushdown()
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Regex character classes of literal characters, bound as parameters of the window query: every
# engine reads a bracket of plain characters the same way, where escapes such as \x{85} differ.
# Python's whitespace (what str.strip and str.split use) and the control/bidi set of validation.
SPACE_CLASS = "[" + "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "]"
CONTROL_FREE_PREFIX = "^[^" + _CONTROL.pattern.removeprefix("[")[:-1] + "]*"

_ARROW_TO_SQL = {
    "duckdb": {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN",
               pa.binary(): "BLOB", "timestamp": "TIMESTAMPTZ"},
    "bigquery": {pa.string(): "STRING", pa.float64(): "FLOAT64", pa.int64(): "INT64", pa.bool_(): "BOOL",
                 pa.binary(): "BYTES", "timestamp": "TIMESTAMP"},
    "snowflake": {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN",
                  pa.binary(): "BINARY", "timestamp": "TIMESTAMP_TZ"},
}  # fmt: skip


@cache
def canonical_sql(name: str) -> str:
    """A query from ``include/sql`` by name, in the canonical dialect."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise WarehouseError(f"no canonical SQL named {name!r} in {SQL_DIR}")
    return path.read_text()


def transpile(sql: str, dialect: str) -> str:
    """Canonical SQL in another dialect, with the fixes sqlglot's generic rewrite misses."""
    if dialect == CANONICAL_DIALECT:
        return sql
    return _dialect_tree(sql, dialect).sql(dialect)


def _dialect_tree(sql: str, dialect: str) -> exp.Expr:
    statements = [s for s in sqlglot.parse(sql, read=CANONICAL_DIALECT) if s is not None]
    if len(statements) != 1:
        raise WarehouseError(f"expected one SQL statement, got {len(statements)}")
    tree = statements[0]
    for node in tree.find_all(exp.RegexpReplace):
        # DuckDB's 'g' flag (replace every match) is what BigQuery and Snowflake always do;
        # passed through, it would land in Snowflake's `position` argument.
        node.set("modifiers", None)
    if dialect == "snowflake":
        for ident in tree.find_all(exp.Identifier):
            # Unquoted names resolve upper-case in Snowflake; a quoted one must be spelled so.
            if ident.quoted:
                ident.set("this", ident.name.upper())
    return tree


def prepare(sql: str, params: dict[str, Any] | None, dialect: str) -> tuple[str, Any]:
    """Canonical SQL and its named parameters, ready for a backend's client.

    DuckDB and BigQuery bind by name (``$x``, ``@x``). Snowflake's connector binds by position
    (``?``, server-side, so a NaN or a quote in a value stays a value), and cannot bind a list:
    ``list_contains($list, x)`` becomes ``x IN (?, ?, ...)``. Every placeholder must have a
    value, and every value a placeholder."""
    params = dict(params or {})
    if dialect == CANONICAL_DIALECT:
        return sql, params
    tree = _dialect_tree(sql, dialect)
    names = {p.name for p in tree.find_all(exp.Placeholder)}
    if names != set(params):
        raise WarehouseError(f"SQL parameters {sorted(names)} do not match the values given {sorted(params)}")
    if dialect != "snowflake":
        return tree.sql(dialect), params
    positional: list[Any] = []

    def to_position(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.ArrayContains) and isinstance(node.this, exp.Placeholder):
            values = list(params[node.this.name])
            positional.extend(values)
            return exp.In(this=node.expression, expressions=[exp.Placeholder() for _ in values])
        if not isinstance(node, exp.Placeholder) or not node.name:
            return node
        value = params[node.name]
        if isinstance(value, list | tuple):
            raise WarehouseError(f"list parameter {node.name!r} is only bound inside list_contains")
        positional.append(value)
        return exp.Placeholder()

    return tree.transform(to_position).sql(dialect), positional


def check_identifier(name: str) -> str:
    """Identifiers come from code and config, never from data; still, refuse anything odd."""
    if not _IDENTIFIER.match(name):
        raise WarehouseError(f"invalid SQL identifier {name!r}")
    return name


def sql_type(arrow_type: pa.DataType, dialect: str = CANONICAL_DIALECT) -> str:
    types = _ARROW_TO_SQL[dialect]
    if pa.types.is_timestamp(arrow_type):
        return types["timestamp"]
    try:
        return types[arrow_type]
    except KeyError as exc:
        raise WarehouseError(f"no SQL type for Arrow type {arrow_type}") from exc


def create_table_sql(table: str) -> str:
    spec = TABLES[table]
    cols = ", ".join(f'"{check_identifier(f.name)}" {sql_type(f.type)}' for f in spec.schema)
    return f"CREATE TABLE IF NOT EXISTS {check_identifier(table)} ({cols})"


def window_params(start: datetime, end: datetime, max_skew: timedelta, pushdown: Pushdown) -> dict[str, Any]:
    """The bound values of ``read_logs_window.sql``, the same for every backend."""
    return {
        "window_start": start,
        "window_end": end,
        "max_skew_us": int(max_skew / timedelta(microseconds=1)),
        "space_class": SPACE_CLASS,
        "control_free_prefix": CONTROL_FREE_PREFIX,
        **pushdown.params(),
    }


def conform_window_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """A window batch as `WINDOW_SNAPSHOT`, whatever a backend's client made of its types (an
    upper-cased name, a decimal count, nanosecond timestamps)."""
    schema = WINDOW_SNAPSHOT
    by_name = {name.lower(): i for i, name in enumerate(batch.schema.names)}
    return pa.RecordBatch.from_arrays(
        [_column(batch, by_name[f.name]).cast(f.type) for f in schema], schema=schema
    )


def _column(batch: pa.RecordBatch | pa.Table, i: int) -> pa.Array:
    col = batch.column(i)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``rows`` rows (the last may be shorter), from whatever sizes a client
    streams, holding at most one client batch plus one output batch in memory."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for batch in batches:
        pending.append(batch)
        have += batch.num_rows
        while have >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            rest = table.slice(rows)
            pending, have = rest.to_batches(), rest.num_rows
    if have:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


class Warehouse(ABC):
    """What every backend offers the stages. Tables and their keys are in `flywheel.schema`."""

    dialect: str = CANONICAL_DIALECT

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
        return self.read_logs_window(start, end, batch_rows=batch_rows, max_skew=max_skew, pushdown=pushdown)

    def named_query(self, name: str, params: dict[str, Any] | None = None) -> pa.Table:
        return self.query(canonical_sql(name), params)

    def count(self, table: str, where: dict[str, Any] | None = None) -> int:
        check_identifier(table)
        clause, params = _where(where or {})
        return int(self.query(f"SELECT COUNT(*) AS n FROM {table}{clause}", params).column("n")[0].as_py())

    def select(self, table: str, where: dict[str, Any] | None = None, order_by: str | None = None) -> pa.Table:
        check_identifier(table)
        clause, params = _where(where or {})
        order = f" ORDER BY {', '.join(check_identifier(c.strip()) for c in order_by.split(','))}" if order_by else ""
        return self.query(f"SELECT * FROM {table}{clause}{order}", params)


def _where(where: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if not where:
        return "", {}
    parts, params = [], {}
    for i, (col, value) in enumerate(where.items()):
        parts.append(f'"{check_identifier(col)}" = $w{i}')
        params[f"w{i}"] = value
    return " WHERE " + " AND ".join(parts), params


def _insert_sql(table: str) -> str:
    """Insert ``_incoming`` by column name: a migrated table may order its columns differently."""
    cols = ", ".join(f'"{check_identifier(c)}"' for c in TABLES[table].schema.names)
    return f"INSERT INTO {check_identifier(table)} ({cols}) SELECT {cols} FROM _incoming"


def _merge_deletes(table: str) -> list[str]:
    """The deletes that make room for ``_incoming``: stored rows with the same keys, and, for a
    row whose key is missing (a malformed log row kept for quarantine), the very same content.
    So a re-merge of the same bad row is idempotent while two different keyless rows both
    survive. Two statements, not one with OR, so that each stays a hash join."""
    spec = TABLES[table]
    keys = ", ".join(f'"{k}"' for k in spec.keys)
    any_null = lambda alias: " OR ".join(f'{alias}."{k}" IS NULL' for k in spec.keys)  # noqa: E731
    same_row = " AND ".join(f'i."{c}" IS NOT DISTINCT FROM t."{c}"' for c in spec.schema.names)
    return [
        f"DELETE FROM {table} WHERE ({keys}) IN (SELECT {keys} FROM _incoming)",
        f"DELETE FROM {table} t WHERE ({any_null('t')}) AND EXISTS "
        f"(SELECT 1 FROM _incoming i WHERE ({any_null('i')}) AND {same_row})",
    ]


def _conform(table: str, rows: pa.Table) -> pa.Table:
    """Rows in the table's exact column order and types; a missing or extra column is an error."""
    schema = TABLES[table].schema
    missing = [n for n in schema.names if n not in rows.column_names]
    extra = [n for n in rows.column_names if n not in schema.names]
    if missing or extra:
        raise WarehouseError(f"rows for {table} do not match its schema: missing {missing}, unexpected {extra}")
    try:
        return rows.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise WarehouseError(f"rows for {table} cannot be cast to its schema: {exc}") from exc


class DuckDBWarehouse(Warehouse):
    """The embedded default: one DuckDB file under the flywheel's data folder.

    A DuckDB file admits one writing process at a time, so each operation opens a short-lived
    connection and retries while another process (a parallel task, the demo) holds the lock.
    """

    dialect = "duckdb"

    def __init__(self, path: str | Path, *, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"DuckDBWarehouse({str(self.path)!r})"

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        import duckdb

        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        incoming = _conform(table, rows)
        with self._connect() as con:
            con.register("_incoming", incoming)
            con.execute("BEGIN TRANSACTION")
            try:
                for statement in _merge_deletes(table):
                    con.execute(statement)
                con.execute(_insert_sql(table))
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
        return incoming.num_rows

    def replace_partition(self, table: str, where: dict[str, Any], rows: pa.Table) -> int:
        if not where:
            raise WarehouseError("replace_partition needs a non-empty partition filter")
        incoming = _conform(table, rows)
        clause, params = _where(where)
        with self._connect() as con:
            con.register("_incoming", incoming)
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"DELETE FROM {check_identifier(table)}{clause}", params)
                con.execute(_insert_sql(table))
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
        params = window_params(start, end, max_skew, pushdown)
        with self._connect() as con:
            reader = con.sql(canonical_sql("read_logs_window"), params=params).to_arrow_reader(batch_rows)
            for batch in reader:
                yield conform_window_batch(batch)


def warehouse_from_config(config: FlywheelConfig) -> Warehouse:
    """The embedded default. The cloud backends need their Airflow connection's credentials:
    `flywheel_airflow.hooks.FlywheelWarehouseHook` opens them (and the embedded one too)."""
    backend = config.warehouse.backend
    if backend == "duckdb":
        return DuckDBWarehouse(config.duckdb_path)
    raise WarehouseError(
        f"warehouse backend {backend!r} is opened through its Airflow connection "
        f"{config.warehouse.conn_id!r}: use flywheel_airflow.hooks.FlywheelWarehouseHook"
    )
