"""Model versions with lineage, and the champion pointer.

The champion is not a mutable flag: it is the outcome of the latest promotion decision before a
logical date (`promotions` table). So the champion a cycle starts from is a pure function of the
history, and a rerun or backfill of a date sees the same champion it saw the first time.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel.errors import RegistryError
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse

# torch, transformers and peft (for the merged export) are imported inside the functions that use them: they take seconds to
# import, and DAG parsing and the light stages import this module without needing them.

if TYPE_CHECKING:
    from flywheel.artefacts import ArtefactStore

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
    config_json: str | None = None
    metrics_json: str | None = None


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


# --- Statuses, lineage and export ------------------------------------------------------------

STATUSES = ("candidate", "champion", "retired", "rolled_back")


def model_statuses(wh: Warehouse) -> dict[str, str]:
    """Every version's status, derived from the promotion history (the single source of truth,
    so a status can never disagree with the champion pointer):

    - champion: the outcome of the latest decision;
    - retired: was champion once, and a later decision replaced it;
    - rolled_back: a decision with reason starting "rollback" moved the pointer off it;
    - candidate: registered, never champion.
    """
    versions = [r["version"] for r in wh.query("SELECT version FROM models ORDER BY version").to_pylist()]
    history = wh.query(
        "SELECT champion_before, champion_after, reason FROM promotions ORDER BY logical_date, decided_at"
    ).to_pylist()
    status = dict.fromkeys(versions, "candidate")
    for h in history:
        before, after = h["champion_before"], h["champion_after"]
        if before and before != after:
            status[before] = "rolled_back" if (h["reason"] or "").lower().startswith("rollback") else "retired"
        if after:
            status[after] = "champion"
    if history:
        current = history[-1]["champion_after"]
        for v, st in status.items():
            if st == "champion" and v != current:
                status[v] = "retired"
    return status


@dataclass(frozen=True)
class TrainingData:
    """One dataset in a version's lineage: the version it trained and the data it was."""

    version: str
    cycle_id: str | None
    dataset_id: str | None
    dataset_hash: str | None
    window_start: datetime | None
    window_end: datetime | None
    n_examples: int
    request_ids: list[str]


def training_data(wh: Warehouse, version: str) -> list[TrainingData]:
    """Which data trained ``version``: its own dataset and, since each challenger continues from
    its parent's adapter, every ancestor's, newest first, down to the base model. Read from the
    warehouse alone (`models`, `datasets`, `training_fingerprints`)."""
    out: list[TrainingData] = []
    seen: set[str] = set()
    current: str | None = version
    while current and current not in seen:
        seen.add(current)
        mv = get_model(wh, current)
        if mv.dataset_id:
            ids = wh.query(
                "SELECT request_id FROM training_fingerprints WHERE cycle_id = $c ORDER BY request_id", {"c": mv.cycle_id}
            ).column("request_id").to_pylist()
            out.append(TrainingData(mv.version, mv.cycle_id, mv.dataset_id, mv.dataset_hash, mv.window_start,
                                    mv.window_end, len(ids), ids))  # fmt: skip
        current = mv.parent_version
    return out


def export_merged(wh: Warehouse, version: str, out_dir: Path, *, store: ArtefactStore | None = None) -> Path:
    """The version as one plain model (adapter merged into the base weights) for serving
    engines without LoRA support; written whole, then moved into place. With a ``store``, a
    base model or adapter kept in a bucket is fetched first."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mv = get_model(wh, version)
    if store is not None:
        mv = replace(mv, base_model=str(store.local(mv.base_model)), adapter_path=store.local(mv.adapter_path))
    model: Any = AutoModelForCausalLM.from_pretrained(mv.base_model, dtype=torch.float32)
    if mv.adapter_path:
        model = PeftModel.from_pretrained(model, mv.adapter_path).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(mv.adapter_path or mv.base_model).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return out_dir
