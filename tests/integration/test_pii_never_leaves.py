"""Planted PII through a whole weekly cycle: no value leaves the raw log and the quarantine.

A week of the demo's simulated traffic is served, then 10 values of each of the 14 kinds of
`tests/helpers/pii_values.py` (e-mail, phone, cards, IBAN, IP, SSN dashed and bare, API keys,
private keys, connection strings, passport numbers, dates of birth, person names, postal
addresses) are written into as many of its rows, one sentence each, in the field the corpus
names (prompt, response, correction or context). One weekly cycle then runs in process, with
the simulated reviewers and training: extract, validation, filters, the review sample, the
dataset, the training-set gate, a LoRA adapter, evaluation and the record.

Afterwards every place the cycle writes is searched for every planted value in any written form
(`pii_values.leaked`): each warehouse table but the raw log (``production_logs``) and the
quarantine, every file under the flywheel's home (datasets, review items and exports, the
adapter folder with its probe prompts, reports, Data Docs; Parquet read as rows) but the
cycle's working copies of its window before the PII rule (`RAW_FILES`), and every log record
the run emitted. The raw log and those copies still hold every value: they were there to find.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from flywheel.config import load_config
from flywheel.cycle.inprocess import run_cycle
from flywheel.model import registry
from flywheel.runconfig import build_run_config
from flywheel.sim.demo import demo_config
from flywheel.sim.product import FIRST_WEEK, serve_week
from flywheel.sim.reviewers import run_simulated_reviewers
from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model
from flywheel.tables import TABLES, rows_to_table
from flywheel.warehouse import warehouse_from_config
from tests.helpers.pii_values import Planted, leaked, planted

pytestmark = pytest.mark.slow

# Tables that may hold a value as logged: the raw log itself and the quarantine (whose text
# fields are redacted too, but whose job is to show operators the row).
RAW = {"production_logs", "quarantine"}
# A cycle's working copies of its window before the PII rule (the extract snapshot, the rows
# that passed validation, the lines it could not read): the raw log's rows, which the filter
# stage reads. Everything the cycle writes after the filters must be free of PII.
RAW_FILES = {"extract.parquet", "valid.parquet", "unreadable.json"}


def _plant(wh, window_start, window_end, values: list[Planted]) -> int:
    rows = wh.query(
        "SELECT * FROM production_logs WHERE timestamp >= $start AND timestamp < $end ORDER BY request_id",
        {"start": window_start, "end": window_end},
    ).to_pylist()
    # Rows the action and score rules keep, so that the values travel the whole way to the dataset.
    corrected = [r for r in rows if r["user_action"] == "corrected"]
    others = [r for r in rows if r["user_action"] in ("accepted", "copied") and (r["quality_score"] or 0) >= 0.8]
    changed = []
    for p in values:
        pool = corrected if p.field == "correction" else others
        row = pool.pop()
        row[p.field] = f"{row.get(p.field) or ''} {p.text}".strip()
        changed.append(row)
    return wh.merge("production_logs", rows_to_table("production_logs", changed))


def _strings(value: Any) -> list[str]:
    """Every string in a value, as written (a JSON dump would escape a private key's newlines)."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return [] if value is None else [str(value)]


def _texts_of_file(path: Path) -> str:
    if path.suffix == ".parquet":
        return "\n".join(_strings(pq.read_table(path).to_pylist()))
    if path.suffix in {".safetensors", ".bin", ".pt", ".duckdb", ".wal", ".png"}:
        return ""
    text = path.read_bytes().decode("utf-8", errors="ignore")
    if path.suffix in {".json", ".jsonl"}:
        try:
            return "\n".join(_strings([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)))
        except ValueError:
            pass
    return text


def test_no_planted_value_leaves_the_raw_log_and_the_quarantine(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    config = load_config(demo_config(tmp_path)).model_copy(update={"home": tmp_path})
    config = config.with_overrides({"experiment.enabled": False, "simulate.seed": 3})
    build_tiny_model(config)
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
    weekly = build_run_config(config).config
    lag_weeks = (weekly.extract.lag_days + weekly.extract.window_days) // 7
    truth: dict[str, str] = {}
    serve_week(config, wh, FIRST_WEEK, truth=truth)
    values = planted(10)
    assert _plant(wh, FIRST_WEEK, FIRST_WEEK + timedelta(days=7), values) == len(values)

    monday = FIRST_WEEK + timedelta(weeks=lag_weeks)
    out = run_cycle("flywheel_weekly", monday, config, wh, write_report=True,
                    review_fn=lambda _c: run_simulated_reviewers(wh, truth, reviewers=("r1", "r2"), reviewers_per_item=2))  # fmt: skip
    assert "skipped" not in out, out.get("skipped")
    assert out["train_challenger"], "the cycle trained no adapter"
    assert out["build_dataset"]["n_train"] > 0

    def leaks_in(text: str) -> list[str]:
        return sorted({f"{p.kind}: {p.value}" for p in values if leaked(p.value, text)})

    found: dict[str, list[str]] = {}
    for table in sorted(set(TABLES) - RAW):
        rows = wh.query(f"SELECT * FROM {table}").to_pylist()
        if hit := leaks_in("\n".join(_strings(rows))):
            found[f"table {table}"] = hit
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in RAW_FILES]
    assert any("train" in p.name for p in files) and any(p.name == "adapter_config.json" for p in files)
    for path in files:
        if hit := leaks_in(_texts_of_file(path)):
            found[str(path.relative_to(tmp_path))] = hit
    if hit := leaks_in("\n".join(r.getMessage() for r in caplog.records)):
        found["log records"] = hit
    assert not found, json.dumps({k: f"{len(v)}: {v[:3]}" for k, v in found.items()}, indent=1)
    # The values were there to find (the raw log holds them), and many travelled to the training
    # set, redacted: the dataset holds their placeholders.
    raw = "\n".join(_strings(wh.query("SELECT prompt, response, correction, context FROM production_logs").to_pylist()))
    assert leaks_in(raw) == sorted({f"{p.kind}: {p.value}" for p in values})
    dataset = "\n".join(_texts_of_file(p) for p in Path(out["build_dataset"]["path"]).parent.rglob("*") if p.is_file())
    placeholders = {e: dataset.count(f"<{e}>") for e in config.filters.pii_entities}
    print(f"placeholders in the training set: {placeholders}")
    assert sum(placeholders.values()) >= len(values) // 4 and placeholders["PERSON"] > 0, placeholders
