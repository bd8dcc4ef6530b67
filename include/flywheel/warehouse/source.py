"""A product's own log table, read in place: the queries that read logs see it as
``production_logs``.

The queries that read production logs (the window, the A/B arms) are written once against
``production_logs``. With a `LogSource`, each of them gets a common table expression of that name
in front: a projection of the team's table that renames its columns onto the flywheel's fields
and maps its action values onto the four actions. Nothing is copied, and the window's predicates
stay plain comparisons on the event-time column, so the warehouse still prunes partitions of the
table (BigQuery and Snowflake inline a CTE that is a projection).

Values are not coerced into validity: a text or id column is cast to text and a score to a
number, and whatever is wrong with a value (a missing id, an unknown action, a NaN score) reaches
validation and is quarantined with its reason, as for any log row. What cannot be read at all
(an event-time column that is not a timestamp, a column that does not exist) fails the query
with the warehouse's message and the source named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from flywheel.config import SourceConfig
from flywheel.errors import WarehouseError
from flywheel.tables import PRODUCTION_LOGS
from flywheel.warehouse.sql import CANONICAL_DIALECT, sql_type

LOGS = "production_logs"
_PARAM = "source_action_"


@dataclass(frozen=True)
class LogSource:
    """Where the logs are read from: a table or view, its columns per flywheel field, and its
    action vocabulary (lower-cased source value -> action)."""

    table: str
    columns: dict[str, str]
    actions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: SourceConfig) -> LogSource | None:
        if config.table is None:
            return None
        return cls(config.table, dict(config.columns), dict(config.actions))

    def __str__(self) -> str:
        return self.table

    @property
    def windows_by_event_time_only(self) -> bool:
        """No load-time column: a row without an event time is in no window."""
        return "ingested_at" not in self.columns

    def relation(self) -> tuple[exp.Select, dict[str, Any]]:
        """The projection of the table as ``production_logs``' columns, and its bound values."""
        params: dict[str, Any] = {}
        columns = []
        for f in PRODUCTION_LOGS:
            columns.append(exp.alias_(self._column(f, params), f.name, quoted=True))
        table = exp.Table(**dict(zip(("this", "db", "catalog"),
                                     [exp.to_identifier(p, quoted=True) for p in reversed(self.table.split("."))],
                                     strict=False)))  # fmt: skip
        return exp.select(*columns).from_(table), params

    def _column(self, f: pa.Field, params: dict[str, Any]) -> exp.Expr:
        name = self.columns.get(f.name)
        if name is None:
            if f.name == "ingested_at":  # no load time: windowed by event time alone
                return self._column(PRODUCTION_LOGS.field("timestamp"), params)
            if f.name == "included_in_training":
                return exp.false()
            return exp.cast(exp.null(), sql_type(f.type))
        col = exp.column(name, quoted=True)
        if pa.types.is_timestamp(f.type):
            # Not cast: a cast would hide the column from partition pruning. A naive timestamp
            # reads as UTC (every session of the flywheel's runs in UTC).
            return col
        text = exp.cast(col, "VARCHAR")
        if f.name == "user_action" and self.actions:
            ifs = []
            for i, (value, action) in enumerate(sorted(self.actions.items())):
                params[f"{_PARAM}{i}_from"], params[f"{_PARAM}{i}_to"] = value, action
                ifs.append(exp.If(this=exp.EQ(this=exp.Lower(this=text.copy()), expression=exp.Placeholder(this=f"{_PARAM}{i}_from")),
                                  true=exp.Placeholder(this=f"{_PARAM}{i}_to")))  # fmt: skip
            return exp.Case(ifs=ifs, default=text)
        if pa.types.is_string(f.type):
            return text
        return exp.cast(col, sql_type(f.type))

    def wrap(self, sql: str, params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Canonical SQL that reads ``production_logs``, reading this table instead."""
        statements = [s for s in sqlglot.parse(sql, read=CANONICAL_DIALECT) if s is not None]
        if len(statements) != 1 or not isinstance(statements[0], exp.Query):
            raise WarehouseError("a log source wraps one query")
        relation, values = self.relation()
        clash = set(values) & set(params or {})
        if clash:
            raise WarehouseError(f"parameters {sorted(clash)} are the log source's own")
        tree = statements[0]
        cte = exp.CTE(this=relation, alias=exp.TableAlias(this=exp.to_identifier(LOGS)))
        if tree.args.get("with_") or tree.args.get("with"):
            with_ = tree.args.get("with_") or tree.args["with"]
            with_.set("expressions", [cte, *with_.expressions])  # first: the others read it
        else:
            tree = tree.with_(LOGS, as_=relation)
        return tree.sql(CANONICAL_DIALECT), {**(params or {}), **values}


def reading(source: LogSource | None, sql: str, params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """``sql`` and ``params`` as they read the logs: from ``source`` if there is one."""
    return source.wrap(sql, params) if source is not None else (sql, dict(params or {}))
