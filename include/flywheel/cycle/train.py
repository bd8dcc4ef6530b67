"""Train: the challenger (LoRA continuing from the champion's adapter) and, for the new-data
check, its twin trained without the window's newest days."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from flywheel.artefacts import ArtefactStore
from flywheel.config import FlywheelConfig
from flywheel.cycle.dataset import dataset_row, newest_ids, recorded_dataset
from flywheel.cycle.spec import CycleSpec
from flywheel.data.dataset import subset_chat_dataset
from flywheel.errors import TrainingError
from flywheel.model import registry
from flywheel.model.checkpoints import work_dir
from flywheel.model.training import train_lora_in_subprocess
from flywheel.providers import prepare_base_model
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse

log = logging.getLogger(__name__)


def train_challenger(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """LoRA on the cycle's dataset, registered as the cycle's challenger."""
    return _train_version(cycle, wh, version=cycle.challenger_version, dataset=recorded_dataset(wh, cycle, cycle.cycle_id),
                          output_dir=cycle.adapter_dir)  # fmt: skip


def train_twin(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """New data vs old data, first half: the challenger's twin, trained the same way on the same
    dataset less the examples from the window's newest days (`CycleSpec.newest_window`).
    `evaluate.evaluate_golden_set` scores it with the others and `promote.promote_if_better`
    compares it with the challenger. Nothing to do (and any earlier twin of this cycle
    forgotten) unless `evaluation.compare_new_data` is on and the window reaches further back
    than its newest days."""
    wh.execute("DELETE FROM datasets WHERE dataset_id = $d", {"d": cycle.twin_version})
    newest = cycle.newest_window
    if not cycle.config.evaluation.compare_new_data:
        return {"skipped": "evaluation.compare_new_data is off for this run"}
    if newest.start <= cycle.window.start:
        return {"skipped": f"the window ({cycle.window.days:g} days) is no longer than evaluation.newest_window_days: "
                           "the champion stands for the twin, and the offline gate already compares with it"}  # fmt: skip
    dataset = recorded_dataset(wh, cycle, cycle.cycle_id)
    drop = newest_ids(cycle, wh)
    store = ArtefactStore(cycle.config)  # a bucket root: the dataset fetched here, the twin's published
    source = store.fetch(cycle.dataset_dir)
    info = subset_chat_dataset(source, source.with_name(cycle.twin_version), drop=drop)
    n_newest = dataset["n_train"] + dataset["n_val"] - info.n_train - info.n_val
    if n_newest == 0:
        return {"skipped": f"no example of the dataset is from the newest window [{newest.start:%Y-%m-%d}, {newest.end:%Y-%m-%d})"}
    if info.n_train < cycle.config.training.min_examples:
        return {"skipped": f"without the newest window only {info.n_train} examples remain "
                           f"(< training.min_examples={cycle.config.training.min_examples}): no twin to compare with"}  # fmt: skip
    row = dataset_row(cycle, info, dataset_id=cycle.twin_version, path=store.publish(info.path),
                      window_start=dataset["window_start"], window_end=newest.start)  # fmt: skip
    wh.merge("datasets", rows_to_table("datasets", [row]))
    try:
        out = _train_version(cycle, wh, version=cycle.twin_version, dataset=row, window_end=newest.start,
                             output_dir=cycle.adapter_dir.with_name(cycle.twin_version))  # fmt: skip
    except TrainingError as exc:
        # The twin is a diagnostic: its failure is reported (the operator alerts), and the cycle
        # goes on with its challenger, judged as if no twin had been asked for.
        wh.execute("DELETE FROM datasets WHERE dataset_id = $d", {"d": cycle.twin_version})
        log.error("%s: the twin could not be trained: %s", cycle.cycle_id, exc)
        return {"skipped": f"the twin could not be trained: {exc}", "failed": True}
    return out | {"n_newest": n_newest, "newest_window": [newest.start.isoformat(), newest.end.isoformat()]}


def publish_checkpoint(store: ArtefactStore, work: Path, checkpoint: Path) -> None:
    """A completed checkpoint into the bucket, with the stamp naming the run it belongs to."""
    store.publish(work / "run.json")
    store.publish(checkpoint)
    log.info("checkpoint %s published", store.uri(checkpoint))


def restore_checkpoint(store: ArtefactStore, work: Path) -> Path | None:
    """The newest checkpoint a try on another machine published, fetched into this machine's
    work folder (training then decides, by the run's stamp, whether it may resume from it)."""
    names = [n for n in store.published_in(work / "checkpoints") if n.rsplit("-", 1)[-1].isdigit()]
    if not names or not store.published(work / "run.json"):
        return None
    newest = max(names, key=lambda n: int(n.rsplit("-", 1)[-1]))
    if (work / "checkpoints" / newest / "trainer_state.json").is_file():
        return None  # this machine has it already
    store.fetch(work / "run.json")
    return store.fetch(work / "checkpoints" / newest)


def ensure_base_model(config: FlywheelConfig, wh: Warehouse) -> str:
    """The base model's path or name; on the embedded default, build the tiny model if needed.

    With no champion yet (cold start), the base model becomes the first champion.
    """
    base = prepare_base_model(config)  # a built-in model is built once, again only when its config changed
    registry.ensure_bootstrap_champion(wh, base)
    return base


def _train_version(
    cycle: CycleSpec, wh: Warehouse, *, version: str, dataset: dict[str, Any], output_dir: Path, window_end: datetime | None = None
) -> dict[str, Any]:
    """LoRA on ``dataset``, continuing from the champion's adapter; registered as ``version``
    with the window its data came from (the twin's ends where the newest days begin)."""
    base = ensure_base_model(cycle.config, wh)
    store = ArtefactStore(cycle.config)  # a bucket root: inputs fetched here, the adapter published
    champion = registry.get_model(wh, registry.champion_as_of(wh, cycle.logical_date))
    if champion.base_model != base:
        raise registry.RegistryError(
            f"champion {champion.version} is built on {champion.base_model!r}, but training.base_model "
            f"resolves to {base!r}; an adapter cannot continue across base models"
        )
    work = work_dir(output_dir)
    restored = restore_checkpoint(store, work)
    if restored:
        log.info("%s: resuming from %s, left in %s by an earlier try", version, restored.name, store.location)
    # What the run is, whichever machine runs it: references, not this machine's cache paths.
    run_key = hashlib.sha256(json.dumps({"base": base, "data": dataset["content_hash"], "parent": champion.adapter_path,
                                         "config": cycle.config.training.model_dump()}, sort_keys=True, default=str)
                             .encode()).hexdigest()  # fmt: skip
    result = train_lora_in_subprocess(
        run_key=run_key,
        # A bucket root: each checkpoint leaves the machine as it completes, so that a retry on
        # another worker (this one lost, preempted) resumes from it instead of starting over.
        on_checkpoint=(lambda path: publish_checkpoint(store, work, path)) if store.remote else None,
        base_model=str(store.local(base)),
        dataset_path=Path(str(store.local(dataset["path"]))),
        output_dir=output_dir,
        config=cycle.config.training,
        parent_adapter=store.local(champion.adapter_path),
        lineage={
            "cycle_id": cycle.cycle_id,
            "parent_version": champion.version,
            "dataset_hash": dataset["content_hash"],
            "window": [cycle.window.start.isoformat(), (window_end or cycle.window.end).isoformat()],
        },
    )
    store.publish(result.adapter_path)  # before it is registered: a registered adapter is fetchable
    registry.register_model(
        wh,
        registry.ModelVersion(
            version=version,
            base_model=base,
            adapter_path=store.uri(result.adapter_path),
            parent_version=champion.version,
            cycle_id=cycle.cycle_id,
            dataset_id=dataset["dataset_id"],
            dataset_hash=dataset["content_hash"],
            window_start=cycle.window.start,
            window_end=window_end or cycle.window.end,
            train_loss=result.train_loss,
            config_json=cycle.config.training.model_dump_json(),
            metrics_json=json.dumps(
                {"train_loss": result.train_loss, "steps": result.steps, "n_examples": result.n_examples,
                 "seconds": result.seconds, "resumed_from_step": result.resumed_from_step}
            ),  # fmt: skip
        ),
    )
    return {
        "version": version,
        "adapter_path": store.uri(result.adapter_path),
        "parent_version": champion.version,
        "train_loss": round(result.train_loss, 5),
        "steps": result.steps,
        "n_examples": result.n_examples,
        "seconds": result.seconds,
        "resumed_from_step": result.resumed_from_step,
    }
