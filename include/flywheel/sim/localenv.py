"""Environment for running this project's Airflow locally on the embedded default.

Used by the demo, `make airflow` and the integration tests, so the three run Airflow the same
way: a project-local AIRFLOW_HOME (SQLite metadata DB), this repository's dags/ and plugins/,
no example DAGs, and no model hub access.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flywheel.config import PROJECT_ROOT, flywheel_home


def airflow_env(airflow_home: Path, flywheel_home: Path, *, config_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": env.get(
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://localhost:8080/execution/"
            ),
            "FLYWHEEL_HOME": str(flywheel_home),
            # Nothing reaches a model hub: the tiny model is built locally.
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    if config_path is not None:
        env["FLYWHEEL_CONFIG"] = str(config_path)
    return env


def dags_test_command(dag_id: str, logical_date: str, conf: dict | None = None) -> list[str]:
    """``airflow dags test DAG DATE [-c CONF]`` as the demo, the tests and the benchmarks run it:
    through `scripts/airflow_dags_test.py`, which caches Airflow 3.1's per-task in-process API
    (apache/airflow#65235) and then hands over to Airflow's own CLI."""
    cmd = [sys.executable, str(PROJECT_ROOT / "scripts" / "airflow_dags_test.py"), dag_id, logical_date]
    return cmd + (["-c", json.dumps(conf)] if conf else [])


def local_airflow_env() -> tuple[dict[str, str], str]:
    """`airflow_env` for ``make airflow``, and a line saying which flywheel config it uses.

    - The venv's ``bin`` leads PATH: ``airflow standalone`` starts its components by running
      ``airflow`` from PATH, which make does not give it.
    - LocalExecutor starts ``core.parallelism`` worker processes (32 by default): two per core here.
    - Where ``make demo`` left its data (``demo-flywheel.yaml`` beside the warehouse), runs use
      the demo's config (minutes-long review deadlines, the demo's training pace), so a run
      triggered by hand finishes on the demo's data; ``FLYWHEEL_CONFIG`` chooses another.
    - Over the demo's data the schedule is off (``scheduler.use_job_schedule``): its weeks are
      in the past, so the run the scheduler would add for this week on unpausing would find an
      empty window, fail its raw gate and alert. Triggered runs and backfills run as ever.
    """
    home = flywheel_home()
    demo = home / "demo-flywheel.yaml"
    chosen = os.environ.get("FLYWHEEL_CONFIG")
    config_path = Path(chosen) if chosen else (demo if demo.is_file() else None)
    env = airflow_env(PROJECT_ROOT / ".airflow", home, config_path=config_path)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("AIRFLOW__CORE__PARALLELISM", str(2 * (os.cpu_count() or 1)))
    if config_path is None:
        why = "flywheel config: include/config/flywheel.yaml (production defaults; `make demo` first for the demo's)"
    elif config_path == demo:
        env.setdefault("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", "False")
        why = (f"flywheel config: {config_path} (the demo's, left by `make demo`); no scheduled runs over the demo's past weeks "
               "(trigger or backfill them)")  # fmt: skip
    else:
        why = f"flywheel config: {config_path}"
    return env, why


def main(argv: list[str] | None = None) -> int:
    """``python -m flywheel.sim.localenv ARGS...``: run ``airflow ARGS...`` in the project's local env."""
    args = sys.argv[1:] if argv is None else argv
    env, why = local_airflow_env()
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    if args[:1] == ["standalone"]:
        passwords = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        print(f"Airflow UI: http://localhost:8080  (user admin; its password is printed below and kept in {passwords})\n"
              f"{why}; parallelism {env['AIRFLOW__CORE__PARALLELISM']}. The DAGs start paused: unpause one to run it.",
              flush=True)  # fmt: skip
    return subprocess.run([airflow, *args], env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
