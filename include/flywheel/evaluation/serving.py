"""The serving manifest: what the product should serve, published where a serving system reads it.

Promotion moves a pointer row in the warehouse; a product's serving system does not read the
warehouse. After every change of the champion pointer and every A/B step (`promote_if_better`,
`ab_monitor`), the flywheel publishes a manifest to the artefact store:

- ``serving/current.json``: the latest manifest;
- ``serving/manifests/<version>.json``: every manifest ever published, numbered 1, 2, 3...

A manifest names the base model, the champion and (while an A/B test runs) the challenger, each
with its adapter's URI and SHA-256, and the experiment's id, traffic share and hashing salt, so a
product routes a user exactly as `flywheel.evaluation.experiment.bucket` does (the dashboard's
``/flywheel/api/route?user_id=...`` answers the same question). A manifest is published only
when what it says changed, so calling `publish_manifest` after any step is safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.artefacts import ArtefactStore
from flywheel.config import FlywheelConfig
from flywheel.evaluation.experiment import bucket, running_experiment
from flywheel.model import registry
from flywheel.warehouse import Warehouse

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
_LATEST = datetime.max.replace(tzinfo=UTC)

log = logging.getLogger(__name__)


def serving_dir(config: FlywheelConfig) -> Path:
    return config.artefacts_root / "serving"


def adapter_sha256(path: str | None) -> str | None:
    """The adapter's identity: its config and weights, hashed in a fixed order."""
    files = [Path(path) / name for name in ADAPTER_FILES] if path else []
    if not any(f.is_file() for f in files):
        if path:
            log.warning("adapter %s has no adapter files on this machine: the manifest names it without a hash", path)
        return None
    digest = hashlib.sha256()
    for file in files:
        if file.is_file():
            digest.update(file.name.encode())
            with file.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


def _model(wh: Warehouse, version: str, store: ArtefactStore, known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if version in known:  # an adapter never changes under its version: no need to hash it again
        return known[version]
    mv = registry.get_model(wh, version)
    return {"version": mv.version, "base_model": mv.base_model, "adapter_uri": mv.adapter_path,
            "adapter_sha256": adapter_sha256(store.local(mv.adapter_path))}  # fmt: skip


def serving_state(wh: Warehouse, config: FlywheelConfig, *, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """What serves now: the champion, and the running experiment's challenger and split."""
    store = ArtefactStore(config)
    known = {m["version"]: m for m in _models(previous)}
    champion = _model(wh, registry.current_champion(wh), store, known)
    exp = running_experiment(wh, _LATEST, inclusive=True)
    experiment = None
    if exp is not None:
        experiment = {"experiment_id": exp.experiment_id, "cycle_id": exp.cycle_id, "traffic_share": exp.traffic_share,
                      "salt": config.experiment.bucket_salt, "started_at": exp.started_at.isoformat(),
                      "challenger": _model(wh, exp.challenger, store, known)}  # fmt: skip
    return {"base_model": champion["base_model"], "champion": champion, "experiment": experiment}


def _models(manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not manifest:
        return []
    exp = manifest.get("experiment") or {}
    return [m for m in (manifest.get("champion"), exp.get("challenger")) if m]


def current_manifest(config: FlywheelConfig) -> dict[str, Any] | None:
    path = serving_dir(config) / "current.json"
    store = ArtefactStore(config)
    if store.remote and store.published(serving_dir(config)):  # another worker may have published since
        store.fetch(serving_dir(config))
    return json.loads(path.read_text()) if path.is_file() else None


def publish_manifest(wh: Warehouse, config: FlywheelConfig, *, reason: str) -> tuple[dict[str, Any], bool]:
    """Publish the serving state when it changed; returns the current manifest and whether it is new."""
    previous = current_manifest(config)
    state = serving_state(wh, config, previous=previous)
    if previous is not None and {k: previous.get(k) for k in state} == state:
        return previous, False
    version = (previous or {}).get("version", 0) + 1
    manifest = {"version": version, "published_at": datetime.now(UTC).isoformat(), "reason": reason, **state}
    folder = serving_dir(config)
    (folder / "manifests").mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2, sort_keys=True)
    (folder / "manifests" / f"{version:06d}.json").write_text(text)
    tmp = folder / "current.json.tmp"
    tmp.write_text(text)
    tmp.replace(folder / "current.json")  # readers never see a half-written manifest
    ArtefactStore(config).publish(folder, prune=False)
    return manifest, True


def route_user(manifest: dict[str, Any], user_id: str) -> dict[str, Any]:
    """Which model answers ``user_id`` under ``manifest``: the same hash as the A/B test's."""
    exp = manifest.get("experiment")
    if exp and bucket(user_id, exp["experiment_id"], exp["salt"]) < exp["traffic_share"]:
        return {"arm": "challenger", "experiment_id": exp["experiment_id"], **exp["challenger"]}
    return {"arm": "champion", "experiment_id": exp["experiment_id"] if exp else None, **manifest["champion"]}
