"""Candidates, their training target, and the raw row kept with a quarantine reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.records import candidate_from_row, content_fingerprint, row_to_json
from flywheel.tables import PRODUCTION_LOGS

TS = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
def row(make_log_row):
    return make_log_row("req-1", TS)


def test_candidate_from_row(row):
    row.update(quality_score=1, context="", included_in_training=None)
    c = candidate_from_row(row)
    assert c.request_id == "req-1" and c.timestamp == TS
    assert c.quality_score == 1.0 and isinstance(c.quality_score, float)
    assert c.context is None and c.correction is None
    assert c.included_in_training is False


@pytest.mark.parametrize(
    ("action", "correction", "target"),
    [
        ("corrected", "GARDEN!", "GARDEN!"),
        ("accepted", "GARDEN!", "GARDEN"),
        ("copied", None, "GARDEN"),
        ("regenerated", "other", "GARDEN"),
    ],
)
def test_target_is_correction_only_for_corrected_rows(row, action, correction, target):
    row.update(user_action=action, correction=correction, response="GARDEN")
    assert candidate_from_row(row).target == target


def test_candidate_round_trips_to_row(row):
    c = candidate_from_row(row)
    out = c.to_row()
    assert out["request_id"] == "req-1" and out["response"] == "GARDEN"
    assert set(out) == set(PRODUCTION_LOGS.names) - {"ingested_at"}


def test_row_to_json_keeps_everything(row):
    row["user_action"] = "liked"
    data = json.loads(row_to_json(row))
    assert data["user_action"] == "liked"
    assert data["timestamp"].startswith("2026-02-03 12:00:00")
    assert data["correction"] is None


def test_content_fingerprint_ignores_ingestion_time_only(row):
    again = {**row, "ingested_at": row["ingested_at"] + timedelta(hours=1)}
    assert content_fingerprint(row) == content_fingerprint(again)
    assert content_fingerprint(row) != content_fingerprint({**row, "response": "other"})
