"""Kept candidates → a Hugging Face `datasets` dataset in chat format.

A corrected interaction trains on the user's correction (what the model should have said), not
on the rejected response. The split is deterministic by request id, so a rerun of the same
cycle builds the same dataset with the same content hash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.schema import TrainingCandidate


def user_message(prompt: str, context: str | None) -> str:
    """The model's user turn: retrieved context, when any, ahead of the user's prompt."""
    if context:
        return f"Context: {context}\n\n{prompt}"
    return prompt


def to_messages(candidate: TrainingCandidate) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": user_message(candidate.prompt, candidate.context)},
        {"role": "assistant", "content": candidate.target},
    ]


@dataclass(frozen=True)
class DatasetInfo:
    path: Path
    n_train: int
    n_val: int
    n_corrections: int
    content_hash: str


def _in_validation(request_id: str, val_fraction: float) -> bool:
    bucket = int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < val_fraction


def build_chat_dataset(candidates: Sequence[TrainingCandidate], path: Path, *, val_fraction: float) -> DatasetInfo:
    """Write a DatasetDict (train / validation) of ``messages`` rows to ``path``; idempotent."""
    from datasets import Dataset, DatasetDict

    ordered = sorted(candidates, key=lambda c: c.request_id)
    rows: list[dict[str, Any]] = [
        {
            "request_id": c.request_id,
            "task_type": c.task_type,
            "from_correction": c.user_action == "corrected",
            "messages": to_messages(c),
        }
        for c in ordered
    ]
    val = [r for r in rows if _in_validation(r["request_id"], val_fraction)]
    train = [r for r in rows if not _in_validation(r["request_id"], val_fraction)]
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r["request_id"], r["messages"]], sort_keys=True).encode())
    content_hash = digest.hexdigest()

    features = None
    # An empty split is not written (`datasets` cannot load a split saved with no rows);
    # `load_chat_dataset` gives it back empty, with the train split's features.
    splits = {"train": Dataset.from_list(train, features=features)}
    if val:
        splits["validation"] = Dataset.from_list(val, features=features)
    dd = DatasetDict(splits)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    info = DatasetInfo(path, len(train), len(val), sum(r["from_correction"] for r in rows), content_hash)
    (tmp / "flywheel_manifest.json").write_text(
        json.dumps({**info.__dict__, "path": str(path)}, indent=2, default=str)
    )
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return info


def load_chat_dataset(path: Path):  # -> DatasetDict
    from datasets import load_from_disk

    data = load_from_disk(str(path))
    if "validation" not in data:
        data["validation"] = data["train"].select([])
    return data
