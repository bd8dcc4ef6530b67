"""`make airflow`'s environment: Airflow's standalone finds its own `airflow`, runs a worker pool
sized to the machine, and uses the demo's config where `make demo` left its data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from flywheel.sim.localenv import local_airflow_env


def test_standalone_finds_the_venvs_airflow_and_sizes_its_workers(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", raising=False)
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    monkeypatch.delenv("AIRFLOW__CORE__PARALLELISM", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin")
    env, why = local_airflow_env()
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert (Path(env["PATH"].split(os.pathsep)[0]) / "airflow").is_file()
    assert env["AIRFLOW__CORE__PARALLELISM"] == str(2 * (os.cpu_count() or 1))
    assert "FLYWHEEL_CONFIG" not in env and "production defaults" in why
    assert "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE" not in env

    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "3")  # an operator's choice stands
    assert local_airflow_env()[0]["AIRFLOW__CORE__PARALLELISM"] == "3"


def test_the_demos_config_is_used_where_the_demo_left_its_data(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    monkeypatch.delenv("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", raising=False)
    (tmp_path / "demo-flywheel.yaml").write_text("{}\n")
    env, why = local_airflow_env()
    assert env["FLYWHEEL_CONFIG"] == str(tmp_path / "demo-flywheel.yaml") and "the demo's" in why
    # The demo's weeks are past: no run for this week on unpausing, only triggered and backfilled ones.
    assert env["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] == "False" and "no scheduled runs" in why
    mine = tmp_path / "mine.yaml"
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(mine))
    env, why = local_airflow_env()
    assert env["FLYWHEEL_CONFIG"] == str(mine) and "the demo's" not in why
    assert "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE" not in env  # a config of one's own keeps the schedule
