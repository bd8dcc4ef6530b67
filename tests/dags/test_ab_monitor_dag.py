"""The A/B monitor DAG: schedule (hourly or on a cycle's decision), tasks, asset, alerts."""

from __future__ import annotations

from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dag():
    from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR / "ab_monitor.py"), include_examples=False)
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags["ab_monitor"]


def test_runs_hourly_and_on_every_model_decision(dag):
    from airflow.timetables.assets import AssetOrTimeSchedule

    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable._expression == "0 * * * *"
    assert "flywheel://registry/model-decision" in str(dag.timetable.asset_condition)
    assert dag.max_active_runs == 1 and dag.catchup is False


def test_publishes_the_champion_asset_after_judging(dag):
    assert [t.task_id for t in dag.topological_sort()] == ["monitor_experiments", "publish_champion"]
    assert [a.uri for a in dag.get_task("publish_champion").outlets] == ["flywheel://registry/champion"]
    # The monitor itself publishes nothing: the model-decision asset it follows would loop.
    assert dag.get_task("monitor_experiments").outlets == []
