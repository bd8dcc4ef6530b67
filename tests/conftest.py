"""Shared test set-up: Airflow and the flywheel point at temporary homes, never at the user's.

These variables are set before anything imports Airflow, which reads them once at import.

`make test` runs the suite on pytest-xdist workers, one per core (`--dist loadfile`): a module's
tests stay on one worker, so its module-scoped fixtures (a bootstrapped flywheel) are built once.
Each worker is a process with its own temporary homes and the package fixtures of its own (the
contract tests' emulators start once per worker that runs them), and the workers share the
cores' threads rather than each taking them all.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from scripts import emulators

ROOT = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="flywheel-tests-"))

os.environ["AIRFLOW_HOME"] = str(_SESSION_HOME / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ.setdefault("FLYWHEEL_HOME", str(_SESSION_HOME / "flywheel"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # torch reads it at import, and training subprocesses inherit it.
    _workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
    """A local GCS (`scripts/emulators.py`'s gcp-storage-emulator) that gcsfs, and so
    `ObjectStoragePath("gs://...")`, reaches through STORAGE_EMULATOR_HOST; yields its bucket."""
    emulator = emulators.start("gcs", tmp_path_factory.mktemp("gcs"))
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    try:
        yield emulators.GCS_BUCKET
    finally:
        emulators.stop(emulator)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
