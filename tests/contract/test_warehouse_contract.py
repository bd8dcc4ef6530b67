"""The `Warehouse` contract, run against DuckDB, Snowflake (fakesnow) and BigQuery
(local-bigquery): the same windows, the same counts, idempotent writes, pushdown facts equal to
Python's, and the same quarantine, whichever warehouse holds the logs."""

from __future__ import annotations

import math
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.errors import WarehouseError
from flywheel.tables import WINDOW_SNAPSHOT, rows_to_table
from flywheel.validation import facts_from_row, text_facts
from flywheel.warehouse import Pushdown
from tests.helpers.backends import backend_config, open_warehouse
from tests.helpers.log_rows import T0, log_row

pytestmark = pytest.mark.contract
H = timedelta(hours=1)


def logs(n, start=T0, step=H, prefix="r"):
    return rows_to_table("production_logs", [log_row(f"{prefix}{i:03d}", start + i * step) for i in range(n)])


def window(wh, start, end, **kwargs):
    return [r for b in wh.read_logs_window(start, end, **kwargs) for r in b.to_pylist()]


def test_window_is_half_open_ordered_and_typed(wh):
    wh.merge("production_logs", logs(48).take(list(range(47, -1, -1))))
    batches = list(wh.read_logs_window(T0 + 10 * H, T0 + 20 * H, batch_rows=3))
    assert all(b.schema.equals(WINDOW_SNAPSHOT) for b in batches)
    assert [b.num_rows for b in batches] == [3, 3, 3, 1]
    rows = [r for b in batches for r in b.to_pylist()]
    assert [r["request_id"] for r in rows] == [f"r{i:03d}" for i in range(10, 20)]
    assert rows[0]["timestamp"] == T0 + 10 * H


def test_rows_without_usable_event_time_are_windowed_by_ingestion(wh):
    rows = [
        log_row("ts-in", T0 + 2 * H),
        log_row("null-in", None, ingested_at=T0 + H),
        log_row("null-out", None, ingested_at=T0 + 30 * H),
        log_row("late", T0 + 3 * H, ingested_at=T0 + 40 * H),  # event time decides
        log_row("future", T0 + 50 * H, ingested_at=T0 + 4 * H),  # stamped after ingestion + skew
        log_row("skew-ok", T0 + 5 * H + timedelta(minutes=9), ingested_at=T0 + 5 * H),
    ]
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    got = window(wh, T0, T0 + 24 * H)
    assert [r["request_id"] for r in got] == ["null-in", "ts-in", "late", "skew-ok", "future"]
    assert next(r for r in got if r["request_id"] == "null-in")["timestamp"] is None


def test_empty_window_and_ties(wh):
    wh.merge("production_logs", rows_to_table("production_logs", [log_row(x, T0) for x in "cab"]))
    assert window(wh, T0 - 10 * H, T0) == []
    assert [r["request_id"] for r in window(wh, T0, T0 + H)] == ["a", "b", "c"]


def test_merge_is_idempotent_and_replaces_by_key(wh):
    wh.merge("production_logs", logs(10))
    wh.merge("production_logs", logs(10))
    assert wh.count("production_logs") == 10
    changed = [log_row("r001", T0 + H, user_action="corrected", correction="FIXED"), log_row("new", T0)]
    wh.merge("production_logs", rows_to_table("production_logs", changed))
    rows = {r["request_id"]: r for r in wh.select("production_logs").to_pylist()}
    assert len(rows) == 11
    assert (rows["r001"]["user_action"], rows["r001"]["correction"]) == ("corrected", "FIXED")


def test_merge_keeps_a_batch_as_it_is(wh):
    """Two rows with one key in a batch (a conflicting re-delivery) both land, for validation to
    quarantine; a keyless row is replaced by its exact copy, a different keyless row is not."""
    batch = [log_row("dup", T0), log_row("dup", T0, response="other"), log_row(None, T0), log_row(None, T0, prompt="x")]
    wh.merge("production_logs", rows_to_table("production_logs", batch))
    wh.merge("production_logs", rows_to_table("production_logs", batch))
    assert wh.count("production_logs") == 4
    assert wh.count("production_logs", {"request_id": "dup"}) == 2


def test_merge_on_composite_keys_and_binary(wh):
    def fp(cycle, rid, sig):
        return {"cycle_id": cycle, "logical_date": T0, "request_id": rid, "exact_key": -(2**62), "signature": sig,
                "fingerprint_spec": "s"}  # fmt: skip

    sig = bytes(range(256))
    wh.merge("training_fingerprints", rows_to_table("training_fingerprints", [fp("a", "1", b""), fp("a", "2", sig)]))
    wh.merge("training_fingerprints", rows_to_table("training_fingerprints", [fp("a", "1", b"\x00"), fp("b", "1", sig)]))
    got = sorted((r["cycle_id"], r["request_id"], r["signature"], r["exact_key"])
                 for r in wh.select("training_fingerprints").to_pylist())  # fmt: skip
    assert got == [("a", "1", b"\x00", -(2**62)), ("a", "2", sig, -(2**62)), ("b", "1", sig, -(2**62))]


def test_replace_partition_touches_only_its_cycle(wh):
    def m(cycle, name, value):
        return {"cycle_id": cycle, "name": name, "value": value, "recorded_at": T0}

    wh.replace_partition("metrics", {"cycle_id": "a"}, rows_to_table("metrics", [m("a", "x", 1.0), m("a", "y", 2.0)]))
    wh.replace_partition("metrics", {"cycle_id": "b"}, rows_to_table("metrics", [m("b", "x", 3.0)]))
    wh.replace_partition("metrics", {"cycle_id": "a"}, rows_to_table("metrics", [m("a", "z", 9.0)]))
    got = sorted((r["cycle_id"], r["name"], r["value"]) for r in wh.select("metrics").to_pylist())
    assert got == [("a", "z", 9.0), ("b", "x", 3.0)]
    wh.replace_partition("metrics", {"cycle_id": "b"}, rows_to_table("metrics", []))
    assert wh.count("metrics", {"cycle_id": "b"}) == 0
    with pytest.raises(WarehouseError, match="non-empty"):
        wh.replace_partition("metrics", {}, rows_to_table("metrics", []))


def test_values_are_bound_and_odd_numbers_survive(wh):
    rows = [log_row("nan", T0, quality_score=float("nan")), log_row("inf", T0, quality_score=float("inf")),
            log_row("q'uote", T0, prompt="it's; DROP TABLE production_logs; --")]  # fmt: skip
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    assert wh.count("production_logs", {"request_id": "nan' OR '1'='1"}) == 0
    assert wh.count("production_logs", {"request_id": "q'uote"}) == 1
    scores = {r["request_id"]: r["quality_score"] for r in wh.select("production_logs").to_pylist()}
    assert math.isnan(scores["nan"]) and scores["inf"] == math.inf
    with pytest.raises(WarehouseError):
        wh.count("metrics; drop table metrics")


HOSTILE = [
    None, "", " ", "\t\n\r", "\x0b\x0c\x1c\x1f", "\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000",
    "a\x00b", "ok\x07", "\x1b[31m", "é😀\x7f", "x\x9f", "\u202eevil", "ab\u2066c", "\u200b\ufeff", "plain text",
    "line\nbreak\x01", "😀😀\u2069",
]  # fmt: skip


def test_pushdown_facts_equal_pythons_on_hostile_text(wh):
    """The facts computed in SQL for withheld text equal `text_facts` in Python, character for
    character (code points, Python's whitespace, the first control or bidi character)."""
    rows = [
        log_row(f"h{i:02d}", T0, prompt=s, response=HOSTILE[-1 - i], correction=HOSTILE[(i + 3) % len(HOSTILE)],
                context=HOSTILE[(i + 7) % len(HOSTILE)], user_action="regenerated")
        for i, s in enumerate(HOSTILE)
    ]  # fmt: skip
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    source = {r["request_id"]: r for r in rows}
    for pushdown, withheld in ((Pushdown(("accepted",), 0.0), True), (Pushdown(), False)):
        got = window(wh, T0, T0 + H, pushdown=pushdown)
        assert len(got) == len(rows)
        for r in got:
            assert r["pushdown_kept"] is (not withheld)
            facts = facts_from_row(r)
            for name in ("prompt", "response", "correction", "context"):
                value = source[r["request_id"]][name]
                assert facts[name] == text_facts(value), (r["request_id"], name, value)
                assert r[name] == (None if withheld else value)
    digests = {r["request_id"]: r["text_digest"] for r in window(wh, T0, T0 + H, pushdown=Pushdown(("accepted",), 0.0))}
    assert len(set(digests.values())) == len(rows)


def test_pushdown_withholds_exactly_the_rejected_rows(wh):
    rows = [
        log_row("keep", T0, quality_score=0.9),
        log_row("edge", T0, quality_score=0.6),
        log_row("low-score", T0, quality_score=0.2, prompt="secret words"),
        log_row("regen", T0, user_action="regenerated", prompt="secret words"),
        log_row("nan", T0, quality_score=float("nan"), prompt="secret words"),
        log_row("no-action", T0, user_action=None, prompt="secret words"),
        log_row("no-score", T0, quality_score=None, prompt="secret words"),
    ]
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    got = {r["request_id"]: r for r in window(wh, T0, T0 + H, pushdown=Pushdown(("accepted", "copied", "corrected"), 0.6))}
    assert {k for k, r in got.items() if r["pushdown_kept"]} == {"keep", "edge"}
    for rid in ("low-score", "regen", "nan", "no-action", "no-score"):
        assert got[rid]["prompt"] is None and got[rid]["prompt_chars"] == len("secret words")


def test_named_queries_run_on_every_backend(wh):
    from flywheel.model import registry

    registry.ensure_bootstrap_champion(wh, "some-base")
    champion = wh.named_query("champion_as_of", {"as_of": T0 + 1000 * H}).to_pylist()
    assert champion == [{"champion_after": registry.base_version_name("some-base")}]
    assert wh.named_query("cycle_counts", {"cycle_id": "none"}).to_pylist() == [{"quarantined": 0, "kept": 0, "rejected": 0}]
    assert wh.named_query("rule_pass_rates", {"cycle_id": "none"}).num_rows == 0
    recent = wh.query(
        "SELECT rows_in_window FROM cycles WHERE dag_id = $dag_id AND logical_date < $before "
        "ORDER BY logical_date DESC LIMIT $n",
        {"dag_id": "d", "before": T0, "n": 3},
    )
    assert recent.num_rows == 0


def test_validation_quarantines_the_same_rows(backend, tmp_path, running):
    """Extract and validate a window with malformed rows: the same quarantine on every backend."""
    from flywheel.cycle import make_cycle
    from flywheel.cycle.extract import extract_window
    from flywheel.cycle.validate import validate_rows

    config = backend_config(backend, tmp_path, running)
    wh = open_warehouse(config)
    wh.ensure_schema()
    end = T0 + timedelta(days=21)
    cycle = make_cycle("flywheel_weekly", data_interval_end=end, logical_date=end, config=config)
    mid = cycle.window.start + timedelta(days=2)
    rows = [log_row(f"ok{i}", mid + i * H) for i in range(5)] + [
        log_row("bad-user", mid, user_id=None),
        log_row("bad-action", mid, user_action="liked"),
        log_row("bad-score", mid, quality_score=1.7),
        log_row("bad-null-ts", None, ingested_at=mid),
        log_row("bad-control", mid, prompt="hi\x00there", quality_score=0.1),  # withheld, still caught
        log_row("ok0", mid + timedelta(seconds=1), response="a different answer"),
    ]
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    assert extract_window(cycle, wh)["rows_in_window"] == len(rows)
    res = validate_rows(cycle, wh)
    got = sorted((r["request_id"], r["field"], r["rule"]) for r in wh.select("quarantine").to_pylist())
    assert got == [
        ("bad-action", "user_action", "allowed_values"),
        ("bad-control", "prompt", "control_characters"),
        ("bad-null-ts", "timestamp", "required"),
        ("bad-score", "quality_score", "range"),
        ("bad-user", "user_id", "required"),
        ("ok0", "request_id", "conflicting_duplicate"),
        ("ok0", "request_id", "conflicting_duplicate"),
    ]
    assert res["valid"] == 4


def test_bigquery_retry_reattaches_to_its_jobs(tmp_path, running):
    """A retried task submits the same job ids; BigQuery says they exist, and the warehouse
    waits on those jobs instead of running them again (here: an insert that is not idempotent)."""
    config = backend_config("bigquery", tmp_path, running)
    run = {"dag_id": "flywheel_weekly", "task_id": "record", "run_id": "scheduled__2026-03-02T00:00:00+00:00"}
    first = open_warehouse(config, run)
    first.ensure_schema()
    insert = "INSERT INTO metrics (cycle_id, name, value) VALUES ($c, $n, $v)"
    first.execute(insert, {"c": "c1", "n": "m", "v": 1.0})
    first.execute(insert, {"c": "c1", "n": "m", "v": 1.0})  # the task's second write: runs
    assert first.count("metrics") == 2
    retry = open_warehouse(config, run)  # a new try replays the same sequence of writes
    retry.execute(insert, {"c": "c1", "n": "m", "v": 1.0})
    retry.execute(insert, {"c": "c1", "n": "m", "v": 1.0})
    assert retry.count("metrics") == 2
    other_run = open_warehouse(config, {**run, "run_id": "manual__x"})
    other_run.execute(insert, {"c": "c1", "n": "m", "v": 1.0})
    assert other_run.count("metrics") == 3
    jobs = {j.job_id for j in first.client.list_jobs(max_results=200)}  # type: ignore[attr-defined]
    assert any(j.startswith("flywheel_flywheel_weekly_record_scheduled__2026-03-02T00_00_00_00_00_0001_dml_") for j in jobs)


def test_snowflake_session_carries_the_runs_query_tag(tmp_path, running):
    import json

    from flywheel_airflow.cloud_hooks import FlywheelSnowflakeHook
    from flywheel_airflow.hooks import FlywheelWarehouseHook

    config = backend_config("snowflake", tmp_path, running)
    run = {"dag_id": "flywheel_weekly", "task_id": "extract_window", "run_id": "manual__1"}
    hook = FlywheelWarehouseHook(config, run=run)
    wh = hook.get_warehouse()
    wh.ensure_schema()
    params = FlywheelSnowflakeHook(
        snowflake_conn_id=config.warehouse.conn_id,
        session_parameters={"QUERY_TAG": json.dumps({"app": "flywheel", **run}, sort_keys=True)},
    )._get_conn_params()
    assert json.loads(params["session_parameters"]["QUERY_TAG"]) == {"app": "flywheel", **run}
    assert params["protocol"] == "http" and params["paramstyle"] == "qmark"
    # The warehouse's own session was opened with that tag (fakesnow does not report it back).
    assert json.loads(wh.con._session_parameters["QUERY_TAG"])["task_id"] == "extract_window"  # type: ignore[attr-defined]


def test_bulk_write_of_many_rows(wh):
    n = 3000
    table = logs(n, step=timedelta(seconds=1))
    assert wh.merge("production_logs", table) == n
    assert wh.count("production_logs") == n
    assert sum(b.num_rows for b in wh.read_logs_window(T0, T0 + H, batch_rows=1000)) == n


def test_conform_errors_are_the_same(wh):
    good = rows_to_table("production_logs", [log_row("a", T0)])
    with pytest.raises(WarehouseError, match=r"unexpected \['junk'\]"):
        wh.merge("production_logs", good.append_column("junk", pa.array([1])))


def test_ingestion_accounts_for_every_line_and_a_reingest_adds_nothing(wh, tmp_path):
    """`python -m flywheel.ingest` on each warehouse: the raw layer, the duplicate and conflict
    lookups (a list parameter) and the quarantine behave the same everywhere."""
    import json
    from datetime import UTC, datetime

    from flywheel.config import FlywheelConfig
    from flywheel.data.ingest import ingest_file
    from flywheel.filters.pii import redact_row_for_quarantine
    from tests.helpers.hostile_logs import good

    config = FlywheelConfig(home=tmp_path)  # one batch: batches meeting each other are a unit test's (the emulator is slow per query)
    at = datetime(2026, 2, 2, 10, tzinfo=UTC)
    first = good("i-1", at)
    lines = [json.dumps(first), json.dumps(good("i-2", at)), "not json", json.dumps(good("i-3", at, timestamp=1767607200)),
             json.dumps(first), json.dumps({**first, "response": "Another answer."}), json.dumps(good("i-4", at))]  # fmt: skip
    path = tmp_path / "logs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    redact = lambda row: redact_row_for_quarantine(row, config)  # noqa: E731
    counts = ingest_file(wh, config, path, redact, progress=False)
    assert (counts.read, counts.loaded, counts.duplicates, counts.quarantined) == (7, 3, 1, 3)
    assert counts.reasons == {"line.not_a_record": 1, "timestamp.epoch_number": 1, "request_id.conflicting_duplicate": 1}
    stored = {r["request_id"]: r for r in wh.select("production_logs").to_pylist()}
    assert set(stored) == {"i-1", "i-2", "i-4"} and stored["i-1"]["response"] == first["response"]
    assert stored["i-1"]["timestamp"] == at and stored["i-1"]["quality_score"] == 0.9
    assert wh.count("raw_log_lines") == 7 and wh.count("quarantine") == 3
    again = ingest_file(wh, config, path, redact, progress=False)
    # The quarantined lines are typed again (a fixed mapping could load them), and quarantined again.
    assert (again.loaded, again.already_ingested, again.quarantined, again.retried) == (0, 4, 3, 3)
    assert (wh.count("production_logs"), wh.count("raw_log_lines"), wh.count("quarantine")) == (3, 7, 3)


def _team_namespace(backend: str, wh) -> str:
    """A namespace beside the flywheel's, as a team's analytics tables are."""
    if backend == "bigquery":
        name = f"{wh.dataset}_analytics"
        wh.client.create_dataset(f"{wh.client.project}.{name}", exists_ok=True)
        return name
    name = f"{wh.schema}_ANALYTICS" if backend == "snowflake" else "analytics"
    wh.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
    return name


def test_a_teams_own_table_is_read_in_place(backend, tmp_path, running):
    """`source:` maps a differently named table and columns (an integer id, a decimal score, the
    team's feedback words) onto the flywheel's record: the window, the pushdown, the quarantine
    and the A/B arms read it where it is, and nothing is copied into production_logs."""
    from flywheel.cycle import make_cycle
    from flywheel.cycle.extract import extract_window
    from flywheel.cycle.validate import validate_rows
    from flywheel.evaluation.experiment import arm_metrics
    from flywheel.filters.scorers import make_toxicity_scorer

    probe = open_warehouse(backend_config(backend, tmp_path, running))
    probe.ensure_schema()
    namespace = _team_namespace(backend, probe)
    probe.execute(
        f"CREATE TABLE {namespace}.llm_requests (req_id BIGINT, created_at TIMESTAMPTZ, uid VARCHAR, input_text VARCHAR, "
        "output_text VARCHAR, feedback VARCHAR, edited VARCHAR, kind VARCHAR, score DOUBLE, served_by VARCHAR, loaded_at TIMESTAMPTZ)"
    )
    end = T0 + timedelta(days=21)
    columns = {"request_id": "req_id", "timestamp": "created_at", "user_id": "uid", "prompt": "input_text",
               "response": "output_text", "user_action": "feedback", "correction": "edited", "task_type": "kind",
               "quality_score": "score", "model_version": "served_by", "ingested_at": "loaded_at"}  # fmt: skip
    source = {"source.table": f"{namespace}.llm_requests", "source.columns": columns,
              "source.actions": {"thumbs_up": "accepted", "edit": "corrected", "retry": "regenerated"}}  # fmt: skip
    config = backend_config(backend, tmp_path, running, **source)
    if backend == "bigquery":
        config = config.with_overrides({"warehouse.bigquery_dataset": probe.dataset})
    elif backend == "snowflake":
        config = config.with_overrides({"warehouse.snowflake_schema": probe.schema})
    wh = open_warehouse(config)
    cycle = make_cycle("flywheel_weekly", data_interval_end=end, logical_date=end, config=config)
    mid = cycle.window.start + timedelta(days=2)
    good = log_row(None, None)
    rows = [  # req_id, created_at, feedback, edited, score, loaded_at
        (1, mid, "thumbs_up", None, 0.9, mid),
        (2, mid + H, "Thumbs_Up", None, 0.8, mid + H),  # the team's words, in any case
        (3, mid + 2 * H, "edit", "GARDEN!", 0.9, mid + 2 * H),
        (4, mid + 3 * H, "retry", None, 0.9, mid + 3 * H),
        (5, mid + 4 * H, "shrug", None, 0.9, mid + 4 * H),  # not in the vocabulary
        (6, mid + 5 * H, "thumbs_up", None, float("nan"), mid + 5 * H),
        (7, None, "thumbs_up", None, 0.9, mid + 6 * H),  # no event time: windowed by its load time
        (8, cycle.window.end + H, "thumbs_up", None, 0.9, cycle.window.end + H),  # the next window's
    ]
    # One statement for all rows: each statement is a job on the BigQuery emulator, seconds each.
    tuples, values = [], {"uid": "user-0001", "prompt": good["prompt"], "response": good["response"],
                          "kind": "uppercase", "served_by": "base:tiny-llama"}  # fmt: skip
    for i, (rid, at, feedback, edited, score, loaded) in enumerate(rows):
        values |= {f"rid{i}": rid, f"feedback{i}": feedback, f"score{i}": score, f"loaded{i}": loaded}
        values |= ({f"at{i}": at} if at is not None else {}) | ({f"edited{i}": edited} if edited is not None else {})
        ts = f"$at{i}" if at is not None else "NULL"
        fix = f"$edited{i}" if edited is not None else "NULL"
        tuples.append(f"($rid{i}, {ts}, $uid, $prompt, $response, $feedback{i}, {fix}, $kind, $score{i}, $served_by, $loaded{i})")
    wh.execute(f"INSERT INTO {namespace}.llm_requests VALUES {', '.join(tuples)}", values)

    out = extract_window(cycle, wh)
    assert out["rows_in_window"] == 7 and out["source"] == f"{namespace}.llm_requests"
    snapshot = {r["request_id"]: r for r in pq.read_table(out["snapshot"]).to_pylist()}
    assert {k: r["user_action"] for k, r in snapshot.items()} == {
        "1": "accepted", "2": "accepted", "3": "corrected", "4": "regenerated", "5": "shrug", "6": "accepted", "7": "accepted"}  # fmt: skip
    # The pushed-down rules (actions, score) decide in the warehouse: a rejected row's text stays there.
    assert [k for k, r in sorted(snapshot.items()) if not r["pushdown_kept"]] == ["4", "5", "6"]
    assert snapshot["5"]["prompt"] is None and snapshot["5"]["prompt_chars"] == len(good["prompt"])
    assert snapshot["3"]["correction"] == "GARDEN!" and snapshot["1"]["prompt"] == good["prompt"]
    res = validate_rows(cycle, wh)
    got = sorted((r["request_id"], r["field"], r["rule"]) for r in wh.select("quarantine").to_pylist())
    assert got == [("5", "user_action", "allowed_values"), ("6", "quality_score", "finite"), ("7", "timestamp", "required")]
    assert res["valid"] == 4
    assert wh.count("production_logs") == 0  # read in place, never copied
    arm = arm_metrics(wh, "base:tiny-llama", cycle.window.start, cycle.window.end,
                      toxicity=make_toxicity_scorer("profanity_check"), max_toxicity=0.5)  # fmt: skip
    assert arm.n == 5 and arm.actions == {"accepted": 3, "corrected": 1, "regenerated": 1}
