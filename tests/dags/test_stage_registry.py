"""The operators run exactly the registered stages of `flywheel.cycle`, and parsing the DAGs,
which imports every stage through the operators, imports none of the heavy dependencies (they
take seconds, and the stages import them only when they run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from airflow.sdk import DAG

from flywheel.cycle import STAGES
from flywheel_airflow import operators
from flywheel_airflow.cycle_dag import cycle_chain

ROOT = Path(__file__).resolve().parents[2]


def _stage_operators() -> list[type[operators.FlywheelStageOperator]]:
    found, todo = [], [operators.FlywheelStageOperator]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def test_every_stage_operator_runs_a_registered_stage_and_every_stage_has_one():
    ran = {op.__name__: op.stage for op in _stage_operators()}
    assert all(stage in STAGES.values() for stage in ran.values()), ran
    assert sorted(s.__name__ for s in ran.values()) == sorted(STAGES)


def test_parsing_the_dags_imports_no_heavy_dependency():
    dag_files = sorted(str(p) for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))
    probe = (
        "import runpy, sys\n"
        f"for f in {dag_files!r}: runpy.run_path(f)\n"
        "heavy = ('torch', 'transformers', 'peft', 'datasets', 'great_expectations', 'presidio_analyzer', 'spacy',\n"
        "         'detoxify', 'matplotlib', 'gcsfs')\n"
        "assert 'flywheel.cycle' in sys.modules, 'the probe must load the stages'\n"
        "print(sorted(m for m in sys.modules if m in heavy))\n"
    )
    path = [str(ROOT / "plugins"), str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_the_dags_chain_the_stages_in_the_order_the_in_process_cycle_runs_them():
    """`cycle_chain` (Airflow) and `flywheel.cycle.inprocess` (the benchmark and the learning
    test) must run one order: `STAGES`, with the bootstrap's extract in place of the window's."""
    with DAG("order_probe", schedule=None):
        tasks = cycle_chain()
    ran = [t.stage.__name__ for t in tasks if isinstance(t, operators.FlywheelStageOperator)]
    assert ran == [name for name in STAGES if name not in ("extract_bootstrap", *SHARDED_FILTER)]


SHARDED_FILTER = ("plan_filter_shards", "filter_shard", "merge_filter_shards")


def test_with_filter_shards_the_filter_stage_is_a_plan_a_mapped_shard_task_and_the_merge(tmp_path, monkeypatch):
    """``scale.filter_shards`` > 1 where the DAG is parsed: the filter task becomes a plan, a
    shard task mapped over the plan's output (dynamic task mapping) and the merge, which keeps
    the task id the rest of the chain (and the operators' links) know."""
    import yaml

    from flywheel.config import DEFAULT_CONFIG_PATH

    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["scale"]["filter_shards"] = 3
    (tmp_path / "sharded.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "sharded.yaml"))
    with DAG("sharded_probe", schedule=None) as dag:
        tasks = cycle_chain()
    ids = [t.task_id for t in tasks]
    at = ids.index("plan_filter_shards")
    assert ids[at - 1: at + 4] == ["validate_and_quarantine", "plan_filter_shards", "filter_shard", "filter_candidates", "sample_for_review"]
    mapped = dag.get_task("filter_shard")
    assert type(mapped).__name__ == "MappedOperator" and mapped.operator_class.__name__ == "FilterShardOperator"
    assert mapped.upstream_task_ids == {"plan_filter_shards"}
    assert dag.get_task("filter_candidates").upstream_task_ids == {"filter_shard"}
    assert type(dag.get_task("filter_candidates")).__name__ == "MergeFilterShardsOperator"
    stages = [t.stage.__name__ for t in tasks if isinstance(t, operators.FlywheelStageOperator)]
    assert stages[at - 1: at + 2] == ["validate_rows", "plan_filter_shards", "merge_filter_shards"]


def test_a_stagnant_flywheel_alerts_unless_the_run_was_told_to_skip_training():
    stagnant = {"stagnation": {"stagnant": True, "summary": "stagnant for 3 cycles"}}
    assert operators.stagnation_alert_due(stagnant, {"skip_training": False, "dry_run": True})
    assert operators.stagnation_alert_due(stagnant, None)
    assert not operators.stagnation_alert_due(stagnant, {"skip_training": True})
    assert not operators.stagnation_alert_due({"stagnation": {"stagnant": False}}, {})
    starved = {"stagnation": {"stagnant": False, "starved": True, "summary": "starved: 3 cycles in a row trained no challenger"}}
    assert operators.stagnation_alert_due(starved, {}) and not operators.stagnation_alert_due(starved, {"skip_training": True})
