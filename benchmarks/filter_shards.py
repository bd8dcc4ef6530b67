"""The filter stage in shards against one process, side by side on one window.

A simulated window (the product's traffic with PII, toxic and duplicate rows mixed in) is
extracted and validated into a temporary embedded warehouse; then, on the same validated rows:

- ``one task``: `flywheel.cycle.filtering.filter_candidates`, the single-process chain;
- ``N shards, 1 worker``: `plan_filter_shards`, the N `filter_shard` calls one after another,
  `merge_filter_shards` (the sharding's own overhead);
- ``N shards, W workers``: the shard calls in W processes at once (as W Airflow workers would
  take the mapped tasks), then the merge.

The one task is timed warm (its second run in the process); each shard process starts cold, as
an Airflow task does. Printed per arm: wall seconds, rows/s over the window's candidates, and the merge's share of
the arm; then the speed-up of W workers over one task (goal: >= 1.7x with 2 workers on 2 cores).
Every arm's kept set is compared with the single process's (it must be equal).

Run: ``python benchmarks/filter_shards.py [--rows 20000] [--shards 2] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "include"), str(ROOT)]


def _shard(cycle: Any, shard: int) -> float:
    from flywheel.cycle.filter_shards import filter_shard

    t = time.perf_counter()
    filter_shard(cycle, None, shard)  # type: ignore[arg-type]  # a shard reads only the cycle's files
    return time.perf_counter() - t


def _kept(cycle: Any) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(cycle.file("kept.parquet")).column("request_id").to_pylist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-shards-"))
    os.environ["FLYWHEEL_HOME"] = str(home)
    from flywheel.config import FlywheelConfig
    from flywheel.cycle import make_cycle
    from flywheel.cycle.extract import extract_window
    from flywheel.cycle.filter_shards import merge_filter_shards, plan_filter_shards
    from flywheel.cycle.filtering import filter_candidates
    from flywheel.cycle.validate import validate_rows
    from flywheel.model import registry
    from flywheel.sim.traffic import simulate_traffic
    from flywheel.warehouse import warehouse_from_config
    from tests.helpers.simulated_product import SIMULATED_PRODUCT

    end = datetime(2026, 3, 2, tzinfo=UTC)
    config = FlywheelConfig(home=home).with_overrides(SIMULATED_PRODUCT)
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    registry.ensure_bootstrap_champion(wh, "bench")
    cycle = make_cycle("flywheel_weekly", data_interval_end=end, logical_date=end, config=config)
    logs = simulate_traffic(cycle.window.start, lambda pairs: ["I think it is this one." for _ in pairs], model_version="bench",
                            n_requests=args.rows, seed=7, malformed_rate=0.01, adversarial_rate=0.02, pii_rate=0.05)  # fmt: skip
    wh.merge("production_logs", logs)
    extract_window(cycle, wh)
    validate_rows(cycle, wh)

    # The first run in a process also loads the detectors (presidio, the toxicity model): timed
    # apart, and the second run is the reference, so the shards' own cold starts count against them.
    t = time.perf_counter()
    filter_candidates(cycle, wh)
    cold_s = time.perf_counter() - t
    t = time.perf_counter()
    single = filter_candidates(cycle, wh)
    single_s = time.perf_counter() - t
    reference = _kept(cycle)
    n = single["candidates"]
    print(f"window: {n} candidates ({args.rows} requests), {single['kept']} kept; {os.cpu_count()} cores\n")
    print(f"{'arm':<28} {'seconds':>8} {'rows/s':>8} {'merge share':>12}  kept set")
    print(f"{'one task, first in process':<28} {cold_s:>8.1f} {n / cold_s:>8.0f} {'-':>12}  -")
    print(f"{'one task':<28} {single_s:>8.1f} {n / single_s:>8.0f} {'-':>12}  (reference)")

    sharded = dataclasses.replace(cycle, config=config.with_overrides({"scale.filter_shards": args.shards}))
    results: dict[int, float] = {}
    for workers in sorted({1, args.workers}):
        t = time.perf_counter()
        plan = plan_filter_shards(sharded, wh)["shards"]
        if workers == 1:
            for k in plan:
                _shard(sharded, k)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_shard, [sharded] * len(plan), plan))
        m = time.perf_counter()
        merge_filter_shards(sharded, wh)
        total = time.perf_counter() - t
        merge_share = (time.perf_counter() - m) / total
        same = "equal" if _kept(sharded) == reference else "DIFFERENT"
        results[workers] = total
        name = f"{args.shards} shards, {workers} worker{'s' if workers > 1 else ''}"
        print(f"{name:<28} {total:>8.1f} {n / total:>8.0f} {merge_share:>11.1%}  {same}")
    best = results[max(results)]
    print(f"\nspeed-up of {max(results)} workers over one task: {single_s / best:.2f}x (goal >= 1.7x with 2 workers on 2 cores)")
    print(f"sharding overhead on 1 worker: {results[1] / single_s:.2f}x the one task's time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
