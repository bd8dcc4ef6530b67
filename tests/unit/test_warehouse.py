"""The embedded DuckDB warehouse: schema, idempotent writes, windowed reads, SQL transpiling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.config import FlywheelConfig
from flywheel.errors import WarehouseError
from flywheel.tables import TABLES, WINDOW_SNAPSHOT, rows_to_table
from flywheel.validation import facts_from_row, text_facts
from flywheel.warehouse import Pushdown, warehouse_from_config
from flywheel.warehouse.duckdb import DuckDBWarehouse
from flywheel.warehouse.sql import (
    canonical_sql,
    check_identifier,
    create_table_sql,
    prepare,
    sql_type,
    transpile,
)
from flywheel.warehouse.window import SPACE_CLASS, rebatch

T0 = datetime(2026, 2, 2, tzinfo=UTC)
H = timedelta(hours=1)


def logs(make_log_row, n, start=T0, step=H, prefix="r"):
    return rows_to_table(
        "production_logs", [make_log_row(f"{prefix}{i:03d}", start + i * step) for i in range(n)]
    )


def test_ensure_schema_creates_every_table(wh):
    tables = (
        wh.query("SELECT table_name FROM information_schema.tables")
        .column("table_name")
        .to_pylist()
    )
    assert set(tables) == set(TABLES)
    for name, spec in TABLES.items():
        assert wh.query(f"SELECT * FROM {name} LIMIT 0").column_names == spec.schema.names
        assert wh.count(name) == 0
    wh.ensure_schema()  # idempotent
    assert wh.count("production_logs") == 0


def test_merge_is_idempotent(wh, make_log_row):
    table = logs(make_log_row, 10)
    assert wh.merge("production_logs", table) == 10
    wh.merge("production_logs", table)
    assert wh.count("production_logs") == 10
    assert (
        wh.query("SELECT COUNT(DISTINCT request_id) AS n FROM production_logs")
        .column("n")[0]
        .as_py()
        == 10
    )


def test_merge_replaces_changed_rows_and_adds_new(wh, make_log_row):
    wh.merge("production_logs", logs(make_log_row, 3))
    changed = rows_to_table(
        "production_logs",
        [
            make_log_row("r001", T0 + H, user_action="corrected", correction="FIXED"),
            make_log_row("new", T0),
        ],
    )
    wh.merge("production_logs", changed)
    rows = {r["request_id"]: r for r in wh.select("production_logs").to_pylist()}
    assert sorted(rows) == ["new", "r000", "r001", "r002"]
    assert (rows["r001"]["user_action"], rows["r001"]["correction"]) == ("corrected", "FIXED")
    assert rows["r000"]["user_action"] == "accepted"


def test_merge_on_composite_keys(wh):
    now = T0

    def q(row_number, rule, reason):
        return {
            "cycle_id": "c1",
            "row_number": row_number,
            "request_id": "x",
            "field": "prompt",
            "rule": rule,
            "reason": reason,
            "quarantined_at": now,
        }

    wh.merge(
        "quarantine", rows_to_table("quarantine", [q(1, "required", "a"), q(2, "required", "b")])
    )
    wh.merge("quarantine", rows_to_table("quarantine", [q(1, "required", "a2"), q(1, "type", "c")]))
    got = sorted(
        (r["row_number"], r["rule"], r["reason"]) for r in wh.select("quarantine").to_pylist()
    )
    assert got == [(1, "required", "a2"), (1, "type", "c"), (2, "required", "b")]


def test_replace_partition_touches_only_its_cycle(wh):
    def m(cycle, name, value):
        return {"cycle_id": cycle, "name": name, "value": value, "recorded_at": T0}

    wh.replace_partition(
        "metrics", {"cycle_id": "a"}, rows_to_table("metrics", [m("a", "x", 1.0), m("a", "y", 2.0)])
    )
    wh.replace_partition("metrics", {"cycle_id": "b"}, rows_to_table("metrics", [m("b", "x", 3.0)]))
    wh.replace_partition("metrics", {"cycle_id": "a"}, rows_to_table("metrics", [m("a", "z", 9.0)]))
    got = sorted((r["cycle_id"], r["name"], r["value"]) for r in wh.select("metrics").to_pylist())
    assert got == [("a", "z", 9.0), ("b", "x", 3.0)]
    wh.replace_partition("metrics", {"cycle_id": "b"}, rows_to_table("metrics", []))
    assert (
        wh.count("metrics", {"cycle_id": "b"}) == 0 and wh.count("metrics", {"cycle_id": "a"}) == 1
    )


def test_replace_partition_needs_a_filter(wh):
    with pytest.raises(WarehouseError, match="non-empty"):
        wh.replace_partition("metrics", {}, rows_to_table("metrics", []))


def test_failed_write_rolls_back(wh, make_log_row):
    wh.merge("production_logs", logs(make_log_row, 2))
    bad = rows_to_table("production_logs", [make_log_row("r000", T0)]).drop_columns(["context"])
    with pytest.raises(WarehouseError, match=r"missing \['context'\]"):
        wh.merge("production_logs", bad)
    assert wh.count("production_logs") == 2


def test_conform_rejects_extra_and_uncastable_columns(wh, make_log_row):
    good = rows_to_table("production_logs", [make_log_row("a", T0)])
    with pytest.raises(WarehouseError, match=r"unexpected \['junk'\]"):
        wh.merge("production_logs", good.append_column("junk", pa.array([1])))
    uncastable = good.set_column(
        good.schema.get_field_index("quality_score"), "quality_score", pa.array(["high"])
    )
    with pytest.raises(WarehouseError, match="cannot be cast"):
        wh.merge("production_logs", uncastable)


def test_conform_reorders_and_casts(wh, make_log_row):
    good = rows_to_table("production_logs", [make_log_row("a", T0, quality_score=0.75)])
    shuffled = good.select(list(reversed(good.column_names)))
    shuffled = shuffled.set_column(
        shuffled.schema.get_field_index("quality_score"),
        "quality_score",
        pa.array([0.75], pa.float32()),
    )
    wh.merge("production_logs", shuffled)
    assert wh.select("production_logs").to_pylist()[0]["quality_score"] == 0.75


def test_read_logs_window_half_open_ordered_schema(wh, make_log_row):
    # 48 hourly rows, inserted in reverse order
    table = logs(make_log_row, 48)
    wh.merge("production_logs", table.take(list(range(47, -1, -1))))
    start, end = T0 + 10 * H, T0 + 20 * H
    batches = list(wh.read_logs_window(start, end))
    for b in batches:
        assert b.schema.equals(WINDOW_SNAPSHOT)
    rows = [r for b in batches for r in b.to_pylist()]
    assert [r["request_id"] for r in rows] == [f"r{i:03d}" for i in range(10, 20)]
    assert rows[0]["timestamp"] == start


def test_read_logs_window_with_non_utc_bounds(wh, make_log_row):
    wh.merge("production_logs", logs(make_log_row, 48))
    tz = ZoneInfo("Asia/Kolkata")
    rows = [
        r
        for b in wh.read_logs_window((T0 + 10 * H).astimezone(tz), (T0 + 20 * H).astimezone(tz))
        for r in b.to_pylist()
    ]
    assert [r["request_id"] for r in rows] == [f"r{i:03d}" for i in range(10, 20)]


def test_null_timestamp_is_windowed_by_ingested_at(wh, make_log_row):
    rows = [
        make_log_row("ts-in", T0 + 2 * H),
        make_log_row("null-in", None, ingested_at=T0 + H),
        make_log_row("null-out", None, ingested_at=T0 + 30 * H),
        # the event time decides when present, even if ingested outside the window
        make_log_row("late", T0 + 3 * H, ingested_at=T0 + 40 * H),
    ]
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    got = [r["request_id"] for b in wh.read_logs_window(T0, T0 + 24 * H) for r in b.to_pylist()]
    assert got == ["null-in", "ts-in", "late"]


def test_ties_are_ordered_by_request_id(wh, make_log_row):
    wh.merge(
        "production_logs", rows_to_table("production_logs", [make_log_row(x, T0) for x in "cab"])
    )
    assert [r["request_id"] for b in wh.read_logs_window(T0, T0 + H) for r in b.to_pylist()] == [
        "a",
        "b",
        "c",
    ]


def test_batch_rows_splits_batches(wh, make_log_row):
    wh.merge("production_logs", logs(make_log_row, 50, step=timedelta(minutes=1)))
    sizes = [b.num_rows for b in wh.read_logs_window(T0, T0 + H, batch_rows=7)]
    assert sum(sizes) == 50 and len(sizes) == 8 and max(sizes) == 7


def test_empty_window_yields_no_rows(wh, make_log_row):
    wh.merge("production_logs", logs(make_log_row, 5))
    assert sum(b.num_rows for b in wh.read_logs_window(T0 - 10 * H, T0)) == 0


def test_read_window_only_for_logs(wh):
    with pytest.raises(WarehouseError, match="production_logs"):
        wh.read_window("metrics", T0, T0 + H)


@settings(max_examples=15, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 100), min_size=0, max_size=30),
    lo=st.integers(0, 100),
    width=st.integers(0, 50),
)
def test_property_window_read_matches_python_filter(
    tmp_path_factory, make_log_row, offsets, lo, width
):
    wh = DuckDBWarehouse(tmp_path_factory.mktemp("wh") / "w.duckdb")
    wh.ensure_schema()
    rows = [make_log_row(f"r{i:03d}", T0 + o * H) for i, o in enumerate(offsets)]
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    start, end = T0 + lo * H, T0 + (lo + width) * H
    got = [
        r["request_id"]
        for b in wh.read_logs_window(start, end, batch_rows=4)
        for r in b.to_pylist()
    ]
    expected = [
        r["request_id"]
        for r in sorted(rows, key=lambda r: (r["timestamp"], r["request_id"]))
        if start <= r["timestamp"] < end
    ]
    assert got == expected


def test_count_and_select_with_filters(wh, make_log_row):
    wh.merge("production_logs", logs(make_log_row, 3))
    wh.merge(
        "production_logs",
        rows_to_table("production_logs", [make_log_row("z", T0, user_action="copied")]),
    )
    assert wh.count("production_logs", {"user_action": "copied"}) == 1
    assert wh.count("production_logs", {"user_action": "copied", "request_id": "r000"}) == 0
    ids = wh.select("production_logs", order_by="request_id").column("request_id").to_pylist()
    assert ids == ["r000", "r001", "r002", "z"]


@pytest.mark.parametrize("name", ["x; drop table", "1abc", "a-b", "", "a b", 'a"b', "logs--"])
def test_check_identifier_rejects(name):
    with pytest.raises(WarehouseError, match="invalid SQL identifier"):
        check_identifier(name)


@pytest.mark.parametrize("name", ["production_logs", "_x", "A1"])
def test_check_identifier_accepts(name):
    assert check_identifier(name) == name


def test_select_and_count_refuse_odd_identifiers(wh):
    with pytest.raises(WarehouseError):
        wh.count("metrics; drop table metrics")
    with pytest.raises(WarehouseError):
        wh.select("metrics", order_by="name; drop table metrics")
    with pytest.raises(WarehouseError):
        wh.count("metrics", {"name = name OR 1": 1})
    assert (
        "metrics"
        in wh.query("SELECT table_name FROM information_schema.tables")
        .column("table_name")
        .to_pylist()
    )


def test_where_values_are_bound_not_interpolated(wh):
    wh.replace_partition(
        "metrics",
        {"cycle_id": "a"},
        rows_to_table("metrics", [{"cycle_id": "a", "name": "n", "value": 1.0}]),
    )
    assert wh.count("metrics", {"cycle_id": "a' OR '1'='1"}) == 0
    assert wh.count("metrics", {"cycle_id": "a"}) == 1


_SQL = ["champion_as_of", "cycle_counts", "read_logs_window"]
_PARAMS = {
    "champion_as_of": ["as_of"],
    "cycle_counts": ["cycle_id"],
    "read_logs_window": ["window_start", "window_end"],
}


@pytest.mark.parametrize("name", _SQL)
@pytest.mark.parametrize(("dialect", "marker"), [("bigquery", "@"), ("snowflake", ":")])
def test_transpile_canonical_sql(name, dialect, marker):
    out = transpile(canonical_sql(name), dialect)
    assert len([s for s in sqlglot.parse(out, read=dialect) if s is not None]) == 1
    assert "$" not in out
    for p in _PARAMS[name]:
        assert f"{marker}{p}" in out


def test_transpile_duckdb_is_identity():
    sql = canonical_sql("cycle_counts")
    assert transpile(sql, "duckdb") == sql


def test_transpile_refuses_several_statements():
    with pytest.raises(WarehouseError, match="one SQL statement"):
        transpile("SELECT 1; SELECT 2", "bigquery")


def test_unknown_canonical_sql():
    with pytest.raises(WarehouseError, match="no canonical SQL"):
        canonical_sql("nope")


def test_sql_types_and_ddl():
    assert sql_type(pa.timestamp("us", tz="UTC")) == "TIMESTAMPTZ"
    assert sql_type(pa.bool_()) == "BOOLEAN"
    with pytest.raises(WarehouseError):
        sql_type(pa.list_(pa.int8()))
    ddl = create_table_sql("metrics")
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS metrics (") and '"value" DOUBLE' in ddl


def test_warehouse_from_config(tmp_path):
    c = FlywheelConfig(home=tmp_path)
    wh = warehouse_from_config(c)
    assert isinstance(wh, DuckDBWarehouse) and wh.path == tmp_path / "warehouse.duckdb"
    with pytest.raises(WarehouseError, match="FlywheelWarehouseHook"):
        warehouse_from_config(c.with_overrides({"warehouse.backend": "bigquery"}))


def test_merge_is_idempotent_for_rows_with_null_key(wh, make_log_row):
    table = rows_to_table("production_logs", [make_log_row(None, T0)])
    wh.merge("production_logs", table)
    wh.merge("production_logs", table)
    assert wh.count("production_logs") == 1


# --- Pushdown: the cheap rules decided in the query, with exact Python semantics -------------

_HOSTILE_CHARS = st.sampled_from(
    list("ab é😀 \t\n\r\x0b\x0c\x1c\x1f\x00\x07\x1b\x7f\x85\x9f\xa0\u1680\u2000\u200a\u200b\u2028\u202e\u2066\u3000\ufeff")
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(_HOSTILE_CHARS, max_size=12) | st.none(), min_size=4, max_size=4))
def test_pushdown_text_facts_match_python(wh, make_log_row, texts):
    prompt, response, correction, context = texts
    row = make_log_row("h", T0, prompt=prompt, response=response, correction=correction, context=context,
                       user_action="regenerated")  # fmt: skip
    wh.execute("DELETE FROM production_logs")
    wh.merge("production_logs", rows_to_table("production_logs", [row]))
    for pushdown, withheld in ((Pushdown(("accepted",), 0.0), True), (Pushdown(), False)):
        (got,) = [r for b in wh.read_logs_window(T0, T0 + H, pushdown=pushdown) for r in b.to_pylist()]
        assert got["pushdown_kept"] is (not withheld)
        facts = facts_from_row(got)
        for name, value in zip(("prompt", "response", "correction", "context"), texts, strict=True):
            assert facts[name] == text_facts(value), (name, value)
            assert got[name] == (None if withheld else value)


def test_pushdown_withholds_only_rejected_rows(wh, make_log_row):
    rows = [
        make_log_row("keep", T0, quality_score=0.9),
        make_log_row("low-score", T0, quality_score=0.2, prompt="secret words"),
        make_log_row("regen", T0, user_action="regenerated", prompt="secret words"),
        make_log_row("nan", T0, quality_score=float("nan"), prompt="secret words"),
        make_log_row("no-action", T0, user_action=None, prompt="secret words"),
    ]
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    got = {
        r["request_id"]: r
        for b in wh.read_logs_window(T0, T0 + H, pushdown=Pushdown(("accepted", "copied", "corrected"), 0.6))
        for r in b.to_pylist()
    }
    assert got["keep"]["pushdown_kept"] and got["keep"]["prompt"]
    for rid in ("low-score", "regen", "nan", "no-action"):
        assert got[rid]["pushdown_kept"] is False and got[rid]["prompt"] is None
        assert got[rid]["prompt_chars"] == len("secret words") and got[rid]["text_digest"]


# --- Binding per dialect ------------------------------------------------------------------


def test_prepare_binds_by_position_for_snowflake_and_expands_lists():
    sql = "SELECT * FROM t WHERE list_contains($acts, a) AND b >= $min AND c = $c AND d = $c"
    text, values = prepare(sql, {"acts": ["x", "y"], "min": 0.5, "c": "it's"}, "snowflake")
    assert "A IN (?, ?)" in text.upper() and "$" not in text and ":" not in text
    assert values == ["x", "y", 0.5, "it's", "it's"]
    text, named = prepare(sql, {"acts": ["x"], "min": 0.5, "c": "z"}, "bigquery")
    assert "@acts" in text and named == {"acts": ["x"], "min": 0.5, "c": "z"}


def test_prepare_refuses_missing_or_extra_values():
    with pytest.raises(WarehouseError, match="do not match"):
        prepare("SELECT $a, $b", {"a": 1}, "bigquery")
    with pytest.raises(WarehouseError, match="do not match"):
        prepare("SELECT $a", {"a": 1, "b": 2}, "snowflake")


def test_snowflake_sql_spells_quoted_names_as_stored():
    assert '"TIMESTAMP"' in transpile('SELECT "timestamp" FROM production_logs', "snowflake")


def test_space_class_is_pythons_whitespace():
    assert set(SPACE_CLASS[1:-1]) == {chr(i) for i in range(0x110000) if chr(i).isspace()}


def test_rebatch_gives_exact_sizes_in_order():
    batches = [pa.record_batch({"x": pa.array(range(a, b), pa.int64())}) for a, b in ((0, 3), (3, 4), (4, 15), (15, 15), (15, 17))]
    out = list(rebatch(iter(batches), 5))
    assert [b.num_rows for b in out] == [5, 5, 5, 2]
    assert [v for b in out for v in b.column(0).to_pylist()] == list(range(17))
