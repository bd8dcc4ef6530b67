"""Local emulators for the tests (warehouses, object storage): install them, start them, point
connections at them.

    python scripts/emulators.py install              # idempotent; `make emulators` runs it
    python scripts/emulators.py serve bigquery PORT GRPC_PORT DATA_DIR
    python scripts/emulators.py serve snowflake PORT

- Snowflake: `fakesnow` (pinned in requirements.txt) in server mode, driven by the real
  `snowflake-connector-python` over HTTP. It runs in the project's venv.
- BigQuery: `local-bigquery`, driven by the real `google-cloud-bigquery` client (REST) and the
  Storage Read API (gRPC). It needs Python 3.13 and pins that clash with the project's, so it
  gets its own venv under ``.cache/emulators``. Its DuckDB cannot download extensions here, so
  they come from PyPI wheels (``duckdb-extension-*``) and are installed from those files into a
  DuckDB home of its own (``HOME`` for that process only).
- GCS: `gcp-storage-emulator` (pinned in requirements.txt), driven by the real `gcsfs` through
  Airflow's `ObjectStoragePath`; the artefact-store tests publish to its bucket
  ``GCS_BUCKET``. gcsfs finds it through ``STORAGE_EMULATOR_HOST`` (the emulator's ``env``).

The pytest session fixtures in ``tests/contract/conftest.py`` call `start` and `stop`; nothing
here is imported by the flywheel itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / ".cache" / "emulators"
BQ_VENV = HOME / "bigquery-venv"
BQ_DUCKDB_HOME = HOME / "bigquery-home"
BQ_REQUIREMENTS = Path(__file__).with_name("bigquery-emulator-requirements.txt")
# DuckDB extensions the emulator loads (time zones, its catalog, geography, Avro loads).
BQ_EXTENSIONS = ("icu", "ducklake", "spatial", "avro", "json", "parquet")
GCS_BUCKET = "flywheel-artefacts"


def _python313() -> str:
    """A working Python 3.13 interpreter: pyenv's, or one on PATH (a pyenv shim on PATH may
    point at no installed version, hence the check)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [str(p / "bin" / "python3.13") for p in sorted(pyenv.glob("3.13*"), reverse=True)]
    candidates += [c for c in [shutil.which("python3.13")] if c]
    for candidate in candidates:
        if subprocess.run([candidate, "--version"], capture_output=True).returncode == 0:
            return candidate
    raise SystemExit("the BigQuery emulator needs Python 3.13 (pyenv's 3.13, or python3.13 on PATH)")


def install_bigquery() -> None:
    """Create the emulator's venv and its DuckDB extensions; a no-op when the pins are unchanged."""
    stamp = BQ_VENV / ".installed"
    want = hashlib.sha256(BQ_REQUIREMENTS.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    shutil.rmtree(BQ_VENV, ignore_errors=True)
    subprocess.run([_python313(), "-m", "venv", str(BQ_VENV)], check=True)
    pip = [str(BQ_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(BQ_REQUIREMENTS)], check=True)
    subprocess.run([str(BQ_VENV / "bin" / "python"), "-m", "pip", "check"], check=True)
    BQ_DUCKDB_HOME.mkdir(parents=True, exist_ok=True)
    install = (
        "import duckdb, importlib, pathlib\n"
        f"for name in {BQ_EXTENSIONS!r}:\n"
        "    package = pathlib.Path(importlib.import_module('duckdb_extension_' + name).__file__).parent\n"
        "    duckdb.connect().execute(f\"INSTALL '{next(package.rglob('*.duckdb_extension'))}'\")\n"
    )
    subprocess.run([str(BQ_VENV / "bin" / "python"), "-c", install], check=True, env=_bq_env())
    stamp.write_text(want)


def _bq_env() -> dict[str, str]:
    return {**os.environ, "HOME": str(BQ_DUCKDB_HOME)}


def serve_snowflake(port: int) -> None:
    """fakesnow's server, with one fix to its wire format applied first.

    fakesnow 0.12 encodes a timestamp column as Snowflake's (epoch, fraction, zone) struct but
    drops the column's nulls on the way, so a NULL timestamp reads back as 1970-01-01 through
    the real connector. Real Snowflake returns NULL, and the flywheel depends on it (a row with
    no event time is windowed by ingestion and quarantined), so the emulator gets the null mask.
    """
    import threading

    import fakesnow
    import fakesnow.arrow
    import pyarrow as pa

    original = fakesnow.arrow.timestamp_to_sf_struct

    def with_nulls(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        struct = original(ts)
        return pa.StructArray.from_arrays(
            [struct.field(i) for i in range(struct.type.num_fields)],
            fields=list(struct.type),
            mask=ts.is_null(),
        )

    fakesnow.arrow.timestamp_to_sf_struct = with_nulls
    with fakesnow.server(port=port, host="127.0.0.1"):
        threading.Event().wait()


@dataclass
class Emulator:
    """A running emulator and the Airflow connection (as an env var value) that reaches it."""

    name: str
    process: subprocess.Popen[bytes]
    connection: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"emulator exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"emulator did not listen on {port} within {timeout_s}s: {log.read_text()[-2000:]}")


def start(name: str, workdir: Path) -> Emulator:
    """Start an emulator on free ports, wait until it listens, and say how to connect."""
    import json

    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    port = _free_port()
    if name == "snowflake":
        cmd = [sys.executable, __file__, "serve", "snowflake", str(port)]
        env = dict(os.environ)
        connection = json.dumps({
            "conn_type": "snowflake", "login": "flywheel", "password": "emulator", "schema": "FLYWHEEL",
            "extra": {"account": "fakesnow", "database": "FLYWHEEL_TEST", "host": "127.0.0.1", "port": port,
                      "protocol": "http", "warehouse": "TEST"},
        })  # fmt: skip
    elif name == "bigquery":
        install_bigquery()
        grpc_port = _free_port()
        data = workdir / "bigquery-data"
        data.mkdir(exist_ok=True)
        cmd = [str(BQ_VENV / "bin" / "local-bigquery"), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--grpc-port", str(grpc_port), "--project", "flywheel-local", "--data-dir", str(data)]  # fmt: skip
        env = _bq_env()
        connection = json.dumps({
            "conn_type": "google_cloud_platform",
            "extra": {"project": "flywheel-local", "api_endpoint": f"http://127.0.0.1:{port}",
                      "storage_endpoint": f"127.0.0.1:{grpc_port}"},
        })  # fmt: skip
    elif name == "gcs":
        cmd = [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--host", "127.0.0.1",
               "--port", str(port), "--default-bucket", GCS_BUCKET, "--in-memory", "--quiet"]  # fmt: skip
        env = dict(os.environ)
        # No credentials at all: gcsfs talks to the emulator anonymously (artefacts.conn_id unset).
        connection = json.dumps({"conn_type": "google_cloud_platform", "extra": {"project": "flywheel-local"}})
    else:
        raise SystemExit(f"unknown emulator {name!r}: bigquery, snowflake or gcs")
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _wait_for(port, process, log)
    client_env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"} if name == "gcs" else {}
    return Emulator(name, process, connection, log, client_env)


def stop(emulator: Emulator) -> None:
    emulator.process.terminate()
    try:
        emulator.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        emulator.process.kill()


def main(argv: list[str]) -> None:
    if argv[:1] == ["install"]:
        install_bigquery()
    elif argv[:2] == ["serve", "snowflake"]:
        serve_snowflake(int(argv[2]))
    elif argv[:2] == ["serve", "bigquery"]:
        port, grpc_port, data = argv[2:5]
        os.execve(
            str(BQ_VENV / "bin" / "local-bigquery"),
            ["local-bigquery", "serve", "--host", "127.0.0.1", "--port", port, "--grpc-port", grpc_port, "--data-dir", data],
            _bq_env(),
        )
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
