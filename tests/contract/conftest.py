"""One warehouse contract, three backends: DuckDB, Snowflake (fakesnow server) and BigQuery
(local-bigquery), each driven by its real client and opened the way a task opens it, through
`FlywheelWarehouseHook` and an Airflow connection (given as an ``AIRFLOW_CONN_*`` variable).

The emulators are installed (BigQuery's into its own venv) and started once for this package by
``scripts/emulators.py``; each test gets a fresh dataset or schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from flywheel.warehouse import Warehouse
from scripts import emulators
from tests.helpers.backends import BACKENDS, backend_config, drop_bigquery_datasets, open_warehouse


@pytest.fixture(scope="package")
def running(tmp_path_factory) -> Iterator[dict[str, emulators.Emulator]]:
    """Emulators started on first use and stopped when the contract tests are done: the
    BigQuery emulator keeps about half a core busy while idle, which the rest of the suite
    would pay for."""
    workdir = tmp_path_factory.mktemp("emulators")

    class Started(dict[str, emulators.Emulator]):
        def __missing__(self, name: str) -> emulators.Emulator:
            self[name] = emulator = emulators.start(name, workdir)
            os.environ[f"AIRFLOW_CONN_FLYWHEEL_{name.upper()}_EMULATOR"] = emulator.connection
            return emulator

    started = Started()
    yield started
    for emulator in started.values():
        emulators.stop(emulator)


@pytest.fixture(autouse=True)
def _drop_bigquery_datasets() -> Iterator[None]:
    """Each test's BigQuery datasets go when it ends (see `drop_bigquery_datasets`)."""
    yield
    drop_bigquery_datasets()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return str(request.param)


@pytest.fixture
def wh(backend, tmp_path, running) -> Iterator[Warehouse]:
    warehouse = open_warehouse(backend_config(backend, tmp_path, running))
    warehouse.ensure_schema()
    yield warehouse
    close = getattr(warehouse, "close", None)
    if close:
        close()
