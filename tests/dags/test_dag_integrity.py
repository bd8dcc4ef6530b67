"""Every DAG imports, and follows the project's rules: docs, tags, owner, retries, no wall clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.models.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR), include_examples=False)


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors


def test_every_dag_file_defines_a_dag(dagbag):
    files = {Path(d.fileloc).name for d in dagbag.dags.values()}
    assert files == {p.name for p in DAG_FILES}


def test_dags_follow_project_rules(dagbag):
    assert dagbag.dags, "no DAGs were loaded"
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags and "flywheel" in dag.tags, f"{dag_id}: needs the 'flywheel' tag"
        assert dag.doc_md and len(dag.doc_md.strip()) > 80, f"{dag_id}: needs doc_md"
        assert dag.max_active_runs == 1 or dag.schedule is None, f"{dag_id}: cycles must not overlap"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id}: needs an owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id}: needs retries >= 1"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_wall_clock_or_heavy_imports_at_top_level(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"now", "utcnow", "today"}:
            pytest.fail(f"{path.name}:{node.lineno}: dates must come from the run, not {node.attr}()")
    heavy = {"torch", "transformers", "peft", "datasets", "great_expectations", "duckdb"}
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in heavy, f"{path.name}: heavy import {name} at parse time"


CYCLE_ORDER = [
    "gate_raw_window",
    "validate_and_quarantine",
    "filter_candidates",
    "sample_for_review",
    "wait_for_review",
    "calibrate_filters",
    "build_dataset",
    "gate_training_set",
    "train_lora",
    "train_twin_without_newest_window",
    "evaluate_golden_set",
    "promote_if_better",
    "record_cycle_metrics",
    "write_report",
]


@pytest.mark.parametrize(
    ("dag_id", "extract"),
    [("flywheel_weekly", "extract_window"), ("flywheel_monthly", "extract_window"), ("flywheel_bootstrap", "extract_bootstrap")],
)
def test_cycle_graphs_read_as_the_cycle(dagbag, dag_id, extract):
    dag = dagbag.dags[dag_id]
    order = [extract, *CYCLE_ORDER]
    assert {t.task_id for t in dag.tasks} == set(order)
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.get_task("record_cycle_metrics").trigger_rule == "none_failed"
    assert dag.get_task("write_report").trigger_rule == "none_failed"
    from flywheel_airflow.review_sensor import WaitForReviewSensor

    assert isinstance(dag.get_task("wait_for_review"), WaitForReviewSensor)
    # Every decision on a challenger updates the asset the A/B monitor follows.
    assert [a.uri for a in dag.get_task("promote_if_better").outlets] == ["flywheel://registry/model-decision"]


def test_monthly_and_bootstrap_overrides_apply_to_every_task(dagbag):
    monthly = dagbag.dags["flywheel_monthly"]
    assert monthly.timetable._expression == "0 6 1 * *"
    for task in monthly.tasks:
        assert task.config_overrides["extract.window_days"] == 28, task.task_id
        assert task.config_overrides["extract.include_gold"] is True
    bootstrap = dagbag.dags["flywheel_bootstrap"]
    assert bootstrap.schedule is None  # by hand only
    assert {"labels_path", "synthetic_per_task_type"} <= set(bootstrap.params)
    for task in bootstrap.tasks:
        assert task.config_overrides["extract.lag_days"] == 0, task.task_id


def test_every_task_alerts_on_failure(dagbag):
    """A failed task (a failed gate above all) must reach operators: the alert notifier is set."""
    from flywheel_airflow.notifiers import FlywheelAlertNotifier

    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert any(isinstance(c, FlywheelAlertNotifier) for c in callbacks), f"{dag_id}.{task.task_id}"


def test_weekly_schedule_and_params(dagbag):
    from airflow.timetables.trigger import CronTriggerTimetable

    dag = dagbag.dags["flywheel_weekly"]
    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable._expression == "0 0 * * 1"
    assert dag.catchup is False
    assert dag.params["lag_days"] is None  # empty: the config's extract.lag_days decides
    for name in ("window_days", "window_start", "min_quality_score", "epochs", "learning_rate", "min_improvement",
                 "base_model", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "batch_size", "max_length", "seed"):
        assert name in dag.params and dag.params[name] is None
    assert dag.params["dry_run"] is False and dag.params["skip_training"] is False
    assert dag.params["force_review"] is None


def test_params_map_onto_config_keys():
    """Each DAG param that overrides config names a real config key, and the override applies."""
    from flywheel.config import load_config
    from flywheel.runconfig import OVERRIDE_KEYS, build_run_config

    base = load_config()
    cfg = build_run_config(base, params={"lag_days": 7, "min_quality_score": 0.75, "epochs": None, "lora_r": 4,
                                         "target_modules": ["q_proj", "v_proj"]}).config  # fmt: skip
    assert cfg.extract.lag_days == 7
    assert cfg.filters.min_quality_score == 0.75
    assert cfg.training.lora_r == 4 and cfg.training.target_modules == ["q_proj", "v_proj"]
    # A run's params beat the DAG's fixed overrides: force_review samples a monthly run.
    monthly = build_run_config(base, params={"force_review": True},
                               dag_overrides={"review.enabled": False, "extract.window_days": 28}).config  # fmt: skip
    assert monthly.review.enabled is True and monthly.extract.window_days == 28
    for dotted in OVERRIDE_KEYS.values():
        section, key = dotted.split(".")
        assert hasattr(getattr(cfg, section), key), dotted


@pytest.mark.parametrize(("dag_id", "lag", "window"), [("flywheel_weekly", 14, 7), ("flywheel_monthly", 14, 28),
                                                       ("flywheel_bootstrap", 0, 14)])  # fmt: skip
def test_an_untouched_form_leaves_the_window_to_the_config(dagbag, dag_id, lag, window):
    """Every DAG's params are the table's, at their defaults: a run triggered without changing
    them gets the YAML's lag and window, with the DAG's own overrides (the bootstrap's zero lag),
    and the descriptions show those values."""
    from flywheel.config import load_config
    from flywheel.runconfig import PARAMS_BY_NAME, build_run_config

    dag = dagbag.dags[dag_id]
    form = {name: dag.params[name] for name in dag.params}
    assert set(form) <= set(PARAMS_BY_NAME)
    assert all(form[name] == PARAMS_BY_NAME[name].default for name in form)
    overrides = dag.get_task("filter_candidates").config_overrides
    config = build_run_config(load_config(), dag_overrides=overrides, params=form).config
    assert (config.extract.lag_days, config.extract.window_days) == (lag, window)
    described = {name: dag.params.get_param(name).description for name in ("lag_days", "window_days")}
    assert described == {"lag_days": PARAMS_BY_NAME["lag_days"].describe(config),
                         "window_days": PARAMS_BY_NAME["window_days"].describe(config)}  # fmt: skip
    assert described["lag_days"].endswith(f"(config: extract.lag_days = {lag})")


def test_gate_validation_and_review_tasks_carry_their_links(dagbag, tmp_path):
    """The buttons on a task's page: a gate's Data Docs and its cycle's quarantine, the Review
    page at the review sensor; they survive DAG serialisation (the UI reads them from there)."""
    from airflow.serialization.serialized_objects import SerializedDAG

    from flywheel.config import FlywheelConfig
    from flywheel_airflow.links import links_for

    dag = dagbag.dags["flywheel_weekly"]
    expected = {"gate_raw_window": {"Data Docs", "Quarantine"}, "gate_training_set": {"Data Docs"},
                "validate_and_quarantine": {"Quarantine"}, "wait_for_review": {"Review"}}  # fmt: skip
    for task_id, names in expected.items():
        assert {link.name for link in dag.get_task(task_id).operator_extra_links} == names, task_id
    serialized = SerializedDAG.to_dict(dag)["dag"]["tasks"]
    by_id = {t["__var"]["task_id"]: t["__var"] for t in serialized}
    assert set(by_id["gate_raw_window"]["_operator_extra_links"]) == {"Data Docs", "Quarantine"}
    config = FlywheelConfig(home=tmp_path).with_overrides({"alerts.airflow_base_url": "https://airflow.example.com/"})
    gate = dag.get_task("gate_raw_window")
    urls = links_for(gate, config, "flywheel_weekly-20260302T0000", "raw_window")
    assert urls == {"Data Docs": "https://airflow.example.com/flywheel/gates/flywheel_weekly-20260302T0000/raw_window",
                    "Quarantine": "https://airflow.example.com/flywheel/quarantine?cycle_id=flywheel_weekly-20260302T0000"}  # fmt: skip
    gate.flywheel_links = urls
    assert [link.get_link(gate, ti_key=None) for link in gate.operator_extra_links] == list(urls.values())


def test_an_empty_optional_number_is_valid_in_the_form_and_a_set_one_keeps_its_bounds(dagbag):
    """The trigger form passes a top-level ``minimum``/``maximum`` to its number input, which
    marks an empty field invalid; an empty optional number means "the config decides", so its
    bounds live under ``allOf``, where Airflow's JSON-schema check still applies them."""
    from airflow.exceptions import ParamValidationError

    params = dagbag.dags["flywheel_weekly"].params
    bounded = {"window_days": (1, 0), "lora_r": (1, 0), "batch_size": (1, 0), "max_length": (9, 8),
               "min_quality_score": (1, 1.5), "lag_days": (0, -1)}  # fmt: skip
    for name, (good, bad) in bounded.items():
        param = params.get_param(name)
        assert not {"minimum", "maximum"} & set(param.schema), (name, param.schema)
        assert param.resolve(value=None) is None
        assert param.resolve(value=good) == good
        with pytest.raises(ParamValidationError):
            param.resolve(value=bad)
    # only number bounds move: a format stays where the form reads it (the date picker)
    assert params.get_param("window_start").schema["format"] == "date"


def test_the_retry_delay_is_set_where_the_dag_is_parsed(dagbag, monkeypatch):
    from datetime import timedelta

    from flywheel_airflow.cycle_dag import retry_delay

    assert all(t.retry_delay == timedelta(minutes=2) for t in dagbag.dags["flywheel_weekly"].tasks)  # the default
    monkeypatch.setenv("FLYWHEEL_RETRY_DELAY_SECONDS", "10")
    assert retry_delay() == timedelta(seconds=10)
    monkeypatch.setenv("FLYWHEEL_RETRY_DELAY_SECONDS", "2m")
    with pytest.raises(ValueError, match="whole number of seconds"):
        retry_delay()


def test_the_conf_guard_knows_each_cycle_dags_params(dagbag):
    """The API server's guard refuses exactly the conf keys that are none of a cycle DAG's
    params: its list of cycle DAGs and their params is the DAG files' own."""
    from flywheel_airflow.conf_guard import CYCLE_DAGS, known_params

    cycles = {dag_id for dag_id, dag in dagbag.dags.items() if "labels_path" in dag.params or "epochs" in dag.params}
    assert cycles == set(CYCLE_DAGS)
    for dag_id in CYCLE_DAGS:
        assert known_params(dag_id) == set(dagbag.dags[dag_id].params.keys()), dag_id
    assert known_params("ab_monitor") is None
