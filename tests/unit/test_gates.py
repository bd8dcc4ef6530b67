"""Great Expectations gates run for real: they pass on good data, fail closed on bad data with
the failed expectations named, record the result, and write Data Docs without any text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from flywheel.config import FlywheelConfig
from flywheel.cycle import make_cycle
from flywheel.cycle.data_gates import gate_raw_window, gate_training_set
from flywheel.cycle.dataset import build_dataset
from flywheel.cycle.extract import extract_window
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.validate import validate_rows
from flywheel.errors import GateError
from flywheel.sim import traffic
from flywheel.sim.traffic import simulate_traffic
from flywheel.tables import PRODUCTION_LOGS, rows_to_table
from flywheel.warehouse.duckdb import DuckDBWarehouse
from tests.helpers.simulated_product import SIMULATED_PRODUCT

END = datetime(2026, 3, 2, tzinfo=UTC)
SECRET = "dana.smith@example.com"


@pytest.fixture
def setup(tmp_path, answer_fns):
    config = FlywheelConfig(home=tmp_path).with_overrides({**SIMULATED_PRODUCT, "training.min_examples": 5})
    cycle = make_cycle("flywheel_weekly", data_interval_end=END, logical_date=END, config=config)
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", lock_timeout_s=5)
    wh.ensure_schema()

    def load(n: int = 200, bad_share: float = 0.0, seed: int = 1) -> pa.Table:
        logs = simulate_traffic(
            cycle.window.start, answer_fns["half"], model_version="base:x", n_requests=n, seed=seed,
            malformed_rate=0.0, adversarial_rate=0.0,
        ).to_pylist()
        for i in range(int(n * bad_share)):
            logs[i]["user_action"] = "liked"
        # PII in a text column: it must not show up in the Data Docs
        logs[-1]["prompt"] = f"{logs[-1]['prompt']} write to {SECRET}"
        table = pa.Table.from_pylist(logs, schema=PRODUCTION_LOGS)
        wh.merge("production_logs", table)
        return table

    return config, cycle, wh, load


def _docs_text(config) -> str:
    root = config.artefacts_root / "data_docs"
    return "\n".join(p.read_text(errors="ignore") for p in root.rglob("*.html"))


def test_raw_gate_passes_on_a_normal_window(setup):
    config, cycle, wh, load = setup
    load()
    extract_window(cycle, wh)
    out = gate_raw_window(cycle, wh)
    assert out["success"] and out["expectations"] >= 10
    (row,) = wh.select("gate_results", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert row["gate"] == "raw_window" and row["success"] and row["n_failed"] == 0
    assert SECRET not in _docs_text(config)


def test_raw_gate_fails_closed_naming_the_expectation(setup):
    config, cycle, wh, load = setup
    load(bad_share=0.2)  # 20% of rows with an unknown action: a broken source, not noise
    extract_window(cycle, wh)
    with pytest.raises(GateError) as err:
        gate_raw_window(cycle, wh)
    message = str(err.value)
    assert "gate 'raw_window' failed" in message
    assert "expect_column_values_to_be_in_set(user_action)" in message
    assert "40 unexpected (20.0%)" in message and "allowed 5.0%" in message
    docs = message.split("Data Docs: ")[1].splitlines()[0].strip()
    assert docs.startswith("file://") and docs.endswith(".html")
    # the bad rows are quarantined, each with its reason, before the task fails; the failure links to them
    bad = wh.select("quarantine", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert len(bad) == 40 and {(q["field"], q["rule"]) for q in bad} == {("user_action", "allowed_values")}
    assert "Quarantine: 40 rows of the window (user_action.allowed_values: 40)" in message
    assert f"/flywheel/quarantine?cycle_id={cycle.cycle_id}" in message
    assert (config.artefacts_root / "data_docs").is_dir()
    (row,) = wh.select("gate_results", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert row["success"] is False and row["n_failed"] == 1
    assert json.loads(row["failed_json"])[0]["expectation"] == "expect_column_values_to_be_in_set(user_action)"
    assert SECRET not in _docs_text(config) and SECRET not in message


def test_raw_gate_checks_volume_against_recent_cycles(setup):
    config, cycle, wh, load = setup
    load(n=60)
    for k in range(1, 5):  # four earlier cycles of ~1000 rows each
        wh.merge(
            "cycles",
            rows_to_table("cycles", [{"cycle_id": f"c{k}", "dag_id": cycle.dag_id,
                                      "logical_date": END - timedelta(weeks=k), "rows_in_window": 1000 + k}]),
        )  # fmt: skip
    extract_window(cycle, wh)
    with pytest.raises(GateError, match=r"expect_table_row_count_to_be_between: observed 60"):
        gate_raw_window(cycle, wh)


def test_raw_gate_fails_on_a_missing_column(setup):
    import pyarrow.parquet as pq

    config, cycle, wh, load = setup
    load()
    extract_window(cycle, wh)
    snapshot = cycle.file("extract.parquet")
    pq.write_table(pq.read_table(snapshot).drop_columns(["quality_score"]), snapshot)
    with pytest.raises(GateError, match="expect_table_columns_to_match_set"):
        gate_raw_window(cycle, wh)


def test_disabled_gates_skip(setup):
    config, cycle, wh, load = setup
    cycle = make_cycle(
        "flywheel_weekly", data_interval_end=END, logical_date=END, config=config.with_overrides({"gates.enabled": False})
    )
    assert "skipped" in gate_raw_window(cycle, wh)


def _built(setup, **overrides):
    config, cycle, wh, load = setup
    if overrides:
        cycle = make_cycle("flywheel_weekly", data_interval_end=END, logical_date=END, config=config.with_overrides(overrides))
    load(n=300)
    extract_window(cycle, wh)
    validate_rows(cycle, wh)
    filter_candidates(cycle, wh)
    build_dataset(cycle, wh)
    return cycle, wh


def test_training_gate_passes_on_a_filtered_set(setup):
    cycle, wh = _built(setup)
    out = gate_training_set(cycle, wh)
    assert out["success"] and out["expectations"] == 7


def test_training_gate_catches_pii_and_golden_overlap_that_bypassed_the_filters(setup, make_log_row):
    """If a bug let PII or a golden item through the filters, the gate still stops training."""
    import pyarrow.parquet as pq

    from flywheel.data.dataset import build_chat_dataset
    from flywheel.evaluation.offline import load_golden_set
    from flywheel.records import candidate_from_row

    cycle, wh = _built(setup)
    ev = cycle.config.evaluation
    golden = load_golden_set(cycle.config.artefacts_root, templates=traffic, n=ev.golden_set_size, seed=ev.golden_seed).tasks[0]
    ts = cycle.window.start
    leaked = [
        candidate_from_row(make_log_row("leak-pii", ts, response=f"GARDEN, mail {SECRET}")),
        candidate_from_row(make_log_row("leak-golden", ts, prompt=golden.prompt, context=golden.context, response=golden.answer)),
    ]
    kept = [candidate_from_row(r) for r in pq.read_table(cycle.file("kept.parquet")).to_pylist()]
    build_chat_dataset(kept + leaked, cycle.dataset_dir, val_fraction=0.1)
    with pytest.raises(GateError) as err:
        gate_training_set(cycle, wh)
    message = str(err.value)
    assert "expect_column_values_to_be_between(pii_hits)" in message
    assert "expect_column_values_to_be_between(pii_second_hits)" in message
    assert "expect_column_values_to_be_in_set(golden_overlap)" in message
    assert SECRET not in message and SECRET not in _docs_text(cycle.config)


def test_the_second_detector_catches_what_the_redacting_scanner_misses():
    """A blind spot of the scanner that redacts (here: it finds nothing) is not the second
    detector's: card numbers, IBANs, SSNs, e-mail addresses and credentials fail the gate."""
    from flywheel.gates import training_set_profile

    class Blind:
        def scan(self, text):
            return []

    class NoGolden:
        def check(self, fingerprints, ids, add_unique=False):
            return [None] * len(ids)

    class Hasher:
        def fingerprint(self, texts):
            return texts

    leaks = ["Charge it to 5190-1384-1128-3572.", "Wire it to DE89 3704 0044 0532 0130 00.", "SSN 123-45-6789 on file.",
             "mail dana.w@example.org", "DATABASE_URL=postgresql://app:s3cretpass@db.example.com/prod",
             "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"]  # fmt: skip
    clean = ["GARDEN", "12 + 30 = 42", "pi is 3.14159265358979", "Order 1234567890 shipped."]
    rows = [{"request_id": f"r{i}", "task_type": "t", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": t}]}
            for i, t in enumerate(leaks + clean)]  # fmt: skip
    frame = training_set_profile(rows, pii_scanner=Blind(), golden_index=NoGolden(), hasher=Hasher())
    assert frame["pii_hits"].tolist() == [0] * len(rows)
    assert [n > 0 for n in frame["pii_second_hits"]] == [True] * len(leaks) + [False] * len(clean)


def test_training_gate_checks_class_balance(setup):
    cycle, wh = _built(setup, **{"gates.max_task_type_share": 0.2})
    with pytest.raises(GateError, match=r"expect_column_max_to_be_between\(task_type_share\)"):
        gate_training_set(cycle, wh)
