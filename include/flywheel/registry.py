"""Model versions with lineage, and the champion pointer.

The champion is not a mutable flag: it is the outcome of the latest promotion decision before a
logical date (`promotions` table). So the champion a cycle starts from is a pure function of the
history, and a rerun or backfill of a date sees the same champion it saw the first time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flywheel.errors import RegistryError
from flywheel.schema import rows_to_table
from flywheel.warehouse import Warehouse

# The bootstrap decision sits before any real logical date.
BOOTSTRAP_DATE = datetime(1970, 1, 1, tzinfo=UTC)
BOOTSTRAP_CYCLE = "bootstrap"


@dataclass(frozen=True)
class ModelVersion:
    version: str
    base_model: str
    adapter_path: str | None
    parent_version: str | None = None
    cycle_id: str | None = None
    dataset_id: str | None = None
    dataset_hash: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    train_loss: float | None = None
    created_at: datetime | None = None


def base_version_name(base_model: str) -> str:
    return "base:" + base_model.rstrip("/").split("/")[-1]


def register_model(wh: Warehouse, mv: ModelVersion) -> None:
    row = {**mv.__dict__, "created_at": mv.created_at or datetime.now(UTC)}
    wh.merge("models", rows_to_table("models", [row]))


def get_model(wh: Warehouse, version: str) -> ModelVersion:
    rows = wh.select("models", {"version": version}).to_pylist()
    if not rows:
        raise RegistryError(f"unknown model version {version!r}")
    return ModelVersion(**rows[0])


def ensure_bootstrap_champion(wh: Warehouse, base_model: str) -> str:
    """Register the base model as the first champion, unless a champion already exists."""
    version = base_version_name(base_model)
    if wh.count("promotions") == 0:
        register_model(wh, ModelVersion(version=version, base_model=base_model, adapter_path=None, cycle_id=BOOTSTRAP_CYCLE))
        record_decision(
            wh,
            cycle_id=BOOTSTRAP_CYCLE,
            logical_date=BOOTSTRAP_DATE,
            champion_before=None,
            challenger=version,
            promoted=True,
            reason="cold start: the base model is the first champion",
        )
        return version
    return current_champion(wh)


def champion_as_of(wh: Warehouse, logical_date: datetime) -> str:
    rows = wh.named_query("champion_as_of", {"as_of": logical_date}).to_pylist()
    if not rows:
        raise RegistryError(f"no champion before {logical_date.isoformat()}: run the bootstrap first")
    return rows[0]["champion_after"]


def current_champion(wh: Warehouse) -> str:
    return champion_as_of(wh, datetime.max.replace(tzinfo=UTC))


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str


def decide_promotion(champion_accuracy: float, challenger_accuracy: float, *, min_improvement: float) -> PromotionDecision:
    """Promote only a challenger that beats the champion by more than ``min_improvement``."""
    delta = challenger_accuracy - champion_accuracy
    # Accuracies are ratios of counts, so their float difference can land a hair above a margin
    # it only equals (192/240 - 168/240 > 0.1); an improvement must clear the margin for real.
    if delta > min_improvement and not math.isclose(delta, min_improvement, rel_tol=1e-9, abs_tol=1e-12):
        return PromotionDecision(True, f"challenger {challenger_accuracy:.4f} beats champion {champion_accuracy:.4f} by {delta:+.4f} (> {min_improvement})")
    return PromotionDecision(False, f"challenger {challenger_accuracy:.4f} vs champion {champion_accuracy:.4f}: {delta:+.4f} is not > {min_improvement}")


def record_decision(
    wh: Warehouse,
    *,
    cycle_id: str,
    logical_date: datetime,
    champion_before: str | None,
    challenger: str,
    promoted: bool,
    reason: str,
) -> dict[str, Any]:
    row = {
        "cycle_id": cycle_id,
        "logical_date": logical_date,
        "champion_before": champion_before,
        "challenger": challenger,
        "champion_after": challenger if promoted else champion_before,
        "promoted": promoted,
        "reason": reason,
        "decided_at": datetime.now(UTC),
    }
    wh.replace_partition("promotions", {"cycle_id": cycle_id}, rows_to_table("promotions", [row]))
    return row
