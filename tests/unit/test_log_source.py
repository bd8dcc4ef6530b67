"""A product's own log table read in place (`source:`, `flywheel.warehouse.source`): a mapping
that cannot work is a clear config error, a weekly cycle runs on the team's table without a copy,
and rows no window can hold are counted and named. The same reads on BigQuery and Snowflake are in
the warehouse contract (`tests/contract`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.config import FlywheelConfig
from flywheel.errors import ConfigError

COLUMNS = {"request_id": "req_id", "timestamp": "created_at", "user_id": "uid", "prompt": "input_text",
           "response": "output_text", "user_action": "feedback", "correction": "edited", "task_type": "kind",
           "quality_score": "score", "model_version": "served_by", "context": "ctx", "ingested_at": "loaded_at"}  # fmt: skip
FEEDBACK = {"thumbs_up": "accepted", "copy": "copied", "edit": "corrected", "retry": "regenerated"}


def _source(tmp_path, **source) -> FlywheelConfig:
    return FlywheelConfig(home=tmp_path).with_overrides({f"source.{k}": v for k, v in source.items()})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"table": "analytics.llm_requests", "columns": {"request_id": "id"}}, "must map ['timestamp', 'prompt'"),
        ({"table": "a.b", "columns": {**COLUMNS, "sentiment": "s"}}, "['sentiment'] are not flywheel fields"),
        ({"table": "a.b", "columns": {**COLUMNS, "prompt": "input text"}}, "are not column names"),
        ({"table": "a.b; DROP TABLE x", "columns": COLUMNS}, "is not a [project.]dataset.table"),
        ({"table": "a.b", "columns": COLUMNS, "actions": {"thumbs_up": "liked"}}, "map onto no action"),
        ({"columns": COLUMNS}, "need source.table"),
    ],
)
def test_a_mapping_that_cannot_work_is_a_config_error(tmp_path, source, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        _source(tmp_path, **source)


def _team_table_from(wh, namespace: str = "analytics") -> None:
    """The flywheel's rows as a team keeps them: its own names, an integer id, its feedback words."""
    words = " ".join(f"WHEN '{action}' THEN '{word}'" for word, action in FEEDBACK.items())
    wh.execute(f"CREATE SCHEMA IF NOT EXISTS {namespace}")
    wh.execute(
        f"CREATE TABLE {namespace}.llm_requests AS SELECT row_number() OVER (ORDER BY request_id) AS req_id, "
        '"timestamp" AS created_at, user_id AS uid, prompt AS input_text, response AS output_text, '
        f"CASE user_action {words} END AS feedback, correction AS edited, task_type AS kind, "
        "CAST(quality_score AS DECIMAL(5, 4)) AS score, model_version AS served_by, context AS ctx, ingested_at AS loaded_at "
        "FROM production_logs"
    )
    wh.execute("DELETE FROM production_logs")


def test_a_cycle_runs_on_a_teams_table_read_in_place(tmp_path, answer_fns):
    """A simulated week, kept in a table of the team's own names and vocabulary: the weekly
    cycle reads, validates, filters, samples and builds a dataset from it, and nothing is copied."""
    from flywheel.cycle.inprocess import run_cycle
    from flywheel.model import registry
    from flywheel.sim.shapes import ACTIONS, write_week
    from flywheel.warehouse import warehouse_from_config
    from tests.unit.test_log_shapes import _ingest

    week = FlywheelConfig(home=tmp_path).with_overrides({"ingest.shape": "openai_chat", "ingest.actions": ACTIONS["openai_chat"]})
    wh = warehouse_from_config(week)
    wh.ensure_schema()
    write_week("openai_chat", tmp_path / "week.jsonl", answer_fns["half"], week_start=datetime(2026, 1, 5, tzinfo=UTC), n_requests=240)
    assert _ingest(wh, week, tmp_path / "week.jsonl")[0].loaded == 240
    _team_table_from(wh)
    # The simulated product answers in a word: the demo's length rule. No model is loaded here.
    config = _source(tmp_path, table="analytics.llm_requests", columns=COLUMNS, actions=FEEDBACK).with_overrides(
        {"filters.length_counts": "prompt_and_response", "review.model_signals": False})
    wh = warehouse_from_config(config)
    assert str(wh.source) == "analytics.llm_requests"
    registry.ensure_bootstrap_champion(wh, "tiny-llama")
    out = run_cycle("flywheel_weekly", datetime(2026, 1, 26, tzinfo=UTC), config, wh, params={"skip_training": True},
                    write_report=False)  # fmt: skip
    assert out["extract_window"]["rows_in_window"] == 240 and out["validate_rows"]["valid"] == 240
    assert out["extract_window"]["source"] == "analytics.llm_requests"
    assert out["gate_raw_window"]["success"] and out["sample_for_review"]["items"] > 0
    kept = out["filter_candidates"]["kept"]
    assert kept >= config.training.min_examples and out["build_dataset"]["n_kept"] == kept
    assert wh.count("production_logs") == 0


def test_rows_no_window_can_hold_are_counted_and_named(tmp_path, wh, make_log_row, caplog):
    """Without a load-time column, a row with no event time is in no window: every cycle says how
    many there are and what to map, rather than losing them without a word."""
    from flywheel.cycle import make_cycle
    from flywheel.cycle.extract import extract_window
    from flywheel.tables import rows_to_table
    from flywheel.warehouse.source import LogSource

    end = datetime(2026, 2, 23, tzinfo=UTC)
    config = _source(tmp_path, table="analytics.llm_requests", columns={k: v for k, v in COLUMNS.items() if k != "ingested_at"})
    cycle = make_cycle("flywheel_weekly", data_interval_end=end, logical_date=end, config=config)
    mid = cycle.window.start + timedelta(days=1)
    rows = [make_log_row("a", mid), make_log_row("b", None, ingested_at=mid), make_log_row("c", None, ingested_at=mid)]
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    _team_table_from(wh)
    wh.source = LogSource.from_config(config.source)
    with caplog.at_level(logging.WARNING, logger="flywheel.cycle.extract"):
        out = extract_window(cycle, wh)
    assert out["rows_in_window"] == 1 and out["source_rows_in_no_window"] == 2
    assert "2 rows of the log source analytics.llm_requests have no event time" in caplog.text
    assert "source.columns.ingested_at" in caplog.text


def test_a_source_read_that_fails_names_the_source(tmp_path, wh, make_log_row):
    """An event-time column that is text cannot be windowed: the warehouse's own error, with the
    source and its mapping named."""
    from flywheel.warehouse.source import LogSource

    wh.execute("CREATE SCHEMA analytics")
    wh.execute("CREATE TABLE analytics.llm_requests AS SELECT 'x' AS req_id, 'yesterday' AS created_at, 'p' AS input_text, "
               "'r' AS output_text, 'thumbs_up' AS feedback, 0.9 AS score")  # fmt: skip
    required = {k: COLUMNS[k] for k in ("request_id", "timestamp", "prompt", "response", "user_action", "quality_score")}
    wh.source = LogSource.from_config(_source(tmp_path, table="analytics.llm_requests", columns=required).source)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(Exception, match="yesterday|Conversion|timestamp") as err:
        list(wh.read_window("production_logs", start, start + timedelta(days=7)))
    assert any("reading the log source analytics.llm_requests" in note for note in err.value.__notes__)


def test_ingest_refuses_while_the_cycles_read_a_source(tmp_path, monkeypatch, capsys):
    from flywheel import ingest as cli

    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text("source:\n  table: analytics.llm_requests\n  columns: "
                   + str({k: v for k, v in COLUMNS.items()}).replace("'", '"') + "\n")  # fmt: skip
    (tmp_path / "logs.jsonl").write_text("{}\n")
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    assert cli.main([str(tmp_path / "logs.jsonl"), "--config", str(cfg), "--no-progress"]) == 2
    assert "files ingested here would never be read" in capsys.readouterr().err


def test_the_readmes_source_example_is_a_valid_config():
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```yaml\n(source:\n.*?)```", readme, re.S)
    assert block, "the README's source example"
    source = yaml.safe_load(block.group(1))["source"]
    config = FlywheelConfig().with_overrides({f"source.{k}": v for k, v in source.items()})
    assert config.source.table and config.source.actions
