"""The weekly DAG parsed with ``scale.filter_shards: 3`` runs its filter stage as three mapped
shard tasks and a merge through real Airflow (``airflow dags test``), and leaves the decisions
and kept rows that one filter task leaves on the same window."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from tests.helpers.flywheel_env import dags_test, flywheel_env

pytestmark = pytest.mark.integration

LOGICAL_DATE = datetime(2026, 3, 16, tzinfo=UTC)


def test_the_sharded_filter_stage_runs_mapped_and_keeps_what_one_task_keeps(tmp_path):
    from flywheel.cycle import make_cycle
    from flywheel.cycle.filtering import filter_candidates
    from flywheel.model import registry
    from flywheel.runconfig import build_run_config
    from flywheel.sim.traffic import simulate_traffic

    def edit(cfg):
        cfg["review"]["enabled"] = False  # the review stage has its own test (tests/browser/test_operator_path.py)
        cfg["scale"]["filter_shards"] = 3
        cfg["warehouse"]["read_batch_rows"] = 150

    with flywheel_env(tmp_path, edit, reserialize=True) as env:
        config, wh = env["config"], env["wh"]
        registry.ensure_bootstrap_champion(wh, "stand-in")
        cycle = make_cycle("flywheel_weekly", data_interval_end=LOGICAL_DATE, logical_date=LOGICAL_DATE, config=config)
        logs = simulate_traffic(cycle.window.start, lambda pairs: ["I am not sure." for _ in pairs], model_version="stand-in",
                                n_requests=600, seed=5, malformed_rate=0.02, pii_rate=0.1)  # fmt: skip
        wh.merge("production_logs", logs)
        proc = dags_test(env, "flywheel_weekly", LOGICAL_DATE, {"skip_training": True})
        out = proc.stdout + proc.stderr
        assert "filter_shard" in out and "plan_filter_shards" in out
        for shard in range(3):
            assert (cycle.file(f"filter-shards/{shard}") / "counts.json").is_file(), shard
        sharded = {(d["request_id"], d["rule"]): (d["kept"], d["reason"])
                   for d in wh.select("decisions", {"cycle_id": cycle.cycle_id}).to_pylist() if d["rule"] != "review"}  # fmt: skip
        kept = pq.read_table(cycle.file("kept.parquet")).column("request_id").to_pylist()
        assert kept and {rule for _, rule in sharded} >= {"user_action", "pii", "dedup", "selection"}

        # One filter task on the same validated window, under the config the run had (the phase's
        # capture policy on the YAML).
        ran = build_run_config(config, warehouse=wh, logical_date=LOGICAL_DATE, params={"skip_training": True}).config
        one = dataclasses.replace(cycle, config=ran.with_overrides({"scale.filter_shards": 1}))
        filter_candidates(one, wh)
        single = {(d["request_id"], d["rule"]): (d["kept"], d["reason"])
                  for d in wh.select("decisions", {"cycle_id": cycle.cycle_id}).to_pylist()}  # fmt: skip
        assert sharded == single
        assert pq.read_table(cycle.file("kept.parquet")).column("request_id").to_pylist() == kept
