"""Extraction throughput: a 1M-row window read through the `Warehouse` interface, against a bare
DuckDB Arrow fetch of the very same query and parameters, in one run; and each one's peak RSS,
measured in a fresh child process so that neither inherits the other's memory.

    .venv/bin/python benchmarks/extract.py [--rows 1000000] [--batch-rows 5000]

The interface adds what the bare fetch does not: typing every batch to the window snapshot's
schema. Target: at least 50% of the bare rows/s; peak RSS bounded by the batch size, not the
window (the rows are streamed).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

T0 = datetime(2026, 2, 2, tzinfo=UTC)


def build(path: Path, rows: int) -> None:
    import duckdb

    from flywheel.warehouse.duckdb import DuckDBWarehouse

    DuckDBWarehouse(path).ensure_schema()
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        """
        INSERT INTO production_logs
        SELECT 'req-' || i, $t0 + to_seconds(i % 604800), 'user-' || (i % 5000),
               'Please rewrite the word garden number ' || i || ' in capital letters for my poster.',
               'GARDEN ' || i, ['accepted', 'copied', 'corrected', 'regenerated'][1 + i % 4],
               CASE WHEN i % 4 = 2 THEN 'GARDEN!' END, 'uppercase', (i % 100) / 100.0, FALSE,
               'base:tiny', CASE WHEN i % 3 = 0 THEN 'some context ' || i END,
               $t0 + to_seconds(i % 604800 + 5)
        FROM range($n) r(i)
        """,
        {"t0": T0, "n": rows},
    )
    con.close()


def measure(mode: str, path: Path, batch_rows: int) -> dict[str, float]:
    """One read of the whole week, in this (fresh) process."""
    from flywheel.warehouse import Pushdown
    from flywheel.warehouse.duckdb import DuckDBWarehouse
    from flywheel.warehouse.sql import canonical_sql
    from flywheel.warehouse.window import window_params

    start, end = T0, T0 + timedelta(days=7)
    pushdown = Pushdown(("accepted", "copied", "corrected"), 0.6)
    began = time.perf_counter()
    rows = 0
    if mode == "interface":
        for batch in DuckDBWarehouse(path).read_logs_window(start, end, batch_rows=batch_rows, pushdown=pushdown):
            rows += batch.num_rows
    else:
        import duckdb

        con = duckdb.connect(str(path))
        con.execute("SET TimeZone = 'UTC'")
        params = window_params(start, end, timedelta(minutes=10), pushdown)
        for batch in con.sql(canonical_sql("read_logs_window"), params=params).to_arrow_reader(batch_rows):
            rows += batch.num_rows
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=5000)
    parser.add_argument("--measure", choices=["interface", "bare"])
    parser.add_argument("--path", type=Path)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.path, args.batch_rows)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.duckdb"
        began = time.perf_counter()
        build(path, args.rows)
        print(f"built a {args.rows:,}-row week in {time.perf_counter() - began:.1f}s")
        results = {}
        for mode in ("bare", "interface"):
            out = subprocess.run(
                [sys.executable, __file__, "--measure", mode, "--path", str(path), "--batch-rows", str(args.batch_rows)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[mode]
            print(f"{mode:>9}: {r['rows']:,} rows in {r['seconds']:.2f}s = {r['rows_per_s']:,.0f} rows/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
        ratio = results["interface"]["rows_per_s"] / results["bare"]["rows_per_s"]
        print(f"interface / bare DuckDB Arrow fetch: {ratio:.0%} (target >= 50%)")


if __name__ == "__main__":
    main()
