"""What the simulated reviewers cost per cycle, item by item against a page of items at a time.

The demo's two simulated reviewers work through each cycle's review sample while the cycle's
`wait_for_review` task waits, so their time is the demo's time. Each lease and each stored
review is a warehouse round trip (on DuckDB a short-lived connection to the file, which the
cycle's own tasks share); `flywheel.review.items.next_items` and `submit_reviews` lease and store
a page in one round trip each. Both ways run here side by side, alternating, on fresh copies of
one sample of review items, and the ratio is printed.

Run: ``python benchmarks/review_pages.py [--items 100] [--runs 2]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from flywheel.review.items import agreement  # noqa: E402
from flywheel.sim.reviewers import run_simulated_reviewers  # noqa: E402
from flywheel.sim.traffic import sample_task  # noqa: E402
from flywheel.tables import rows_to_table  # noqa: E402
from flywheel.warehouse.duckdb import DuckDBWarehouse  # noqa: E402

NOW = datetime(2026, 3, 2, 9, tzinfo=UTC)
CYCLE = "flywheel_weekly-20260302T0000"


def seed_warehouse(path: Path, n_items: int) -> dict[str, str]:
    import random

    rng = random.Random("bench-review")
    wh = DuckDBWarehouse(path)
    wh.ensure_schema()
    items, truth = [], {}
    for i in range(n_items):
        task = sample_task(rng)
        rid = f"req-{i:05d}"
        right = rng.random() < 0.7
        items.append({"item_id": f"{CYCLE}:{rid}", "cycle_id": CYCLE, "logical_date": NOW, "request_id": rid,
                      "slice": "priority", "priority": rng.random(), "reasons_json": "[]", "task_type": task.task_type,
                      "user_action": "accepted", "prompt": task.prompt, "context": task.context,
                      "response": task.answer if right else "wrong", "correction": None, "filter_kept": True,
                      "filter_scores_json": "{}", "created_at": NOW})  # fmt: skip
        truth[rid] = task.answer
    wh.merge("review_items", rows_to_table("review_items", items))
    return truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100, help="review items in the sample (default 100)")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        seeded = Path(tmp) / "seeded.duckdb"
        truth = seed_warehouse(seeded, args.items)
        times: dict[int, list[float]] = {1: [], 50: []}
        kappas: dict[int, float | None] = {}
        for _ in range(args.runs):
            for page in times:
                path = Path(tmp) / f"page{page}.duckdb"
                shutil.copy(seeded, path)
                wh = DuckDBWarehouse(path)
                started = time.perf_counter()
                written = run_simulated_reviewers(wh, truth, reviewers=["sim-1", "sim-2"], reviewers_per_item=2, now=NOW,
                                                  page=page)  # fmt: skip
                times[page].append(time.perf_counter() - started)
                assert written == 2 * args.items, written
                kappas[page] = agreement(wh, [CYCLE])["kappa"]
    one, paged = statistics.median(times[1]), statistics.median(times[50])
    print(f"{args.items} items x 2 reviewers, DuckDB, median of {args.runs} runs each:")
    print(f"  item by item (page=1):   {one:6.2f} s   kappa {kappas[1]}")
    print(f"  pages of 50 (page=50):   {paged:6.2f} s   kappa {kappas[50]}")
    print(f"  ratio: {one / paged:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
