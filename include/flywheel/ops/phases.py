"""The method's phases: cold start, growth, maturity.

A cycle is tagged with the phase it ends in, measured from the champion's golden-set accuracy
and the examples collected over all cycles so far (`phases.*` thresholds). Both must clear a
phase's bar: a model that scores well on little data is still in cold start, because its score
rests on too few examples to trust. The next cycle runs under its phase's capture policy
(`phases.policy`), read from the cycles before its logical date only, so a rerun or a backfill
runs under the same policy.
"""

from __future__ import annotations

from datetime import datetime

from flywheel.config import PHASES, FlywheelConfig, PhasesConfig
from flywheel.warehouse import Warehouse


def classify(champion_accuracy: float | None, examples_so_far: int, cfg: PhasesConfig) -> str:
    """The phase for a champion accuracy and a cumulative example count."""
    acc = champion_accuracy if champion_accuracy is not None else 0.0
    if acc >= cfg.maturity_min_accuracy and examples_so_far >= cfg.maturity_min_examples:
        return "maturity"
    if acc >= cfg.growth_min_accuracy and examples_so_far >= cfg.growth_min_examples:
        return "growth"
    return "cold_start"


def phase_before(wh: Warehouse, logical_date: datetime) -> str:
    """The phase the latest cycle before ``logical_date`` ended in (cold start when none has)."""
    rows = wh.query(
        "SELECT phase FROM cycles WHERE logical_date < $t AND phase IS NOT NULL "
        "ORDER BY logical_date DESC, finished_at DESC LIMIT 1",
        {"t": logical_date},
    ).to_pylist()
    return rows[0]["phase"] if rows else PHASES[0]


def examples_collected(wh: Warehouse, logical_date: datetime) -> int:
    """Distinct examples any training set held up to and including ``logical_date``: a monthly
    consolidation that retrains on the weeks' examples does not count them twice."""
    rows = wh.query(
        "SELECT COUNT(DISTINCT request_id) AS n FROM training_fingerprints WHERE logical_date <= $t", {"t": logical_date}
    ).to_pylist()
    return int(rows[0]["n"])


def apply_policy(config: FlywheelConfig, phase: str) -> FlywheelConfig:
    """The config a cycle runs under in ``phase``: its capture policy's overrides applied."""
    return config.with_overrides(config.phases.policy.get(phase) or {})
