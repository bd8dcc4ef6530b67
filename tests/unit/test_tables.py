"""The warehouse tables: every one has its keys in its schema; rows become Arrow tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from flywheel.tables import PRODUCTION_LOGS, TABLES, empty_table, rows_to_table

TS = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def row(make_log_row):
    return make_log_row("req-1", TS)


def test_rows_to_table_uses_table_schema(row):
    table = rows_to_table("production_logs", [row, {"request_id": "only-id"}])
    assert table.schema.equals(PRODUCTION_LOGS)
    assert table.num_rows == 2
    assert table.column("request_id").to_pylist() == ["req-1", "only-id"]
    assert table.column("prompt").to_pylist()[1] is None
    assert table.column("timestamp").type == pa.timestamp("us", tz="UTC")


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_table_has_keys_in_its_schema(name):
    spec = TABLES[name]
    assert spec.keys and set(spec.keys) <= set(spec.schema.names)
    assert empty_table(name).schema.equals(spec.schema)
    assert rows_to_table(name, []).num_rows == 0


def test_rows_to_table_ignores_unknown_keys():
    table = rows_to_table("metrics", [{"cycle_id": "c", "name": "n", "value": 1.5, "junk": 1}])
    assert table.column_names == ["cycle_id", "name", "value", "recorded_at"]
    assert table.to_pylist()[0]["value"] == 1.5
