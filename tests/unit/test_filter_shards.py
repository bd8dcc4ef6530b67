"""The filter stage in shards keeps exactly what the single-process chain keeps: the same
candidates, the same decision per row and rule, the same kept rows, across exact and near
duplicates that fall in different shards, duplicates of an earlier training set, PII and the
per-type selection. Real stages on the embedded warehouse, no model."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from flywheel.config import FlywheelConfig
from flywheel.cycle import make_cycle
from flywheel.cycle.dataset import build_dataset
from flywheel.cycle.extract import extract_window
from flywheel.cycle.filter_shards import (
    filter_shard,
    merge_filter_shards,
    plan_filter_shards,
    shard_of,
)
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.validate import validate_rows
from flywheel.model import registry
from flywheel.sim.traffic import simulate_traffic
from flywheel.tables import rows_to_table
from tests.helpers.simulated_product import SIMULATED_PRODUCT

T1 = datetime(2026, 3, 2, tzinfo=UTC)


def _week(wh, config, end, answer, seed):
    cycle = make_cycle("flywheel_weekly", data_interval_end=end, logical_date=end, config=config)
    logs = simulate_traffic(cycle.window.start, answer, model_version="base:x", n_requests=400, seed=seed,
                            malformed_rate=0.02, pii_rate=0.1)  # fmt: skip
    rows = logs.to_pylist()
    # Copies under new ids, a little later in the window: exact copies, and near ones (a word
    # added), each likely in another shard than its original.
    later = lambda r, h: {k: r[k] + timedelta(hours=h) for k in ("timestamp", "ingested_at") if r[k] is not None}  # noqa: E731
    copies = [r | later(r, 1) | {"request_id": f"{r['request_id']}-copy"} for r in rows[:60]]
    near = [r | later(r, 2) | {"request_id": f"{r['request_id']}-near", "response": (r["response"] or "") + " ok"} for r in rows[60:100]]
    wh.merge("production_logs", rows_to_table("production_logs", rows + copies + near))
    return cycle


def _outcome(wh, cycle):
    decisions = {(d["request_id"], d["rule"]): (d["kept"], d["reason"], d["score"])
                 for d in wh.select("decisions", {"cycle_id": cycle.cycle_id}).to_pylist()}  # fmt: skip
    kept = pq.read_table(cycle.file("kept.parquet")).to_pylist()
    return decisions, kept


@pytest.mark.parametrize("n_shards", [1, 3])
def test_sharded_filtering_keeps_what_one_process_keeps(wh, tmp_path, answer_fns, n_shards):
    config = FlywheelConfig(home=tmp_path).with_overrides({**SIMULATED_PRODUCT, "training.min_examples": 5,
                                                           "warehouse.read_batch_rows": 97})  # fmt: skip
    registry.ensure_bootstrap_champion(wh, "some-base")
    # Week 1 trains (single process): its examples are the history week 2 is deduplicated against.
    first = _week(wh, config, T1, answer_fns["half"], seed=1)
    for stage in (extract_window, validate_rows, filter_candidates, build_dataset):
        stage(first, wh)
    # Week 2 holds copies of week 1 too.
    second = _week(wh, config, T1 + timedelta(weeks=1), answer_fns["half"], seed=2)
    week1 = wh.select("production_logs").to_pylist()[:30]
    wh.merge("production_logs", rows_to_table("production_logs", [
        r | {"request_id": f"{r['request_id']}-again", "timestamp": second.window.start + timedelta(hours=3),
             "ingested_at": second.window.start + timedelta(hours=4)} for r in week1]))  # fmt: skip
    extract_window(second, wh)
    validate_rows(second, wh)

    single = filter_candidates(second, wh)
    expected_decisions, expected_kept = _outcome(wh, second)
    wh.replace_partition("decisions", {"cycle_id": second.cycle_id}, rows_to_table("decisions", []))
    second.file("kept.parquet").unlink()

    sharded = dataclasses.replace(second, config=config.with_overrides({"scale.filter_shards": n_shards}))
    plan = plan_filter_shards(sharded, wh)
    assert plan["shards"] == list(range(n_shards))
    shards = [filter_shard(sharded, wh, k) for k in plan["shards"]]
    assert sum(s["candidates"] for s in shards) == single["candidates"]
    merged = merge_filter_shards(sharded, wh)
    decisions, kept = _outcome(wh, sharded)

    assert {k: v for k, v in merged.items() if k != "shards"} == single
    assert [r["request_id"] for r in kept] == [r["request_id"] for r in expected_kept]
    assert kept == expected_kept  # redacted the same way, row for row
    assert decisions == expected_decisions
    dedup = {rid: v for (rid, rule), v in decisions.items() if rule == "dedup"}
    assert any(not ok and "exact duplicate" in why for ok, why, _ in dedup.values())
    assert any(not ok and "near duplicate" in why for ok, why, _ in dedup.values())
    assert any(not ok and "trained in" in why for ok, why, _ in dedup.values())  # against week 1's training set
    if n_shards > 1:
        originals = [r for r in dedup if r.endswith("-copy")]
        assert {shard_of(r, n_shards) != shard_of(r.removesuffix("-copy"), n_shards) for r in originals} == {True, False}


def test_a_shard_out_of_range_or_missing_is_an_error(wh, tmp_path, answer_fns):
    config = FlywheelConfig(home=tmp_path).with_overrides({**SIMULATED_PRODUCT, "scale.filter_shards": 2})
    registry.ensure_bootstrap_champion(wh, "some-base")
    cycle = _week(wh, config, T1, answer_fns["half"], seed=3)
    extract_window(cycle, wh)
    validate_rows(cycle, wh)
    plan_filter_shards(cycle, wh)
    with pytest.raises(ValueError, match="shard 2 of 2"):
        filter_shard(cycle, wh, 2)
    filter_shard(cycle, wh, 0)
    with pytest.raises(FileNotFoundError, match="filter shard 1 of 2 left no output"):
        merge_filter_shards(cycle, wh)
