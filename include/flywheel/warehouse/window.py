"""The windowed read of production logs: what it decides in the warehouse, what it binds, and
the batches it yields.

Every backend runs the same ``read_logs_window.sql`` with the same bound values and returns
batches of exactly `WINDOW_SNAPSHOT`, whatever its client made of the types.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa

from flywheel.config import USER_ACTIONS
from flywheel.tables import WINDOW_SNAPSHOT
from flywheel.validation import CONTROL_CHARACTERS

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

# Regex character classes of literal characters, bound as parameters of the window query: every
# engine reads a bracket of plain characters the same way, where escapes such as \x{85} differ.
# Python's whitespace (what str.strip and str.split use) and the control/bidi set of validation.
SPACE_CLASS = "[" + "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "]"
CONTROL_FREE_PREFIX = "^[^" + CONTROL_CHARACTERS.pattern.removeprefix("[")[:-1] + "]*"


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
