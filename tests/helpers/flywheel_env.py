"""A flywheel and an Airflow of their own for the integration tests: a config edited from the
project's YAML, a warehouse, an AIRFLOW_HOME with a migrated metadata DB, and `airflow dags
test` runs in it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from flywheel.sim.localenv import dags_test_command
from tests.helpers.simulated_product import for_simulated_product

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def write_config(root: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """The project's config for the simulated product (`for_simulated_product`), changed by
    ``edit`` (as a dict), written to ``root/flywheel.yaml``."""
    data = yaml.safe_load((ROOT / "include/config/flywheel.yaml").read_text())
    for_simulated_product(data)
    edit(data)
    config_path = root / "flywheel.yaml"
    config_path.write_text(yaml.safe_dump(data))
    return config_path


@contextmanager
def pointed_at(home: Path, config_path: Path) -> Iterator[None]:
    """This process's FLYWHEEL_HOME and FLYWHEEL_CONFIG point at a test's own until the block
    ends (the simulator and the tiny model read them); then they are as they were."""
    saved = {k: os.environ.get(k) for k in ("FLYWHEEL_HOME", "FLYWHEEL_CONFIG")}
    os.environ.update({"FLYWHEEL_HOME": str(home), "FLYWHEEL_CONFIG": str(config_path)})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bootstrapped(home: Path, config_path: Path, weeks: list[datetime], truth: dict[str, str] | None = None) -> tuple[Any, Any]:
    """With this process pointed at ``home`` and ``config_path`` (`pointed_at`): the tiny model
    built, the warehouse with its schema and the base model as champion, and each of ``weeks``
    served by the simulated product (``truth`` collects the right answers). Returns the config
    and the warehouse."""
    from flywheel.config import load_config
    from flywheel.model import registry
    from flywheel.sim.product import serve_week
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model
    from flywheel.warehouse import warehouse_from_config

    with pointed_at(home, config_path):
        config = load_config()
        build_tiny_model(config)
        wh = warehouse_from_config(config)
        wh.ensure_schema()
        registry.ensure_bootstrap_champion(wh, resolve_base_model(config))
        for week in weeks:
            serve_week(config, wh, week, truth=truth)
    return config, wh


@contextmanager
def flywheel_env(root: Path, edit: Callable[[dict[str, Any]], None], *, reserialize: bool = False) -> Iterator[dict[str, Any]]:
    """Yield ``{"root", "config", "wh", "env", "airflow"}``: ``edit`` changes the project's
    config before it is written to ``root`` (`write_config`), the process points at it while
    the block runs (`pointed_at`), and ``env`` is the environment `airflow` commands run in.
    ``reserialize`` parses the DAGs into the metadata DB, as the dag-processor would."""
    from flywheel.config import load_config
    from flywheel.sim.localenv import airflow_env
    from flywheel.warehouse import warehouse_from_config

    config_path = write_config(root, edit)
    with pointed_at(root / "flywheel", config_path):
        config = load_config()
        wh = warehouse_from_config(config)
        wh.ensure_schema()
        run_env = airflow_env(root / "airflow", root / "flywheel", config_path=config_path)
        subprocess.run([AIRFLOW, "db", "migrate"], env=run_env, check=True, capture_output=True)
        if reserialize:
            subprocess.run([AIRFLOW, "dags", "reserialize"], env=run_env, check=True, capture_output=True)
        yield {"root": root, "config": config, "wh": wh, "env": run_env, "airflow": AIRFLOW}


def dags_test(env: dict[str, Any], dag_id: str, when: datetime, conf: dict[str, Any] | None = None, *,
              extra_env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`airflow dags test <dag_id> <when>` in the test's Airflow; with ``check``, it must succeed."""
    proc = subprocess.run(dags_test_command(dag_id, when.isoformat(), conf), env={**env["env"], **(extra_env or {})}, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc
