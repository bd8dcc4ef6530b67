"""One flywheel cycle as a sequence of stages, each a plain function of (cycle, warehouse).

Airflow operators call these; so do the unit tests, without Airflow. Every stage is idempotent
for its logical date: its inputs and outputs live at paths derived from the cycle id, and its
warehouse writes replace the cycle's partition. A stage can therefore be cleared and rerun on
its own from the Airflow UI, and a backfill writes no duplicates.

One module per stage (`extract`, `data_gates`, `validate`, `filtering`, `review`, `dataset`,
`train`, `evaluate`, `promote`, `record`, `report`); `spec` holds the cycle itself and the one
clock every stage stamps its rows with. `STAGES` lists the stages in the order the DAGs chain
them (`flywheel_airflow.cycle_dag.cycle_chain`); `flywheel.cycle.inprocess` runs the same
order from `BEFORE_REVIEW` and `MODEL_STAGES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flywheel.cycle import (
    data_gates,
    dataset,
    evaluate,
    extract,
    filter_shards,
    filtering,
    promote,
    record,
    report,
    review,
    train,
    validate,
)
from flywheel.cycle.spec import CycleSpec, InsufficientDataError, make_cycle
from flywheel.warehouse import Warehouse

__all__ = ["BEFORE_REVIEW", "MODEL_STAGES", "STAGES", "CycleSpec", "InsufficientDataError", "Stage", "make_cycle"]

Stage = Callable[[CycleSpec, Warehouse], dict[str, Any]]

# Between extract and the review wait (a sensor in the DAG), in order.
BEFORE_REVIEW: tuple[Stage, ...] = (
    data_gates.gate_raw_window,
    validate.validate_rows,
    filtering.filter_candidates,
    review.sample_for_review,
)
# From the training-set gate to promotion, in order: the stages a skipped training skips.
MODEL_STAGES: tuple[Stage, ...] = (
    data_gates.gate_training_set,
    train.train_challenger,
    train.train_twin,
    evaluate.evaluate_golden_set,
    promote.promote_if_better,
)

_ALL_STAGES: tuple[Callable[..., dict[str, Any]], ...] = (
    extract.extract_window,
    extract.extract_bootstrap,  # in place of extract_window at cold start
    *BEFORE_REVIEW,
    # in place of filter_candidates with scale.filter_shards > 1: plan, shards (mapped), merge
    filter_shards.plan_filter_shards,
    filter_shards.filter_shard,
    filter_shards.merge_filter_shards,
    review.calibrate_filters,
    dataset.build_dataset,
    *MODEL_STAGES,
    record.record_cycle,
    report.write_report,
)
STAGES: dict[str, Callable[..., dict[str, Any]]] = {stage.__name__: stage for stage in _ALL_STAGES}
