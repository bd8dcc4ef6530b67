"""Checkpoints of a training run: the work folder a run resumes from, which checkpoints are
whole, and a watcher that hands each new one to a callback (to copy it off the machine).

A run is named by a fingerprint of what it was made from; checkpoints of another run are never
resumed. The Trainer writes ``trainer_state.json`` last, so a checkpoint without a readable one
was cut short (the process killed mid-save) and is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from flywheel.config import TrainingConfig

log = logging.getLogger(__name__)


def run_fingerprint(base_model: str, dataset_path: Path, config: TrainingConfig, parent_adapter: str | None) -> str:
    """What a checkpoint was made from: resuming is only safe from the very same run."""
    manifest = dataset_path / "flywheel_manifest.json"
    data = json.loads(manifest.read_text()).get("content_hash") if manifest.is_file() else str(dataset_path)
    payload = {"base": base_model, "data": data, "config": config.model_dump(), "parent": parent_adapter}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def is_complete(checkpoint: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last: without a readable one, the save was cut."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def prepare_work_dir(work: Path, fingerprint: str) -> str | None:
    """The work folder for this run; returns the last complete checkpoint to resume from.

    A checkpoint whose save was cut short (the process killed mid-save) is removed, so the
    retry resumes from the one before it instead of failing on a half-written one."""
    stamp = work / "run.json"
    try:
        same_run = json.loads(stamp.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        same_run = False
    if not same_run and work.exists():
        log.warning("%s holds checkpoints of another run (data, config or parent changed): starting over", work)
        shutil.rmtree(work, ignore_errors=True)
    checkpoints = work / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": fingerprint}))
    complete = []
    for path in checkpoints.glob("checkpoint-*"):
        if path.is_dir() and path.name.rsplit("-", 1)[-1].isdigit():
            if is_complete(path):
                complete.append(path)
            else:
                log.warning("removing %s: its save was cut short", path)
                shutil.rmtree(path, ignore_errors=True)
    if not complete:
        return None
    return str(max(complete, key=lambda p: int(p.name.rsplit("-", 1)[-1])))


def work_dir(output_dir: Path) -> Path:
    """Where a training keeps its checkpoints until the adapter is in place."""
    return output_dir.with_name(output_dir.name + ".work")


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    """The checkpoints whose save finished, oldest first."""
    found = [p for p in checkpoints.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted((p for p in found if is_complete(p)), key=lambda p: int(p.name.rsplit("-", 1)[-1]))


class CheckpointWatcher:
    """Hands each checkpoint the training child completes to a callback, from a thread of the
    parent (the child knows nothing of buckets). A failing callback is logged, not raised: a
    checkpoint that did not get off the machine costs a retry some steps, not the training."""

    def __init__(self, checkpoints: Path, callback: Callable[[Path], None], every_s: float = 2.0) -> None:
        self.checkpoints, self.callback, self.every_s = checkpoints, callback, every_s
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.scan()

    def scan(self) -> None:
        for path in complete_checkpoints(self.checkpoints) if self.checkpoints.is_dir() else []:
            if path.name in self.seen:
                continue
            self.seen.add(path.name)
            try:
                self.callback(path)
            except Exception:  # noqa: BLE001 - see the class docstring
                log.warning("could not hand over checkpoint %s", path, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
