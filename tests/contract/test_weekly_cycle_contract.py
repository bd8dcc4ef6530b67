"""A full weekly cycle (extract, both gates, validate, filter, dataset, LoRA training of the
project's tiny model, golden-set evaluation, promotion, record) on each warehouse, with the same
simulated week of logs: every backend must reach the same counts, the same dataset and the same
decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flywheel.config import FlywheelConfig
from flywheel.cycle import make_cycle
from flywheel.cycle.data_gates import gate_raw_window, gate_training_set
from flywheel.cycle.dataset import build_dataset
from flywheel.cycle.evaluate import evaluate_golden_set
from flywheel.cycle.extract import extract_window
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.promote import promote_if_better
from flywheel.cycle.record import record_cycle
from flywheel.cycle.train import train_challenger
from flywheel.cycle.validate import validate_rows
from flywheel.model import registry
from flywheel.sim.traffic import simulate_traffic
from flywheel.tables import rows_to_table
from tests.helpers.backends import backend_config, open_warehouse

pytestmark = pytest.mark.contract
END = datetime(2026, 3, 2, tzinfo=UTC)
STAGES = (extract_window, gate_raw_window, validate_rows, filter_candidates, build_dataset, gate_training_set,
          train_challenger, evaluate_golden_set, promote_if_better, record_cycle)  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    """Settings small enough for a CPU in seconds, and the tiny model, built once."""
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model

    overrides = {
        "evaluation.golden_set_size": 40,
        "tiny_model.pretrain_examples": 300,
        "tiny_model.pretrain_epochs": 1,
        "training.min_examples": 5,
        "training.epochs": 1,
    }
    home = tmp_path_factory.mktemp("model")
    config = FlywheelConfig(home=home).with_overrides(overrides)
    build_tiny_model(config)
    return {**overrides, "training.base_model": resolve_base_model(config)}


def _week(start: datetime) -> list[dict]:
    # A stand-in model that is never right: users correct it or regenerate, as in the product.
    return simulate_traffic(
        start, lambda pairs: ["I am not sure." for _ in pairs], model_version="base:x", n_requests=120, seed=7,
        malformed_rate=0.05,
    ).to_pylist()  # fmt: skip


def _cycle(backend: str, home: Path, running, small: dict) -> dict:
    config = backend_config(backend, home, running, **small)
    wh = open_warehouse(config)
    wh.ensure_schema()
    cycle = make_cycle("flywheel_weekly", data_interval_end=END, logical_date=END, config=config)
    rows = _week(cycle.window.start) + _week(cycle.window.start - timedelta(days=7))
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    registry.ensure_bootstrap_champion(wh, config.training.base_model)
    out = {stage.__name__: stage(cycle, wh) for stage in STAGES}
    out["tables"] = {t: wh.count(t, {"cycle_id": cycle.cycle_id}) for t in ("quarantine", "decisions", "cycles", "metrics")}
    out["evaluations"] = sorted(
        (r["role"], r["n_items"], r["n_correct"]) for r in wh.select("evaluations", {"cycle_id": cycle.cycle_id}).to_pylist()
    )
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, running, small) -> dict:
    return _cycle("duckdb", tmp_path_factory.mktemp("duckdb"), running, small)


@pytest.mark.parametrize("backend", ["snowflake", "bigquery"])
def test_weekly_cycle_matches_duckdb(backend, tmp_path, running, small, reference):
    out = _cycle(backend, tmp_path, running, small)
    rec, ref = out["record_cycle"], reference["record_cycle"]
    assert rec["quarantined"] + rec["kept"] + rec["rejected"] == rec["rows_in_window"]
    assert rec["quarantined"] > 0 and rec["kept"] > 0
    for key in ("rows_in_window", "quarantined", "kept", "rejected", "pass_rate", "promoted"):
        assert rec[key] == ref[key], key
    assert out["validate_rows"]["quarantine_reasons"] == reference["validate_rows"]["quarantine_reasons"]
    assert out["filter_candidates"]["rejected_by_rule"] == reference["filter_candidates"]["rejected_by_rule"]
    assert out["build_dataset"]["content_hash"] == reference["build_dataset"]["content_hash"]
    assert out["tables"] == reference["tables"]
    assert out["evaluations"] == reference["evaluations"]
    assert out["gate_raw_window"]["success"] and out["gate_training_set"]["success"]
