"""The serving manifest (`flywheel.evaluation.serving`): published at every change of what
serves (a new champion, an A/B test's start and ramp, its end), versioned, with adapter hashes,
and read by a product through the dashboard API (`/flywheel/api/serving`, `/flywheel/api/route`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import yaml

from flywheel.config import DEFAULT_CONFIG_PATH, FlywheelConfig
from flywheel.evaluation import experiment
from flywheel.evaluation.serving import (
    adapter_sha256,
    current_manifest,
    publish_manifest,
    route_user,
)
from flywheel.model import registry
from flywheel.tables import rows_to_table

T0 = datetime(2026, 3, 2, tzinfo=UTC)


def _adapter(tmp_path, name: str, weights: bytes):
    path = tmp_path / "adapters" / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


@pytest.fixture
def world(tmp_path, wh):
    config = FlywheelConfig(home=tmp_path)
    base = str(tmp_path / "base-model")
    champion = registry.ensure_bootstrap_champion(wh, base)
    challenger = _adapter(tmp_path, "v1", b"\x01" * 64)
    registry.register_model(wh, registry.ModelVersion(version="v1", base_model=base, adapter_path=str(challenger),
                                                      parent_version=champion))  # fmt: skip
    return config, champion, challenger


def test_a_manifest_is_published_for_each_change_of_what_serves(world, wh):
    config, champion, adapter = world
    first, new = publish_manifest(wh, config, reason="bootstrap")
    assert new and first["version"] == 1 and first["champion"]["version"] == champion
    assert first["experiment"] is None and first["champion"]["adapter_uri"] is None
    assert publish_manifest(wh, config, reason="nothing changed") == (first, False)

    # An A/B test starts: the challenger is named with its adapter's hash, the share and the salt.
    exp = experiment.start_experiment(wh, cycle_id="c1", logical_date=T0, champion=champion, challenger="v1",
                                      config=config.experiment)  # fmt: skip
    second, new = publish_manifest(wh, config, reason="A/B started")
    assert new and second["version"] == 2
    arm = second["experiment"]
    assert arm["experiment_id"] == exp.experiment_id and arm["traffic_share"] == config.experiment.ramp[0]
    assert arm["salt"] == config.experiment.bucket_salt and arm["challenger"]["adapter_uri"] == str(adapter)
    assert arm["challenger"]["adapter_sha256"] == adapter_sha256(str(adapter)) is not None
    assert adapter_sha256(str(_adapter(adapter.parents[1], "other", b"\x02" * 64))) != arm["challenger"]["adapter_sha256"]

    # The challenger wins: it becomes the champion and the experiment leaves the manifest.
    registry.record_decision(wh, cycle_id=exp.experiment_id, logical_date=T0, champion_before=champion,
                             challenger="v1", promoted=True, reason="A/B won")  # fmt: skip
    wh.merge("experiment_decisions", rows_to_table("experiment_decisions", [{
        "experiment_id": exp.experiment_id, "as_of": T0, "action": "promote", "traffic_share": 1.0, "status": "promoted",
        "reason": "A/B won", "decided_at": T0}]))  # fmt: skip
    third, new = publish_manifest(wh, config, reason="promoted")
    assert new and third["version"] == 3 and third["champion"]["version"] == "v1" and third["experiment"] is None
    # Every version stays readable; current.json is the latest.
    folder = config.artefacts_root / "serving"
    assert sorted(p.name for p in (folder / "manifests").iterdir()) == ["000001.json", "000002.json", "000003.json"]
    assert current_manifest(config) == third


def test_routing_follows_the_experiments_own_hashing(world, wh):
    config, champion, _ = world
    exp = experiment.start_experiment(wh, cycle_id="c1", logical_date=T0, champion=champion, challenger="v1",
                                      config=config.experiment)  # fmt: skip
    manifest, _ = publish_manifest(wh, config, reason="A/B started")
    users = [f"user-{i}" for i in range(2000)]
    routed = {u: route_user(manifest, u)["arm"] == "challenger" for u in users}
    assert routed == {u: exp.serves_challenger(u, config.experiment.bucket_salt) for u in users}
    share = sum(routed.values()) / len(users)
    assert abs(share - config.experiment.ramp[0]) < 0.02


def test_the_dashboard_serves_the_manifest_and_routes(world, wh, tmp_path, monkeypatch):
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    from flywheel_airflow.dashboard import create_app

    config, champion, _ = world
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["warehouse"]["duckdb_path"] = str(wh.path)
    data["artefacts"]["root"] = str(config.artefacts_root)
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "dashboard.yaml"))
    client = TestClient(create_app())
    token = create_auth_manager().generate_jwt(SimpleAuthManagerUser(username="product", role="viewer"))
    cookies = {"_token": token}

    assert client.get("/api/serving").status_code == 401  # authenticated, like every page here
    assert client.get("/api/serving", cookies=cookies).status_code == 404  # nothing published yet
    experiment.start_experiment(wh, cycle_id="c1", logical_date=T0, champion=champion, challenger="v1",
                                config=config.experiment)  # fmt: skip
    manifest, _ = publish_manifest(wh, config, reason="A/B started")
    assert client.get("/api/serving", cookies=cookies).json() == manifest
    for user in ("user-1", "user-2", "user-3", "user-4"):
        answer = client.get("/api/route", params={"user_id": user}, cookies=cookies).json()
        assert answer["arm"] == route_user(manifest, user)["arm"] and answer["manifest_version"] == manifest["version"]
        assert answer["version"] == ("v1" if answer["arm"] == "challenger" else champion)
    assert client.get("/api/route", params={"user_id": " "}, cookies=cookies).status_code == 422
