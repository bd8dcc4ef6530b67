"""The log shapes teams already have (`flywheel.data.shapes`): OpenAI chat-completions calls,
Langfuse traces and OpenTelemetry GenAI spans ingest into the flywheel's record, with the
product's own feedback vocabulary; what a shape cannot say faithfully is quarantined with its
reason; a simulated week in each shape is the same week as in the flywheel's own record, and a
cycle runs on it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flywheel.config import FlywheelConfig
from flywheel.data.ingest import ingest_file
from flywheel.errors import ConfigError
from flywheel.filters.pii import redact_row_for_quarantine
from flywheel.records import PRODUCTION_LOG_FIELDS
from flywheel.sim.shapes import ACTIONS, write_week

DATA = Path(__file__).resolve().parents[1] / "data"


def _ingest(wh, config: FlywheelConfig, path: Path):
    counts = ingest_file(wh, config, path, lambda row: redact_row_for_quarantine(row, config), progress=False)
    rows = {r["request_id"]: r for r in wh.query("SELECT * FROM production_logs").to_pylist()}
    quarantined = wh.query("SELECT row_number, field, rule, reason FROM quarantine ORDER BY row_number").to_pylist()
    return counts, rows, quarantined


def _config(tmp_path, shape: str, **ingest) -> FlywheelConfig:
    return FlywheelConfig(home=tmp_path).with_overrides({"ingest.shape": shape, **{f"ingest.{k}": v for k, v in ingest.items()}})


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def test_openai_chat_calls(tmp_path, wh):
    config = _config(tmp_path, "openai_chat", actions={"thumbs_up": "accepted", "edit": "corrected", "retry": "regenerated"})
    counts, rows, quarantined = _ingest(wh, config, DATA / "openai_chat.jsonl")
    assert (counts.read, counts.loaded, counts.quarantined) == (5, 3, 2)

    first = rows["chatcmpl-A1"]
    assert first["timestamp"] == _at(1767607200)  # `created`: epoch seconds, by the API's definition
    assert (first["user_id"], first["user_action"], first["task_type"]) == ("u-101", "accepted", "extraction")
    assert first["prompt"] == "Which city was order C87 shipped to?"  # the user's turn, not the system prompt
    assert first["context"].startswith("Note C87") and first["model_version"] == "acme-chat-v3"
    assert first["response"] == "Order C87 went to Accra." and first["quality_score"] == 0.92
    # A multi-turn chat: the last user turn, written as content parts; the edit is the correction.
    second = rows["chatcmpl-A2"]
    assert second["prompt"] == "Write the word quartz in capital letters."
    assert (second["user_action"], second["correction"], second["task_type"]) == ("corrected", "QUARTZ", None)
    assert rows["chatcmpl-A3"]["user_action"] == "regenerated"

    assert [(q["row_number"], q["field"], q["rule"]) for q in quarantined] == [
        (4, "prompt", "not_text"),  # an image part is never dropped silently
        (5, "user_action", "vocabulary"),  # "shrug" is in no mapping
    ]
    assert "image_url" in quarantined[0]["reason"] and "thumbs_up" in quarantined[1]["reason"]


def test_langfuse_traces(tmp_path, wh):
    config = _config(tmp_path, "langfuse", actions={"1": "accepted", "-1": "corrected", "0": "regenerated"})
    counts, rows, quarantined = _ingest(wh, config, DATA / "langfuse_traces.jsonl")
    assert (counts.read, counts.loaded, counts.quarantined) == (3, 2, 1)
    one, two = rows["trace-1"], rows["trace-2"]
    assert one["prompt"] == "How many letters are in the word lantern?"
    assert one["response"] == "The word lantern has 7 letters." and one["model_version"] == "acme-chat-v3"
    assert (one["user_action"], one["quality_score"], one["user_id"]) == ("accepted", 0.88, "u-201")
    assert one["timestamp"] == datetime(2026, 1, 5, 10, tzinfo=UTC)
    assert (two["prompt"], two["response"]) == ("Write the word maple in capital letters.", "Maple")
    assert (two["user_action"], two["correction"], two["task_type"]) == ("corrected", "MAPLE", "uppercase")
    assert [(q["row_number"], q["rule"]) for q in quarantined] == [(3, "not_utc")]  # typed as strictly as ours


def test_otel_genai_spans(tmp_path, wh):
    config = _config(tmp_path, "otel_genai", actions={"copy": "copied", "thumbs_up": "accepted"},
                     task_type_rules=[{"pattern": r"\bplus\b", "task_type": "arithmetic"}])  # fmt: skip
    counts, rows, quarantined = _ingest(wh, config, DATA / "otel_genai_spans.jsonl")
    assert (counts.read, counts.loaded, counts.quarantined) == (3, 2, 1)
    listed = rows["chatcmpl-O1"]  # OTLP's list of key/value attributes
    assert (listed["prompt"], listed["response"], listed["user_action"]) == ("Reverse the word pebble.", "elbbep", "copied")
    assert listed["timestamp"] == _at(1767607200) and listed["quality_score"] == 0.95 and listed["task_type"] == "reverse"
    plain = rows["eee19b7ec3c1b175"]  # attributes as an object; no response id: the span's id
    assert plain["prompt"] == "What is 9 plus 10?" and plain["response"] == "19"
    assert plain["task_type"] == "arithmetic"  # from the rule: the span has no task type
    assert [(q["row_number"], q["rule"]) for q in quarantined] == [(3, "otlp_bundle")]


def test_a_mapping_that_cannot_work_is_a_clear_error(tmp_path, wh):
    with pytest.raises(ConfigError, match="map onto no action"):
        _config(tmp_path, "openai_chat", actions={"thumbs_up": "liked"})
    with pytest.raises(ConfigError, match="not a JMESPath expression"):
        _config(tmp_path, "openai_chat", fields={"user_id": "request.[user"})
    config = _config(tmp_path, "openai_chat", fields={"customer": "request.user"})
    with pytest.raises(ConfigError, match=r"\['customer'\] are not fields of the log record"):
        _ingest(wh, config, DATA / "openai_chat.jsonl")


def test_field_mapping_renames_a_teams_own_columns(tmp_path, wh, make_log_row):
    """A flat log with other names: each field read from its column; the other columns ignored."""
    row = make_log_row("r-1", datetime(2026, 1, 6, 9, tzinfo=UTC), user_action="accepted")
    theirs = {"id": row["request_id"], "ts": row["timestamp"].isoformat(), "uid": row["user_id"], "question": row["prompt"],
              "answer": row["response"], "reaction": "up", "kind": row["task_type"], "latency_ms": 120}  # fmt: skip
    path = tmp_path / "logs.jsonl"
    path.write_text(json.dumps(theirs) + "\n")
    fields = {"request_id": "id", "timestamp": "ts", "user_id": "uid", "prompt": "question", "response": "answer",
              "user_action": "reaction", "task_type": "kind"}  # fmt: skip
    counts, rows, _ = _ingest(wh, _config(tmp_path, "flywheel", fields=fields, actions={"up": "accepted"}), path)
    assert counts.loaded == 1
    assert {k: rows["r-1"][k] for k in ("prompt", "response", "user_action", "task_type")} == {
        "prompt": row["prompt"], "response": row["response"], "user_action": "accepted", "task_type": row["task_type"]}


@pytest.mark.parametrize("shape", ["openai_chat", "langfuse", "otel_genai"])
def test_a_week_in_each_shape_is_the_same_week(shape, tmp_path, answer_fns):
    from flywheel.warehouse.duckdb import DuckDBWarehouse

    path = tmp_path / f"{shape}.jsonl"
    expected = write_week(shape, path, answer_fns["half"], week_start=datetime(2026, 1, 5, tzinfo=UTC), n_requests=200)
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", lock_timeout_s=5)
    wh.ensure_schema()
    counts, rows, quarantined = _ingest(wh, _config(tmp_path, shape, actions=ACTIONS[shape]), path)
    assert counts.loaded == len(expected) == 200 and not quarantined
    precision = {"openai_chat": "seconds", "langfuse": "milliseconds", "otel_genai": "microseconds"}[shape]
    for want in expected:
        got = rows[want["request_id"]]
        for name in PRODUCTION_LOG_FIELDS:
            if name == "timestamp":
                assert got[name].isoformat(timespec=precision) == want[name].isoformat(timespec=precision)
            elif name != "included_in_training":  # the product's logs do not say; the flywheel sets it
                assert got[name] == want[name], (name, want["request_id"])


@pytest.mark.parametrize("shape", ["openai_chat", "langfuse", "otel_genai"])
def test_a_cycle_runs_on_a_week_ingested_in_each_shape(shape, tmp_path, answer_fns):
    """Ingested, the week is an ordinary week: the weekly cycle's stages read, validate, filter,
    sample and build a dataset from it (training left to the cycles' own tests)."""
    from flywheel.cycle.inprocess import run_cycle
    from flywheel.model import registry
    from flywheel.warehouse import warehouse_from_config

    # The simulated product answers in a word: the demo's length rule (prompt and response). The
    # review sample without the champion's signals: no model is loaded here.
    config = _config(tmp_path, shape, actions=ACTIONS[shape]).with_overrides(
        {"filters.length_counts": "prompt_and_response", "review.model_signals": False})
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    write_week(shape, tmp_path / "week.jsonl", answer_fns["half"], week_start=datetime(2026, 1, 5, tzinfo=UTC), n_requests=240)
    counts, _, _ = _ingest(wh, config, tmp_path / "week.jsonl")
    assert counts.loaded == 240
    registry.ensure_bootstrap_champion(wh, "tiny-llama")
    out = run_cycle("flywheel_weekly", datetime(2026, 1, 26, tzinfo=UTC), config, wh, params={"skip_training": True},
                    write_report=False)  # fmt: skip
    assert out["extract_window"]["rows_in_window"] == 240 and out["validate_rows"]["valid"] == 240
    assert out["gate_raw_window"]["success"] and out["sample_for_review"]["items"] > 0
    kept = out["filter_candidates"]["kept"]
    assert kept >= config.training.min_examples and out["build_dataset"]["n_kept"] == kept
    assert out["record_cycle"]["kept"] == kept and out["record_cycle"]["rows_in_window"] == 240


def test_the_command_takes_the_shape(tmp_path, monkeypatch, capsys):
    from flywheel import ingest as cli

    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    assert cli.main([str(DATA / "langfuse_traces.jsonl"), "--shape", "langfuse", "--no-progress"]) == 0
    out = capsys.readouterr().out
    # Langfuse's feedback is a number: without `ingest.actions` no line can say what the user did.
    assert "3 lines read: 0 loaded, 0 duplicates, 3 quarantined" in out and "user_action.vocabulary: 3" in out
    config = tmp_path / "flywheel.yaml"
    config.write_text(json.dumps({"ingest": {"shape": "langfuse", "actions": {"1": "accepted", "-1": "corrected"}}}))
    assert cli.main([str(DATA / "langfuse_traces.jsonl"), "--config", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    # The lines quarantined for want of a mapping are typed again, and now load.
    assert "3 lines read: 2 loaded, 0 duplicates, 1 quarantined; 3 lines quarantined before were typed again" in out
    assert "timestamp.not_utc: 1" in out


def test_a_fixed_mapping_loads_what_the_first_ingest_quarantined(tmp_path, wh):
    path = DATA / "openai_chat.jsonl"
    first, _, quarantined = _ingest(wh, _config(tmp_path, "openai_chat"), path)
    assert (first.loaded, first.reasons["user_action.vocabulary"]) == (0, 4)  # and the image part
    fixed = _config(tmp_path, "openai_chat", actions={"thumbs_up": "accepted", "edit": "corrected", "retry": "regenerated"})
    again, rows, quarantined = _ingest(wh, fixed, path)
    assert (again.loaded, again.quarantined, again.retried) == (3, 2, 5) and len(rows) == 3
    # The reasons of the lines now loaded are gone; the two still quarantined keep today's.
    assert [(q["row_number"], q["rule"]) for q in quarantined] == [(4, "not_text"), (5, "vocabulary")]


def test_plain_paths_read_as_jmespath_does():
    """The fast lookup for plain paths gives what jmespath gives, wherever a step is missing."""
    import jmespath

    from flywheel.data.shapes import SHAPES, _follow, _plain_path

    objs = [{}, {"response": None}, {"response": {"id": 3, "choices": []}}, {"a": [1, {"b": 2}], "attributes": {"x.y": "z"}},
            {"response": {"choices": [{"message": {"content": "hi"}}]}}, {"request": ["not", "an", "object"]}, [1, 2]]  # fmt: skip
    exprs = [e for shape in SHAPES.values() for e in shape.fields.values()] + ["a[1].b", "a[-1]", "a[9]", 'attributes."x.y"', "[0]"]
    plain = [e for e in exprs if _plain_path(e) is not None]
    assert len(plain) >= 20 and _plain_path("request.user || request.metadata.user_id") is None
    for expr in plain:
        for obj in objs:
            assert _follow(obj, _plain_path(expr)) == jmespath.search(expr, obj), (expr, obj)


def test_the_readmes_mapping_example_is_a_valid_config():
    import re

    import yaml

    readme = (DATA.parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(ingest:\n.*?)```", readme, re.S)
    assert block, "the README's ingest example"
    ingest = yaml.safe_load(block.group(1))["ingest"]
    config = FlywheelConfig().with_overrides({f"ingest.{k}": v for k, v in ingest.items()})
    assert config.ingest.shape == "openai_chat" and config.ingest.actions["edit"] == "corrected"
    assert config.ingest.task_type_rules[0].task_type == "arithmetic"
