"""``python -m flywheel.ingest FILE...``: a product's log files into the configured warehouse.

JSONL (``.jsonl``, ``.ndjson``, ``.json``), CSV and Parquet files, optionally gzipped, each line
kept verbatim in the raw layer and typed strictly (`flywheel.data.ingest`). Prints what became of
every line: ``read = loaded + duplicates + quarantined``, and the quarantine's reasons. The
warehouse is the one ``FLYWHEEL_CONFIG`` (or ``--config``) names: DuckDB opens directly; BigQuery
and Snowflake open through their Airflow connection, as in the DAGs (an ``AIRFLOW_CONN_...``
environment variable serves outside Airflow; ``make ingest`` puts the plugins on the path).

Exit status: 0 when every line was accounted for (quarantined lines included), 1 when a file
could not be read at all, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

from flywheel.config import FlywheelConfig, load_config
from flywheel.data.ingest import IngestCounts, IngestError, ingest_file
from flywheel.errors import ConfigError
from flywheel.filters.pii import redact_row_for_quarantine
from flywheel.warehouse import Warehouse, warehouse_from_config


def open_warehouse(config: FlywheelConfig) -> Warehouse:
    if config.warehouse.backend == "duckdb":
        return warehouse_from_config(config)
    try:
        # Imports Airflow (seconds), for a cloud warehouse's connection only.
        from flywheel_airflow.hooks import FlywheelWarehouseHook
    except ImportError as exc:
        raise ConfigError(
            f"warehouse {config.warehouse.backend!r} opens through its Airflow connection "
            f"{config.warehouse.conn_id!r}: run `make ingest`, or put the project's plugins/ on PYTHONPATH ({exc})"
        ) from exc
    return FlywheelWarehouseHook(config, run={}).get_warehouse()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flywheel.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE", help="JSONL, CSV or Parquet log files (.gz too)")
    parser.add_argument("--config", help="flywheel config YAML (default: $FLYWHEEL_CONFIG, else the project's)")
    parser.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="when the file name does not say")
    parser.add_argument("--shape", choices=["flywheel", "openai_chat", "langfuse", "otel_genai"],
                        help="what a line is (default: ingest.shape in the config); the mapping is ingest.fields / "
                             "ingest.actions / ingest.task_type_rules (docs: README, 'Your own logs')")
    parser.add_argument("--source", help="the name of the file in the raw layer (one file only; default: its absolute path)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.source and len(args.paths) > 1:
        parser.error("--source names one file; give one FILE")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        if args.shape:
            config = config.with_overrides({"ingest.shape": args.shape})
        if config.source.table:
            raise ConfigError(f"source.table is {config.source.table!r}: the cycles read that table in place, not "
                              "production_logs, so files ingested here would never be read; empty source.table to ingest")  # fmt: skip
        wh = open_warehouse(config)
        wh.ensure_schema()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    redact = functools.partial(redact_row_for_quarantine, config=config)
    total, failed = IngestCounts(), 0
    for path in args.paths:
        try:
            counts = ingest_file(wh, config, path, redact, fmt=args.format, source=args.source,
                                 progress=False if args.no_progress else None)  # fmt: skip
        except IngestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: {counts.summary()}")
        total.add(counts)
    if len(args.paths) > 1:
        print(f"all files: {total.summary()}")
    if total.quarantined:
        print("quarantined, by field.rule (the quarantine table's rows with cycle_id 'ingest:<file>' say which lines and why):")
        for reason, n in total.reasons.most_common():
            print(f"  {reason}: {n}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
