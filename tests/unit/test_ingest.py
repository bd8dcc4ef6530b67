"""Raw ingestion (`python -m flywheel.ingest`): every malformed kind of line in the hostile corpus
is quarantined with its reason at ingestion or by the cycle's validation and none reaches a
valid row; the accounting is exact; a re-ingest adds nothing; CSV and Parquet are typed as
strictly as JSONL; a conflicting copy in a later batch or file never replaces the stored row."""

from __future__ import annotations

import csv
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel import ingest as cli
from flywheel.config import FlywheelConfig
from flywheel.cycle import make_cycle
from flywheel.cycle.extract import extract_window
from flywheel.cycle.validate import validate_rows
from flywheel.data.ingest import IngestError, ingest_file
from flywheel.filters.pii import redact_row_for_quarantine
from flywheel.records import PRODUCTION_LOG_FIELDS
from tests.helpers.hostile_logs import DUPLICATE, INGEST, VALIDATE, corpus, good

ROOT = Path(__file__).resolve().parents[2]
MAX_LINE_BYTES = 100_000


def REDACT(row):  # noqa: N802 (a constant in use)
    return redact_row_for_quarantine(row, FlywheelConfig())


@pytest.fixture
def config(tmp_path) -> FlywheelConfig:
    # Small batches, so that duplicates and conflicts meet across batches too.
    return FlywheelConfig(home=tmp_path).with_overrides({"ingest.batch_lines": 7, "ingest.max_line_bytes": MAX_LINE_BYTES})


def _write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _cycle_around(config: FlywheelConfig, now: datetime):
    """A weekly cycle whose window holds ``now`` (rows without a usable event time are windowed
    by their ingestion, which is now)."""
    end = now + timedelta(days=config.extract.lag_days + 3)
    cycle = make_cycle("flywheel_weekly", data_interval_end=end, logical_date=end, config=config)
    assert cycle.window.start <= now - timedelta(days=1) and now < cycle.window.end
    return cycle


def test_every_malformed_kind_is_quarantined_with_its_reason_and_none_is_valid(tmp_path, config, wh):
    now = datetime.now(UTC)
    at = (now - timedelta(days=1)).replace(microsecond=0)
    cases = corpus(at, config.validation.max_text_chars, MAX_LINE_BYTES)
    assert len({c.kind for c in cases}) >= 60
    clean = [good(f"ok-{i}", at) for i in range(5)]
    lines = [json.dumps(r).encode() for r in clean] + [c.line for c in cases]
    path = _write_jsonl(tmp_path / "week.jsonl", lines)

    counts = ingest_file(wh, config, path, REDACT, progress=False)
    expected_ingest = [c for c in cases if c.outcome == INGEST]
    assert counts.read == len(lines) == counts.loaded + counts.duplicates + counts.quarantined
    assert counts.quarantined == len(expected_ingest)
    assert counts.duplicates == sum(c.outcome == DUPLICATE for c in cases)
    assert wh.count("production_logs") == counts.loaded == len(lines) - counts.quarantined - counts.duplicates
    assert wh.count("raw_log_lines") == len(lines)

    quarantined = wh.query("SELECT row_number, field, rule, reason FROM quarantine WHERE cycle_id = $c",
                           {"c": f"ingest:{path.resolve()}"}).to_pylist()  # fmt: skip
    by_line = {q["row_number"]: q for q in quarantined}
    for number, case in enumerate([None] * len(clean) + cases, start=1):
        if case is None or case.outcome != INGEST:
            assert number not in by_line, f"line {number} was quarantined at ingest: {by_line.get(number)}"
            continue
        q = by_line.get(number)
        assert q is not None, f"{case.kind!r} (line {number}) was not quarantined at ingest"
        assert (q["field"], q["rule"]) == (case.field, case.rule), f"{case.kind!r}: {q['reason']}"
        assert q["reason"].startswith(f"week.jsonl line {number}: "), q["reason"]
    # the raw layer keeps every line, with its outcome
    raw = wh.query("SELECT line_number, outcome, raw_line FROM raw_log_lines ORDER BY line_number").to_pylist()
    assert [r["outcome"] == "quarantined" for r in raw] == [n in by_line for n in range(1, len(lines) + 1)]
    assert raw[0]["raw_line"] == lines[0].decode()

    cycle = _cycle_around(config, now)
    extract_window(cycle, wh)
    result = validate_rows(cycle, wh)
    valid = pq.read_table(cycle.file("valid.parquet")).column("request_id").to_pylist()
    assert sorted(valid) == sorted([r["request_id"] for r in clean] + ["bad-twice"])
    found = {(q["request_id"], q["field"], q["rule"]) for q in wh.select("quarantine", {"cycle_id": cycle.cycle_id}).to_pylist()}
    for case in cases:
        if case.outcome == VALIDATE:
            assert (case.request_id, case.field, case.rule) in found, f"{case.kind!r} was not quarantined by validation"
    assert result["quarantined"] == sum(c.outcome == VALIDATE for c in cases)


def test_a_reingest_adds_nothing(tmp_path, config, wh):
    at = datetime.now(UTC) - timedelta(days=1)
    path = _write_jsonl(tmp_path / "a.jsonl", [json.dumps(good(f"r-{i}", at)).encode() for i in range(10)] + [b"oops"])
    first = ingest_file(wh, config, path, REDACT, progress=False)
    assert (first.loaded, first.quarantined) == (10, 1)
    before = {t: wh.count(t) for t in ("production_logs", "quarantine", "raw_log_lines")}
    again = ingest_file(wh, config, path, REDACT, progress=False)
    # The quarantined line is typed again (a fixed mapping could load it now), and quarantined again.
    assert (again.read, again.loaded, again.duplicates, again.already_ingested, again.quarantined) == (11, 0, 10, 10, 1)
    assert again.retried == 1 and again.reasons == {"line.not_a_record": 1}
    assert {t: wh.count(t) for t in before} == before


def test_a_conflicting_copy_in_a_later_file_is_quarantined_and_the_stored_row_kept(tmp_path, config, wh):
    at = datetime.now(UTC) - timedelta(days=1)
    first = good("req-1", at)
    ingest_file(wh, config, _write_jsonl(tmp_path / "monday.jsonl", [json.dumps(first).encode()]), REDACT, progress=False)
    later = _write_jsonl(tmp_path / "tuesday.jsonl", [json.dumps({**first, "response": "Something else entirely."}).encode(),
                                                       json.dumps(first).encode()])  # fmt: skip
    counts = ingest_file(wh, config, later, REDACT, progress=False)
    assert (counts.loaded, counts.duplicates, counts.quarantined) == (0, 1, 1)
    assert counts.reasons == {"request_id.conflicting_duplicate": 1}
    assert wh.select("production_logs").column("response").to_pylist() == [first["response"]]


def test_csv_cells_are_typed_strictly(tmp_path, config, wh):
    at = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
    path = tmp_path / "export.csv"
    rows = [
        good("c-1", at, quality_score="0.8", included_in_training="false", correction="", context=""),
        good("c-2", at, quality_score="high"),
        good("c-3", at, timestamp=str(int(at.timestamp()))),
        good("c-4", at, included_in_training="1"),
        good("c-5", at, timestamp=at.replace(tzinfo=None).isoformat()),
        good("c-6", at, quality_score="", prompt="Uppercase the word garden,\nplease; my \"poster\" needs it."),
    ]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(PRODUCTION_LOG_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        fh.write("c-7,only,three cells\r\n")
    counts = ingest_file(wh, config, path, REDACT, progress=False)
    assert (counts.read, counts.loaded, counts.quarantined) == (7, 2, 5)
    assert counts.reasons == {"quality_score.type": 1, "timestamp.epoch_number": 1, "included_in_training.type": 1,
                              "timestamp.naive": 1, "line.not_a_record": 1}  # fmt: skip
    loaded = {r["request_id"]: r for r in wh.select("production_logs").to_pylist()}
    assert loaded["c-1"]["quality_score"] == 0.8 and loaded["c-1"]["included_in_training"] is False
    assert loaded["c-6"]["quality_score"] is None and "\n" in loaded["c-6"]["prompt"]  # validation's to judge

    other = tmp_path / "other.csv"
    other.write_text("request_id,prompt,session\nx-1,hello,s1\n", encoding="utf-8")
    assert ingest_file(wh, config, other, REDACT, progress=False).reasons == {"line.unknown_field": 1}


def test_parquet_types_are_kept_and_naive_times_quarantined(tmp_path, config, wh):
    at = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
    rows = [good(f"p-{i}", at) | {"timestamp": at, "quality_score": 1} for i in range(3)]
    aware = tmp_path / "aware.parquet"
    pq.write_table(pa.Table.from_pylist(rows), aware)
    assert ingest_file(wh, config, aware, REDACT, progress=False).loaded == 3
    assert set(wh.select("production_logs").column("quality_score").to_pylist()) == {1.0}

    naive = tmp_path / "naive.parquet"
    table = pa.Table.from_pylist([good("n-1", at) | {"timestamp": at.replace(tzinfo=None)}])
    assert table.schema.field("timestamp").type == pa.timestamp("us")
    pq.write_table(table, naive)
    assert ingest_file(wh, config, naive, REDACT, progress=False).reasons == {"timestamp.naive": 1}


def test_a_runaway_line_is_cut_off_without_reading_it_whole(tmp_path, config, wh):
    at = datetime.now(UTC) - timedelta(days=1)
    huge = json.dumps(good("huge", at, context="y" * (5 * MAX_LINE_BYTES))).encode()
    path = _write_jsonl(tmp_path / "huge.jsonl", [huge, json.dumps(good("after", at)).encode()])
    counts = ingest_file(wh, config, path, REDACT, progress=False)
    assert (counts.loaded, counts.reasons) == (1, {"line.oversized": 1})
    kept = wh.query("SELECT raw_line FROM raw_log_lines WHERE line_number = 1").column("raw_line")[0].as_py()
    assert len(kept) == 65536


def test_the_command_prints_the_accounting_and_fails_on_an_unreadable_file(tmp_path, monkeypatch, capsys, wh):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    at = datetime.now(UTC) - timedelta(days=1)
    path = _write_jsonl(tmp_path / "a.jsonl", [json.dumps(good("r-1", at)).encode(), b"{"])
    assert cli.main([str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 lines read: 1 loaded, 0 duplicates, 1 quarantined" in out
    assert "line.not_a_record: 1" in out
    assert cli.main([str(tmp_path / "missing.jsonl"), "--no-progress"]) == 1
    assert "no such file" in capsys.readouterr().err
    odd = tmp_path / "notes.txt"
    odd.write_text("{}\n")
    with pytest.raises(IngestError, match="cannot tell the format"):
        ingest_file(wh, FlywheelConfig(home=tmp_path), odd, REDACT, progress=False)


def test_the_readme_lists_every_malformed_kind():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    at = datetime(2026, 2, 2, tzinfo=UTC)
    missing = [c.kind for c in corpus(at, 20000, MAX_LINE_BYTES) if f"| {c.kind} |" not in readme]
    assert not missing, f"the README's table of malformed lines lacks: {missing}"
    assert re.search(r"\| kind \| outcome \| field\.rule \|", readme)
