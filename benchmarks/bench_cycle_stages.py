"""Throughput of the weekly cycle's stages on this machine, measured side by side in one run.

Prints rows/s for the warehouse (MERGE of production logs, windowed Arrow read), validation and
filtering, and examples/s for LoRA training and golden-set generation on the tiny model.
Run: ``python benchmarks/bench_cycle_stages.py [--rows N]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    os.environ["FLYWHEEL_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from flywheel.config import load_config
    from flywheel.cycle import make_cycle
    from flywheel.cycle.dataset import build_dataset
    from flywheel.cycle.extract import extract_window
    from flywheel.cycle.filtering import filter_candidates
    from flywheel.cycle.train import train_challenger
    from flywheel.cycle.validate import validate_rows
    from flywheel.model import registry
    from flywheel.sim import traffic
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model
    from flywheel.sim.traffic import simulate_traffic
    from flywheel.warehouse import warehouse_from_config

    # The simulated product answers in a word or two: the length rule counts the prompt with the
    # answer, as in the demo, so the later stages have rows to work on.
    config = load_config().with_overrides({"filters.length_counts": "prompt_and_response"})
    week = datetime(2026, 1, 5, tzinfo=UTC)
    logs, t_sim = _timed(lambda: simulate_traffic(
        week, lambda pairs: ["42"] * len(pairs), model_version="bench", n_requests=args.rows, seed=1, malformed_rate=0.01
    ))
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    _, t_merge = _timed(lambda: wh.merge("production_logs", logs))
    _, t_merge2 = _timed(lambda: wh.merge("production_logs", logs))
    cycle = make_cycle("bench", data_interval_end=week + timedelta(days=21), logical_date=week + timedelta(days=21), config=config)
    _, t_extract = _timed(lambda: extract_window(cycle, wh))
    _, t_validate = _timed(lambda: validate_rows(cycle, wh))
    kept, t_filter = _timed(lambda: filter_candidates(cycle, wh))
    n = args.rows
    print(f"rows: {n}  (simulated in {t_sim:.2f}s)")
    print(f"warehouse MERGE (new rows)        {n / t_merge:12,.0f} rows/s")
    print(f"warehouse MERGE (same rows again) {n / t_merge2:12,.0f} rows/s")
    print(f"extract window -> Parquet         {n / t_extract:12,.0f} rows/s")
    print(f"validate + quarantine             {n / t_validate:12,.0f} rows/s   (includes loading presidio once, ~4 s)")
    print(f"filter (every rule, decisions)    {n / t_filter:12,.0f} rows/s   kept {kept['kept']}")

    info = build_tiny_model(config)
    registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
    ds, t_ds = _timed(lambda: build_dataset(cycle, wh))
    tr, t_train = _timed(lambda: train_challenger(cycle, wh))
    print(f"build chat dataset                {ds['n_train'] / t_ds:12,.0f} examples/s")
    print(f"LoRA train, 1 epoch, tiny model   {tr['n_examples'] / t_train:12,.0f} examples/s "
          f"({tr['steps']} steps, {t_train:.1f}s incl. load; model {info.parameters:,} params)")

    from flywheel.evaluation.offline import evaluate_answer_fn, load_golden_set
    from flywheel.model.inference import answer_fn, load_model

    golden = load_golden_set(config.artefacts_root, templates=traffic, n=config.evaluation.golden_set_size, seed=config.evaluation.golden_seed)
    model = load_model(tr["adapter_path"] and resolve_base_model(config), tr["adapter_path"])
    res, t_eval = _timed(lambda: evaluate_answer_fn(answer_fn(model), golden))
    print(f"golden-set generation (greedy)    {res.n_items / t_eval:12,.0f} answers/s  (accuracy {res.accuracy:.3f})")


if __name__ == "__main__":
    main()
