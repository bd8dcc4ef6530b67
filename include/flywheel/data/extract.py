"""The lagged extraction window, and the cycle's snapshot of it.

Airflow 3 cron schedules use `CronTriggerTimetable`, whose runs have
``data_interval_start == data_interval_end == logical_date``; so the window is computed from the
run's ``data_interval_end`` alone: ``[end - lag - window, end - lag)``. The lag lets users'
corrections and regenerations settle before their rows are used.

Arithmetic is done on absolute UTC instants: "7 days" is 168 hours whatever the schedule's time
zone, so a window never gains or loses an hour across a daylight-saving change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.errors import WindowError
from flywheel.records import ELIDABLE_TEXT_FIELDS
from flywheel.tables import WINDOW_SNAPSHOT
from flywheel.validation import text_facts
from flywheel.warehouse import Pushdown, Warehouse


@dataclass(frozen=True)
class Window:
    """A half-open interval of event time, ``[start, end)``, in UTC."""

    start: datetime
    end: datetime

    def __contains__(self, ts: datetime) -> bool:
        return self.start <= ts.astimezone(UTC) < self.end

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86400


def as_utc(moment: datetime) -> datetime:
    """A stdlib UTC datetime for any aware one (pendulum's arithmetic is wall-clock in its zone).

    Built field by field, not through a float POSIX timestamp, so microseconds survive at any date.
    """
    u = moment.astimezone(UTC)
    return datetime(u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond, tzinfo=UTC)


def lagged_window(data_interval_end: datetime, *, lag_days: int = 14, window_days: int = 7) -> Window:
    """The window a run reads: ``[end - lag - window, end - lag)`` in UTC."""
    if not isinstance(data_interval_end, datetime):
        raise WindowError(f"data_interval_end must be a datetime, got {type(data_interval_end).__name__}")
    if data_interval_end.tzinfo is None or data_interval_end.utcoffset() is None:
        raise WindowError(
            f"data_interval_end {data_interval_end.isoformat()} has no time zone; "
            "Airflow passes aware datetimes, and a naive one is ambiguous"
        )
    if lag_days < 0:
        raise WindowError(f"lag_days must be >= 0, got {lag_days}")
    if window_days <= 0:
        raise WindowError(f"window_days must be > 0, got {window_days}")
    end_utc = as_utc(data_interval_end)
    end = end_utc - timedelta(days=lag_days)
    return Window(start=end - timedelta(days=window_days), end=end)


def extract_window_snapshot(
    warehouse: Warehouse,
    window: Window,
    path: Path,
    *,
    batch_rows: int = 5000,
    max_skew: timedelta | None = None,
    pushdown: Pushdown | None = None,
    extra_rows: list[dict[str, Any]] | None = None,
    superseded_ids: set[str] | None = None,
) -> int:
    """Stream the window's production logs into a Parquet snapshot; return the row count.

    The snapshot is the cycle's input from here on: later tasks read the same rows even if late
    logs arrive in the warehouse meanwhile, and a rerun rewrites it whole. With ``pushdown``,
    the rows its rules reject hold no text (see `flywheel.warehouse.Pushdown`). ``extra_rows``
    (log-shaped rows from other sources: gold examples, manual labels, synthetic examples) are
    appended with their text; every rule, the pushed-down ones included, judges them in Python.
    Window rows whose request id is in ``superseded_ids`` are left out: an extra row stands for
    them (a reviewed row's gold version, say), so no request is read twice.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        options: dict[str, Any] = {"batch_rows": batch_rows}
        if max_skew is not None:
            options["max_skew"] = max_skew
        if pushdown is not None:
            options["pushdown"] = pushdown
        drop = pa.array(sorted(superseded_ids or ()), pa.string())
        for batch in warehouse.read_window("production_logs", window.start, window.end, **options):
            if len(drop):
                batch = batch.filter(pc.invert(pc.fill_null(pc.is_in(batch.column("request_id"), value_set=drop), False)))
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema)
            writer.write_batch(batch)
            rows += batch.num_rows
        if extra_rows:
            if writer is None:
                writer = pq.ParquetWriter(tmp, WINDOW_SNAPSHOT)
            extra = pa.Table.from_pylist([_snapshot_row(r) for r in extra_rows], schema=writer.schema)
            writer.write_table(extra)
            rows += extra.num_rows
        if writer is None:
            pq.write_table(WINDOW_SNAPSHOT.empty_table(), tmp)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    return rows


def _snapshot_row(row: dict[str, Any]) -> dict[str, Any]:
    """A log row from another source as a snapshot row: its text facts computed here, as the
    window query computes them for the warehouse's rows (the raw gate profiles them)."""
    out = {**row, "pushdown_kept": True}
    for name in ELIDABLE_TEXT_FIELDS:
        facts = text_facts(row.get(name))
        out |= {f"{name}_present": facts.present, f"{name}_chars": facts.chars, f"{name}_blank": facts.blank,
                f"{name}_control_at": facts.control_at, f"{name}_control_char": facts.control_char}  # fmt: skip
    return out
