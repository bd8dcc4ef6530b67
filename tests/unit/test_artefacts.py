"""The artefact store: a local root is the folder itself (nothing copied); a gs:// root (a local
GCS emulator, driven by the real gcsfs through `ObjectStoragePath`) publishes with a manifest
written last and fetches verified copies into this machine's cache."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from flywheel.artefacts import MANIFEST_SUFFIX, ArtefactError, ArtefactStore
from flywheel.config import FlywheelConfig
from flywheel.errors import ConfigError
from tests.helpers.simulated_product import SIMULATED_PRODUCT


def _adapter(root: Path, name: str = "v1") -> Path:
    d = root / "adapters" / name
    (d / "sub").mkdir(parents=True)
    (d / "adapter_config.json").write_text('{"r": 16}')
    (d / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 40)
    (d / "sub" / "notes.txt").write_text("lineage")
    return d


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def remote(tmp_path, gcs_bucket):
    """Two machines sharing one bucket prefix: each its own FLYWHEEL_HOME and cache."""
    root = f"gs://{gcs_bucket}/{uuid.uuid4().hex[:10]}"

    def machine(name: str) -> ArtefactStore:
        return ArtefactStore(FlywheelConfig(home=tmp_path / name).with_overrides({"artefacts.root": root}))

    return machine


def test_local_root_is_the_folder_itself(tmp_path):
    config = FlywheelConfig(home=tmp_path)
    store = ArtefactStore(config)
    d = _adapter(config.artefacts_root)
    assert not store.remote and store.local_root == tmp_path / "artefacts"
    assert store.publish(d) == str(d) == store.uri(d)  # the registry keeps the path, as before
    assert store.fetch(d) == d and store.published(d)
    assert store.local(str(d)) == str(d) and store.local("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert not list(tmp_path.rglob("*" + MANIFEST_SUFFIX))  # nothing written besides the artefact
    file_root = ArtefactStore(FlywheelConfig(home=tmp_path).with_overrides({"artefacts.root": f"file://{tmp_path}/x"}))
    assert not file_root.remote and file_root.local_root == tmp_path / "x"


@pytest.mark.parametrize("root", ["ftp://host/x", "az://container/x", "gs://", "s3:///prefix"])
def test_unknown_scheme_or_missing_bucket_is_a_config_error(tmp_path, root):
    with pytest.raises(ConfigError, match="artefacts.root"):
        FlywheelConfig(home=tmp_path).with_overrides({"artefacts.root": root})


def test_publish_then_fetch_on_another_machine(remote):
    a, b = remote("a"), remote("b")
    d = _adapter(a.local_root)
    uri = a.publish(d)
    assert uri == f"{a.location}/adapters/v1"
    manifest = json.loads((a._root() / ("adapters/v1" + MANIFEST_SUFFIX)).read_text())
    assert manifest["kind"] == "dir" and manifest["files"]["sub/notes.txt"]["size"] == len("lineage")
    assert not (b.local_root / "adapters" / "v1").exists()
    got = Path(str(b.local(uri)))
    assert got == b.local_root / "adapters" / "v1" and _tree(got) == _tree(d)
    assert not list(got.parent.glob("*.fetch-*"))  # the temporary download is gone


def test_republishing_identical_content_uploads_nothing(remote):
    a = remote("a")
    d = _adapter(a.local_root)
    a.publish(d)
    blob = a._root() / "adapters/v1/adapter_model.safetensors"
    blob.write_bytes(b"changed behind the manifest's back")
    assert a.publish(d) == f"{a.location}/adapters/v1"
    assert blob.read_bytes() == b"changed behind the manifest's back"  # the manifest matched: no upload


def test_a_changed_artefact_replaces_the_old_one(remote):
    a, b = remote("a"), remote("b")
    d = _adapter(a.local_root)
    a.publish(d)
    b.fetch(b.local_root / "adapters" / "v1")
    (d / "adapter_config.json").write_text('{"r": 8}')
    (d / "sub" / "notes.txt").unlink()
    a.publish(d)
    got = b.fetch(b.local_root / "adapters" / "v1")  # the stale cached copy is replaced
    assert (got / "adapter_config.json").read_text() == '{"r": 8}' and not (got / "sub" / "notes.txt").exists()
    # The file the new version dropped is gone from the bucket too, not left behind unlisted.
    assert not (a._root() / "adapters" / "v1" / "sub" / "notes.txt").exists()
    assert (a._root() / "adapters" / "v1" / "adapter_config.json").exists()


def test_a_key_several_workers_write_in_part_is_never_pruned(remote):
    """The Data Docs site: each worker holds only its own runs' pages and publishes the folder."""
    a, b = remote("a"), remote("b")
    for store, run in ((a, "run-a"), (b, "run-b")):
        page = store.local_root / "data_docs" / "validations" / run / "index.html"
        page.parent.mkdir(parents=True)
        page.write_text(run)
        store.publish(store.local_root / "data_docs", prune=False)
    site = a._root() / "data_docs" / "validations"
    assert (site / "run-a" / "index.html").read_text() == "run-a" and (site / "run-b" / "index.html").exists()


def test_cache_is_reused_when_hashes_match_and_repaired_when_not(remote):
    a, b = remote("a"), remote("b")
    d = _adapter(a.local_root)
    a.publish(d)
    local = b.fetch(b.local_root / "adapters" / "v1")
    marker = local / "sub" / "notes.txt"
    inode = marker.stat().st_ino
    assert b.fetch(local).joinpath("sub", "notes.txt").stat().st_ino == inode  # reused, not downloaded
    marker.write_text("tampered")
    assert (b.fetch(local) / "sub" / "notes.txt").read_text() == "lineage"


def test_a_half_written_upload_is_never_read_as_complete(remote):
    a, b = remote("a"), remote("b")
    d = _adapter(a.local_root)
    a.publish(d)
    (a._root() / ("adapters/v1" + MANIFEST_SUFFIX)).unlink()  # an upload cut short before its manifest
    with pytest.raises(ArtefactError, match="not published"):
        b.fetch(b.local_root / "adapters" / "v1")
    assert not b.published(b.local_root / "adapters" / "v1")


def test_a_file_that_does_not_match_its_manifest_is_refused(remote):
    a, b = remote("a"), remote("b")
    d = _adapter(a.local_root)
    a.publish(d)
    (a._root() / "adapters/v1/adapter_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ArtefactError, match="does not match its manifest"):
        b.fetch(b.local_root / "adapters" / "v1")
    assert not (b.local_root / "adapters" / "v1").exists()  # nothing half-fetched left behind


def test_single_files_and_foreign_references(remote, tmp_path):
    a, b = remote("a"), remote("b")
    f = a.local_root / "golden" / "golden.jsonl"
    f.parent.mkdir(parents=True)
    f.write_text('{"q": 1}\n')
    uri = a.publish(f)
    assert Path(str(b.local(uri))).read_text() == '{"q": 1}\n'
    with pytest.raises(ArtefactError, match="not under the artefact root"):
        a.publish(tmp_path / "elsewhere")
    with pytest.raises(ArtefactError, match="not in this deployment's artefact store"):
        b.local("gs://another-bucket/adapters/v1")


def test_cycle_stages_on_three_machines_share_only_the_bucket(tmp_path, gcs_bucket, answer_fns):
    """build_dataset, train and evaluate each on a "machine" of its own (its own FLYWHEEL_HOME,
    an empty cache, the one before it deleted): the dataset, the tiny base model and the adapter
    reach the next stage only through gs://."""
    import shutil
    from datetime import UTC, datetime

    from flywheel.cycle import CycleSpec, make_cycle
    from flywheel.cycle.dataset import build_dataset
    from flywheel.cycle.evaluate import evaluate_golden_set
    from flywheel.cycle.extract import extract_window
    from flywheel.cycle.filtering import filter_candidates
    from flywheel.cycle.train import train_challenger
    from flywheel.cycle.validate import validate_rows
    from flywheel.model import registry
    from flywheel.sim.traffic import simulate_traffic
    from flywheel.tables import rows_to_table
    from flywheel.warehouse.duckdb import DuckDBWarehouse

    root = f"gs://{gcs_bucket}/{uuid.uuid4().hex[:10]}"
    end = datetime(2026, 3, 2, tzinfo=UTC)
    wh = DuckDBWarehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=5)  # the shared warehouse
    wh.ensure_schema()
    logs = simulate_traffic(datetime(2026, 2, 9, tzinfo=UTC), answer_fns["half"], model_version="base:x",
                            n_requests=80, seed=3, malformed_rate=0.0, adversarial_rate=0.0)  # fmt: skip
    wh.merge("production_logs", rows_to_table("production_logs", logs.to_pylist()))

    def machine(name: str) -> CycleSpec:
        config = FlywheelConfig(home=tmp_path / name).with_overrides({
            **SIMULATED_PRODUCT, "artefacts.root": root, "training.min_examples": 5, "filters.keep_fraction": 1.0,
            "tiny_model.pretrain_examples": 300, "tiny_model.pretrain_epochs": 1, "evaluation.golden_set_size": 40,
            "review.model_signals": False,
        })  # fmt: skip
        return make_cycle("flywheel_weekly", data_interval_end=end, logical_date=end, config=config)

    a = machine("a")
    for stage in (extract_window, validate_rows, filter_candidates):
        stage(a, wh)
    built = build_dataset(a, wh)
    assert built["path"] == f"{root}/datasets/{a.cycle_id}"
    shutil.rmtree(tmp_path / "a")

    b = machine("b")
    trained = train_challenger(b, wh)
    assert trained["adapter_path"] == f"{root}/adapters/{b.challenger_version}"
    challenger = registry.get_model(wh, b.challenger_version)
    assert challenger.adapter_path == trained["adapter_path"] and challenger.base_model == f"{root}/base_models/tiny-llama"
    shutil.rmtree(tmp_path / "b")

    c = machine("c")
    assert not c.config.artefacts_root.exists()
    evaluated = evaluate_golden_set(c, wh)
    assert evaluated["challenger_version"] == b.challenger_version and 0.0 <= evaluated["challenger_accuracy"] <= 1.0
    fetched = c.config.artefacts_root
    assert (fetched / "adapters" / b.challenger_version / "adapter_model.safetensors").is_file()
    assert (fetched / "datasets" / a.cycle_id).is_dir()  # the decontamination check read it from the bucket
    assert wh.count("evaluations", {"cycle_id": c.cycle_id}) == 2


@pytest.mark.slow  # three trainings of 80 steps between them: about a minute
def test_training_killed_on_one_machine_resumes_on_another_from_the_bucket(tmp_path, gcs_bucket, answer_fns):
    """The training worker is lost mid-training (SIGKILL to the task and its training child):
    its checkpoints left the machine as they completed, so the retry on a fresh machine resumes
    from the last one, carries on to the end, and its adapter answers as an uninterrupted run's."""
    import json
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from datetime import UTC, datetime

    from flywheel.cycle import make_cycle
    from flywheel.cycle.dataset import build_dataset
    from flywheel.cycle.extract import extract_window
    from flywheel.cycle.filtering import filter_candidates
    from flywheel.cycle.train import train_challenger
    from flywheel.cycle.validate import validate_rows
    from flywheel.model import registry
    from flywheel.model.checkpoints import work_dir
    from flywheel.model.training import train_lora
    from flywheel.sim.traffic import simulate_traffic
    from flywheel.tables import rows_to_table
    from flywheel.warehouse.duckdb import DuckDBWarehouse

    root = f"gs://{gcs_bucket}/{uuid.uuid4().hex[:10]}"
    end = datetime(2026, 3, 2, tzinfo=UTC)
    overrides = {**SIMULATED_PRODUCT, "artefacts.root": root, "training.min_examples": 5, "filters.keep_fraction": 1.0,
                 "tiny_model.pretrain_examples": 300, "tiny_model.pretrain_epochs": 1, "evaluation.golden_set_size": 40,
                 "review.model_signals": False, "training.epochs": 20, "training.checkpoint_steps": 10}  # fmt: skip
    wh = DuckDBWarehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=30)
    wh.ensure_schema()
    logs = simulate_traffic(datetime(2026, 2, 9, tzinfo=UTC), answer_fns["half"], model_version="base:x",
                            n_requests=80, seed=3, malformed_rate=0.0, adversarial_rate=0.0)  # fmt: skip
    wh.merge("production_logs", rows_to_table("production_logs", logs.to_pylist()))

    def machine(name: str):
        config = FlywheelConfig(home=tmp_path / name).with_overrides(overrides)
        return make_cycle("flywheel_weekly", data_interval_end=end, logical_date=end, config=config)

    a = machine("a")
    for stage in (extract_window, validate_rows, filter_candidates, build_dataset):
        stage(a, wh)

    # Machine b: the training task, in a process of its own, killed with its child once a
    # checkpoint is in the bucket.
    script = (
        "import json, sys\n"
        "from datetime import datetime\n"
        "from flywheel.config import FlywheelConfig\n"
        "from flywheel.cycle import make_cycle\n"
        "from flywheel.cycle.train import train_challenger\n"
        "from flywheel.warehouse.duckdb import DuckDBWarehouse\n"
        "home, overrides, end, wh = sys.argv[1], json.loads(sys.argv[2]), datetime.fromisoformat(sys.argv[3]), sys.argv[4]\n"
        "config = FlywheelConfig(home=home).with_overrides(overrides)\n"
        "cycle = make_cycle('flywheel_weekly', data_interval_end=end, logical_date=end, config=config)\n"
        "train_challenger(cycle, DuckDBWarehouse(wh, lock_timeout_s=30))\n"
    )
    b = machine("b")
    checkpoints = work_dir(b.adapter_dir) / "checkpoints"
    task = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "b"), json.dumps(overrides), end.isoformat(),
                             str(tmp_path / "warehouse.duckdb")], start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    published: list[str] = []
    while time.monotonic() < deadline and task.poll() is None and not published:
        published = ArtefactStore(b.config).published_in(checkpoints)
        time.sleep(0.5)
    assert task.poll() is None, "training finished before it could be killed"
    assert published, "no checkpoint reached the bucket in time"
    os.killpg(task.pid, signal.SIGKILL)
    task.wait()
    print(f"killed the training task on machine b; the bucket held {published}")
    assert not ArtefactStore(b.config).published(b.adapter_dir)
    shutil.rmtree(tmp_path / "b")

    c = machine("c")
    resumed = train_challenger(c, wh)
    print(f"machine c resumed from step {resumed['resumed_from_step']} and trained to step {resumed['steps']}")
    assert resumed["resumed_from_step"] >= int(published[-1].rsplit("-", 1)[-1]) > 0
    steps_per_epoch = resumed["steps"] // overrides["training.epochs"]
    assert resumed["steps"] == overrides["training.epochs"] * steps_per_epoch  # to the end, not started over

    # The same training, never interrupted, on machine c's copies of its inputs.
    store = ArtefactStore(c.config)
    dataset = wh.select("datasets", {"cycle_id": c.cycle_id}).to_pylist()[0]
    whole = train_lora(base_model=str(store.local(registry.get_model(wh, c.challenger_version).base_model)),
                       dataset_path=Path(str(store.local(dataset["path"]))), output_dir=tmp_path / "uninterrupted",
                       config=c.config.training)  # fmt: skip
    assert whole.steps == resumed["steps"] and whole.resumed_from_step == 0
    probes = lambda path: json.loads((path / "flywheel_training.json").read_text())["probes"]  # noqa: E731
    assert probes(c.adapter_dir) == probes(tmp_path / "uninterrupted")
