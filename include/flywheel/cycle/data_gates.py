"""The data gates: Great Expectations suites on the raw window and on the built training set.

A failed gate fails the task (`flywheel.gates.enforce`); its result and Data Docs page are kept
either way, and a failed raw gate first quarantines the window's bad rows with their reasons. (The offline gate, on the model, is `promote`'s.)"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median
from typing import Any

import pyarrow.parquet as pq

from flywheel import gates
from flywheel.artefacts import ArtefactStore
from flywheel.cycle import spec
from flywheel.cycle.filtering import golden_inputs
from flywheel.cycle.spec import CycleSpec
from flywheel.cycle.validate import validate_rows
from flywheel.data.dataset import load_chat_dataset
from flywheel.filters import golden_index
from flywheel.filters.pii import default_scanner
from flywheel.ops.links import gate_docs_url, quarantine_url
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse


def gate_raw_window(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Great Expectations on the raw window: schema, nulls, enums, ranges, unique ids, volume."""
    if not cycle.config.gates.enabled:
        return {"gate": "raw_window", "skipped": "gates.enabled is false"}
    table = pq.read_table(cycle.file("extract.parquet"))
    recent = wh.query(
        "SELECT rows_in_window FROM cycles WHERE dag_id = $dag_id AND logical_date < $before "
        "ORDER BY logical_date DESC LIMIT $n",
        {"dag_id": cycle.dag_id, "before": cycle.logical_date, "n": cycle.config.gates.volume_history_cycles},
    ).column("rows_in_window").to_pylist()
    volume_median = float(median(recent)) if recent else None
    expectations = gates.raw_window_expectations(cycle.config, volume_median=volume_median)
    return _gate(cycle, wh, "raw_window", gates.raw_window_profile(table), expectations,
                 before_failing=lambda: _quarantine_the_window(cycle, wh))  # fmt: skip


def _quarantine_the_window(cycle: CycleSpec, wh: Warehouse) -> str:
    """A failing raw gate still says which rows are bad and why: validation writes the window's
    quarantine rows before the task fails, and the failure (and its alert) links to them."""
    out = validate_rows(cycle, wh)
    reasons = ", ".join(f"{k}: {n}" for k, n in sorted(out["quarantine_reasons"].items(), key=lambda kv: -kv[1]))
    return (f"Quarantine: {out['quarantined']} rows of the window ({reasons or 'none'}), each with its reason: "
            f"{quarantine_url(cycle.config, cycle.cycle_id)}")  # fmt: skip


def gate_training_set(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Great Expectations on the built training set: no PII, no golden overlap, balance, length."""
    if not cycle.config.gates.enabled:
        return {"gate": "training_set", "skipped": "gates.enabled is false"}
    f = cycle.config.filters
    data = load_chat_dataset(ArtefactStore(cycle.config).fetch(cycle.dataset_dir))
    rows = [*data["train"], *data["validation"]]
    golden = golden_index(f, golden_inputs(cycle.config))
    frame = gates.training_set_profile(
        rows, pii_scanner=default_scanner(f.pii_entities, f.pii_min_score), golden_index=golden, hasher=golden.hasher
    )
    return _gate(cycle, wh, "training_set", frame, gates.training_set_expectations(cycle.config))


def _gate(cycle: CycleSpec, wh: Warehouse, gate: str, frame: Any, expectations: list[Any], *,
          before_failing: Callable[[], str] | None = None) -> dict[str, Any]:  # fmt: skip
    result = gates.run_gate(
        gate, frame, expectations, docs_dir=cycle.config.artefacts_root / "data_docs", run_name=f"{cycle.cycle_id}-{gate}"
    )
    # A bucket root: the pages are shared; other workers' runs are not here, so nothing is pruned.
    ArtefactStore(cycle.config).publish(cycle.config.artefacts_root / "data_docs", prune=False)
    wh.replace_partition(
        "gate_results",
        {"cycle_id": cycle.cycle_id, "gate": gate},
        rows_to_table("gate_results", [gates.result_row(result, cycle_id=cycle.cycle_id, evaluated_at=spec.now())]),
    )
    note = ""
    if not result.success:
        note = f"Data Docs in the Airflow UI: {gate_docs_url(cycle.config, cycle.cycle_id, gate)}"
        note += f"\n{before_failing()}" if before_failing is not None else ""
    gates.enforce(result, cycle_id=cycle.cycle_id, note=note)  # raises GateError: the task fails, loudly
    return {"gate": gate, "success": True, "expectations": len(result.outcomes), "docs_url": result.docs_url}
