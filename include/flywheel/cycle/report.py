"""Report: the cycle's Markdown report and plots, published with the cycle's other artefacts."""

from __future__ import annotations

from typing import Any

from flywheel.artefacts import ArtefactStore
from flywheel.cycle.spec import CycleSpec
from flywheel.ops.report import write_cycle_report
from flywheel.warehouse import Warehouse


def write_report(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """The cycle's report (Markdown + PNG plots, the learning curve so far among them) in
    ``reports/<cycle_id>/``. Monthly cycles (`extract.include_gold`) add the broader
    evaluation: every task type with intervals."""
    out = cycle.config.artefacts_root / "reports" / cycle.cycle_id
    path = write_cycle_report(wh, cycle.cycle_id, out, broad=cycle.config.extract.include_gold, phases=cycle.config.phases)
    store = ArtefactStore(cycle.config)
    shared = {"report_uri": store.publish(out) + "/" + path.name} if store.remote else {}
    return {"report": str(path), "plots": sorted(p.name for p in out.glob("*.png"))} | shared
