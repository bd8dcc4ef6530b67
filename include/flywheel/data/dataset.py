"""Kept candidates → a Hugging Face `datasets` dataset in chat format.

A corrected interaction trains on the user's correction (what the model should have said), not
on the rejected response. The split is deterministic by request id, so a rerun of the same
cycle builds the same dataset with the same content hash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.records import TrainingCandidate
from flywheel.text import count_tokens

# Hugging Face datasets is imported inside the functions that use it: it takes seconds to
# import, and DAG parsing and the light stages import this module without needing it.


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


def _bucket(request_id: str) -> float:
    return int(hashlib.sha256(request_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def stratified_split(rows: Sequence[dict[str, Any]], val_fraction: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation): each task type gives ``val_fraction`` of its rows (rounded, and
    never its last one) to validation, chosen by a hash of the request id, so the split is the
    same on every rerun and every task type is measured."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_type.setdefault(r["task_type"], []).append(r)
    val_ids: set[str] = set()
    for items in by_type.values():
        n_val = min(round(val_fraction * len(items)), len(items) - 1)
        val_ids.update(r["request_id"] for r in sorted(items, key=lambda r: (_bucket(r["request_id"]), r["request_id"]))[:n_val])
    return [r for r in rows if r["request_id"] not in val_ids], [r for r in rows if r["request_id"] in val_ids]


def difficulty(row: dict[str, Any]) -> int:
    """Curriculum order: shorter exchanges first (a proxy for easy, from the text alone)."""
    return sum(count_tokens(m["content"]) for m in row["messages"])


def build_chat_dataset(
    candidates: Sequence[TrainingCandidate],
    path: Path,
    *,
    val_fraction: float,
    gold: Mapping[str, str | None] | None = None,
    gold_weight: float = 1.0,
    curriculum: bool = False,
    carried: tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]]] = ((), ()),
) -> DatasetInfo:
    """Write a DatasetDict (train / validation) of ``messages`` rows to ``path``; idempotent.

    ``gold`` maps reviewed request ids to the reviewer's edited answer (None: the answer stands);
    gold rows train with ``weight = gold_weight``, every other row with weight 1. With
    ``curriculum``, the train split is ordered easy to hard (and `train_lora` keeps that order).
    ``carried``: (train, validation) rows of earlier datasets, as they were built, that join the
    same split again (a request id of ``candidates`` wins over a carried copy).
    """
    gold = gold or {}
    ordered = sorted(candidates, key=lambda c: c.request_id)
    rows: list[dict[str, Any]] = []
    for c in ordered:
        messages = to_messages(c)
        edited = gold.get(c.request_id)
        if edited:
            messages[-1] = {"role": "assistant", "content": edited}
        rows.append(
            {
                "request_id": c.request_id,
                "task_type": c.task_type,
                "from_correction": c.user_action == "corrected",
                "gold": c.request_id in gold,
                "weight": float(gold_weight) if c.request_id in gold else 1.0,
                "messages": messages,
            }
        )
    train, val = stratified_split(rows, val_fraction)
    have = {r["request_id"] for r in rows}
    for split, extra in zip((train, val), carried, strict=True):
        for r in extra:
            if r["request_id"] not in have:
                have.add(r["request_id"])
                split.append(dict(r))
    if curriculum:
        train.sort(key=lambda r: (difficulty(r), r["request_id"]))
    return _save(path, train, val, curriculum=curriculum)


def subset_chat_dataset(source: Path, path: Path, *, drop: Collection[str]) -> DatasetInfo:
    """The dataset at ``source`` without the rows whose request id is in ``drop``, written to
    ``path`` with the same splits, order and weights (the twin of `flywheel.cycle`'s new-data
    check trains on it); idempotent."""
    data = load_chat_dataset(source)
    drop = set(drop)
    train = [r for r in data["train"] if r["request_id"] not in drop]
    val = [r for r in data["validation"] if r["request_id"] not in drop]
    manifest = json.loads((source / "flywheel_manifest.json").read_text())
    return _save(path, train, val, curriculum=bool(manifest.get("curriculum")))


def _save(path: Path, train: list[dict[str, Any]], val: list[dict[str, Any]], *, curriculum: bool) -> DatasetInfo:
    """Write the splits with their manifest next to them; the content hash covers every row (in
    request id order), so it names the data, not the split or the order."""
    from datasets import Dataset, DatasetDict

    rows = sorted([*train, *val], key=lambda r: r["request_id"])
    digest = hashlib.sha256()
    for r in rows:
        digest.update(json.dumps([r["request_id"], r["messages"], r["weight"]], sort_keys=True).encode())
    digest.update(f"curriculum={curriculum}".encode())
    content_hash = digest.hexdigest()

    # An empty split is not written (`datasets` cannot load a split saved with no rows);
    # `load_chat_dataset` gives it back empty, with the train split's features.
    splits = {"train": Dataset.from_list(train)}
    if val:
        splits["validation"] = Dataset.from_list(val)
    dd = DatasetDict(splits)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    info = DatasetInfo(path, len(train), len(val), sum(r["from_correction"] for r in rows), content_hash)
    (tmp / "flywheel_manifest.json").write_text(
        json.dumps(
            {**info.__dict__, "path": str(path), "n_gold": sum(r["gold"] for r in rows), "curriculum": curriculum},
            indent=2, default=str,
        )  # fmt: skip
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
