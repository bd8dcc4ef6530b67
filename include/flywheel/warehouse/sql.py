"""SQL written once: the canonical queries, their translation per dialect, and the statements
every backend builds from the tables' schemas.

Canonical SQL is DuckDB's dialect with ``$name`` parameters (``include/sql``), transpiled with
sqlglot for each backend (`prepare`); values are always bound, never spliced. Identifiers come
from code and config, and are checked all the same (`check_identifier`).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from flywheel.config import PROJECT_ROOT
from flywheel.errors import WarehouseError
from flywheel.tables import TABLES

SQL_DIR = PROJECT_ROOT / "include" / "sql"
CANONICAL_DIALECT = "duckdb"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

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
    # Each placeholder gets a unique name, and the values follow the names' order in the text
    # written: a tree's traversal order is not the text's (a WITH comes after its query).
    marked: list[Any] = []

    def mark(value: Any) -> exp.Placeholder:
        marked.append(value)
        return exp.Placeholder(this=f"{_MARK}{len(marked) - 1}")

    def to_marked(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.ArrayContains) and isinstance(node.this, exp.Placeholder):
            return exp.In(this=node.expression, expressions=[mark(v) for v in params[node.this.name]])
        if not isinstance(node, exp.Placeholder) or not node.name:
            return node
        value = params[node.name]
        if isinstance(value, list | tuple):
            raise WarehouseError(f"list parameter {node.name!r} is only bound inside list_contains")
        return mark(value)

    text = tree.transform(to_marked).sql(dialect)
    positional = [marked[int(i)] for i in _MARKED.findall(text)]
    if len(positional) != len(marked):
        raise WarehouseError("SQL parameters were lost in translation to Snowflake")
    return _MARKED.sub("?", text), positional


_MARK = "__flywheel_bind_"
_MARKED = re.compile(r":" + _MARK + r"(\d+)\b")


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


def where_clause(where: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``column = value`` filters as a WHERE clause, each value bound (``$w0``, ``$w1``, ...)."""
    if not where:
        return "", {}
    parts, params = [], {}
    for i, (col, value) in enumerate(where.items()):
        parts.append(f'"{check_identifier(col)}" = $w{i}')
        params[f"w{i}"] = value
    return " WHERE " + " AND ".join(parts), params


def insert_sql(table: str) -> str:
    """Insert ``_incoming`` by column name: a migrated table may order its columns differently."""
    cols = ", ".join(f'"{check_identifier(c)}"' for c in TABLES[table].schema.names)
    return f"INSERT INTO {check_identifier(table)} ({cols}) SELECT {cols} FROM _incoming"


def merge_deletes(table: str) -> list[str]:
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


def conform_rows(table: str, rows: pa.Table) -> pa.Table:
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
