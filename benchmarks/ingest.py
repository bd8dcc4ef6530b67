"""Ingestion throughput: `python -m flywheel.ingest --shape openai_chat` on JSONL files of OpenAI
chat-completions logs, against DuckDB's own `read_json` of the same file into a table (the
ceiling: C++, no per-line typing, no raw layer, no quarantine), side by side in one run; and each
one's peak RSS, measured in a fresh child process, at two file sizes (memory must not grow with
the file: the ingestion streams in batches of `ingest.batch_lines`).

    .venv/bin/python benchmarks/ingest.py [--rows 1000000] [--small 100000]

Goal (issue 20): >= 50% of the ceiling's rows/s; the large file's peak RSS within 1.3x the small
file's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
mode, path, home = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
started = time.perf_counter()
if mode == "duckdb":
    import duckdb
    con = duckdb.connect(str(home / "ceiling.duckdb"))
    con.execute("CREATE TABLE logs AS SELECT * FROM read_json(?, format='newline_delimited')", [str(path)])
    rows = con.execute("SELECT COUNT(*) FROM logs").fetchone()[0]
else:
    from flywheel.config import FlywheelConfig
    from flywheel.data.ingest import ingest_file
    from flywheel.filters.pii import redact_row_for_quarantine
    from flywheel.sim.shapes import ACTIONS
    from flywheel.warehouse import warehouse_from_config
    config = FlywheelConfig(home=home).with_overrides({"ingest.shape": "openai_chat", "ingest.actions": ACTIONS["openai_chat"]})
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    counts = ingest_file(wh, config, path, lambda r: redact_row_for_quarantine(r, config), progress=False)
    assert counts.loaded == counts.read, counts.summary()
    rows = counts.loaded
seconds = time.perf_counter() - started
print("RESULT=" + json.dumps({"rows": rows, "seconds": seconds, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_file(path: Path, rows: int) -> None:
    """``rows`` OpenAI-shape lines: a simulated week of 5,000 requests, repeated with fresh ids."""
    from flywheel.sim.shapes import openai_chat
    from flywheel.sim.traffic import simulate_traffic

    week = simulate_traffic(datetime(2026, 1, 5, tzinfo=UTC), lambda p: ["42"] * len(p), model_version="base",
                            n_requests=5000, seed=5, malformed_rate=0.0, adversarial_rate=0.0).to_pylist()  # fmt: skip
    lines = [openai_chat(r) for r in week]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            line = lines[i % len(lines)]
            line["response"]["id"] = f"chatcmpl-{i:09d}"
            fh.write(json.dumps(line) + "\n")


def run(mode: str, path: Path) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"flywheel-bench-ingest-{mode}-"))
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(home)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT="))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-ingest-"))
    results = {}
    for rows in (args.small, args.rows):
        path = work / f"openai-{rows}.jsonl"
        write_file(path, rows)
        mib = path.stat().st_size / 2**20
        for mode in ("duckdb", "flywheel"):
            r = run(mode, path)
            results[(mode, rows)] = r
            print(f"{rows:>9,} rows ({mib:,.0f} MiB)  {mode:<8}  {r['rows'] / r['seconds']:>10,.0f} rows/s  "
                  f"{r['seconds']:>7.1f} s  peak RSS {r['rss_mib']:,.0f} MiB")  # fmt: skip
    big, small = results[("flywheel", args.rows)], results[("flywheel", args.small)]
    ceiling = results[("duckdb", args.rows)]
    print(f"flywheel / DuckDB read_json at {args.rows:,} rows: "
          f"{(big['rows'] / big['seconds']) / (ceiling['rows'] / ceiling['seconds']):.3f}  (goal >= 0.50)")  # fmt: skip
    print(f"flywheel peak RSS, {args.rows:,} / {args.small:,} rows: {big['rss_mib'] / small['rss_mib']:.2f}  (goal <= 1.30)")


if __name__ == "__main__":
    main()
