"""A run's config, built one way: the precedence (each layer beats the one below, read from a
real warehouse's cycles and calibrations), the lag that reaches the window, and the params
declared once (the override map and the DAGs' params agree with the table)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.config import FlywheelConfig, load_config
from flywheel.cycle import make_cycle
from flywheel.errors import ConfigError
from flywheel.runconfig import OVERRIDE_KEYS, RUN_PARAMS, build_run_config, param_overrides
from flywheel.tables import rows_to_table

T = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday: the run's logical date
PHASED = T - timedelta(days=14)  # a cycle before it ended in growth
CALIBRATED = T - timedelta(days=7)  # a later cycle's calibration was adopted
# What a DAG passes for a form left as it is: every param at its default.
EMPTY_FORM = {p.name: p.default for p in RUN_PARAMS if not p.bootstrap_only}


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))


def _yaml(tmp_path, text: str) -> FlywheelConfig:
    path = tmp_path / "flywheel.yaml"
    path.write_text(text)
    return load_config(path)


@pytest.fixture
def base(tmp_path) -> FlywheelConfig:
    """The YAML: a quality threshold of its own, and a growth policy that moves it."""
    return _yaml(tmp_path, "extract:\n  lag_days: 21\nfilters:\n  min_quality_score: 0.5\n"
                           "phases:\n  policy:\n    growth:\n      filters.min_quality_score: 0.55\n")  # fmt: skip


@pytest.fixture
def history(wh):
    """A warehouse where a cycle ended in growth, and a later one's calibration was adopted."""
    cycle = {"cycle_id": "c1", "dag_id": "flywheel_weekly", "logical_date": PHASED, "window_start": PHASED,
             "window_end": PHASED, "rows_in_window": 1, "quarantined": 0, "kept": 1, "rejected": 0, "pass_rate": 1.0,
             "promoted": False, "phase": "growth", "finished_at": PHASED}  # fmt: skip
    wh.merge("cycles", rows_to_table("cycles", [cycle]))
    fit = {"version_id": "v2", "cycle_id": "c2", "logical_date": CALIBRATED,
           "overrides_json": json.dumps({"filters.min_quality_score": 0.65}), "n_reviews": 40, "agreement_before": 0.7,
           "agreement_after": 0.8, "per_rule_json": "{}", "adopted": True, "created_at": CALIBRATED}  # fmt: skip
    wh.merge("config_versions", rows_to_table("config_versions", [fit]))
    return wh


def test_each_layer_beats_the_one_below(base, history):
    def threshold(**kw) -> float:
        return build_run_config(base, **kw).config.filters.min_quality_score

    assert threshold() == 0.5  # the YAML
    # before any cycle: cold start, whose policy (none in this YAML) leaves the YAML's value
    assert threshold(warehouse=history, logical_date=PHASED) == 0.5
    between = PHASED + timedelta(days=1)  # after the growth cycle, before the calibration
    assert threshold(warehouse=history, logical_date=between) == 0.55  # phase policy > YAML
    assert threshold(warehouse=history, logical_date=T) == 0.65  # calibration > phase policy
    dag = {"filters.min_quality_score": 0.7}
    assert threshold(warehouse=history, logical_date=T, dag_overrides=dag) == 0.7  # DAG > calibration
    params = {**EMPTY_FORM, "min_quality_score": 0.75}
    assert threshold(warehouse=history, logical_date=T, dag_overrides=dag, params=params) == 0.75  # params > DAG
    # An empty param keeps every layer below it.
    assert threshold(warehouse=history, logical_date=T, dag_overrides=dag, params=EMPTY_FORM) == 0.7


def test_the_phase_is_reported_and_read_only_from_before_the_date(base, history):
    assert build_run_config(base, warehouse=history, logical_date=T).phase == "growth"
    assert build_run_config(base, warehouse=history, logical_date=PHASED).phase == "cold_start"


def test_without_a_warehouse_or_a_date_phase_and_calibration_are_skipped(base, history):
    for run in (build_run_config(base, warehouse=history), build_run_config(base, logical_date=T)):
        assert run.phase is None and run.config.filters.min_quality_score == 0.5


def test_a_fresh_warehouse_gets_its_schema_and_the_cold_start_policy(base, tmp_path):
    from flywheel.warehouse.duckdb import DuckDBWarehouse

    fresh = DuckDBWarehouse(tmp_path / "fresh.duckdb", lock_timeout_s=5)
    assert build_run_config(base, warehouse=fresh, logical_date=T).phase == "cold_start"


def test_the_yaml_lag_reaches_the_window_when_the_param_is_empty(base, history):
    def window_end(**kw) -> datetime:
        run = build_run_config(base, warehouse=history, logical_date=T, **kw)
        return make_cycle("flywheel_weekly", data_interval_end=T, logical_date=T, config=run.config).window.end

    assert window_end(params=EMPTY_FORM) == T - timedelta(days=21)  # the YAML's lag, not a param default
    assert window_end(params={**EMPTY_FORM, "lag_days": 3}) == T - timedelta(days=3)  # the param beats it
    # The bootstrap's zero lag is a DAG override: it holds with the param empty, and yields to it.
    assert window_end(dag_overrides={"extract.lag_days": 0}, params=EMPTY_FORM) == T
    assert window_end(dag_overrides={"extract.lag_days": 0}, params={"lag_days": 7}) == T - timedelta(days=7)


def test_run_only_params_steer_the_run_without_touching_the_config(base):
    run = build_run_config(base, params={**EMPTY_FORM, "window_start": "2026-02-01", "dry_run": True})
    assert run.window_start == datetime(2026, 2, 1) and run.dry_run is True
    assert run.config == build_run_config(base).config
    assert build_run_config(base, params=EMPTY_FORM).window_start is None
    with pytest.raises(ConfigError, match="window_start"):
        build_run_config(base, params={"window_start": "next monday"})


def test_an_unknown_param_is_an_error_not_ignored(base):
    with pytest.raises(ConfigError, match=r"unknown run params \['lag_day'\]"):
        build_run_config(base, params={"lag_day": 3})


@pytest.mark.parametrize(
    ("name", "value"),
    [("lag_days", "7"), ("lag_days", 7.5), ("lag_days", True), ("dry_run", 1), ("min_quality_score", "0.7"),
     ("target_modules", "q_proj"), ("base_model", 3)],
)  # fmt: skip
def test_a_param_travels_as_its_type(base, name, value):
    with pytest.raises(ConfigError, match=f"run param '{name}' takes"):
        build_run_config(base, params={name: value})


@pytest.mark.parametrize(
    ("value", "why"),
    [("../../etc/passwd", "'..' segments"), ("x/../y", "'..' segments"), ("Qwen/Qwen2 0.5B", "without spaces"),
     ("/etc/passwd", "neither a model id"), ("/tmp", "no config.json"), ("org/name/extra", "neither a model id")],
)  # fmt: skip
def test_base_model_is_a_model_id_or_a_model_folder(base, value, why):
    import re

    from flywheel.runconfig import MODEL_REFERENCE_PATTERN

    with pytest.raises(ConfigError, match=re.escape(why)):
        build_run_config(base, params={"base_model": value})
    # The trigger form's schema turns away the same traversal and spaces before a run is queued.
    assert (re.match(MODEL_REFERENCE_PATTERN, value) is None) == (why in ("'..' segments", "without spaces"))


def test_base_model_takes_hub_ids_uris_and_model_folders(base, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    for value in ("tiny-llama", "Qwen/Qwen2.5-0.5B-Instruct", "gs://models/llama", str(tmp_path)):
        assert build_run_config(base, params={"base_model": value}).config.training.base_model == value


def test_typed_params_reach_their_keys(base):
    cfg = build_run_config(base, params={"lag_days": 7, "min_quality_score": 1, "lora_r": 4, "force_review": False,
                                         "target_modules": ["q_proj"], "epochs": None}).config  # fmt: skip
    assert cfg.extract.lag_days == 7 and cfg.filters.min_quality_score == 1.0 and cfg.training.lora_r == 4
    assert cfg.review.enabled is False and cfg.training.target_modules == ["q_proj"]
    assert cfg.training.epochs == base.training.epochs
    with pytest.raises(ConfigError, match="invalid flywheel config"):  # bounds: the config's own validation
        build_run_config(base, params={"min_quality_score": 1.5})


def test_the_override_map_is_the_table():
    names = [p.name for p in RUN_PARAMS]
    assert len(names) == len(set(names))
    assert OVERRIDE_KEYS == {p.name: p.config_key for p in RUN_PARAMS if p.config_key}
    assert {"dry_run", "skip_training", "window_start"} == set(names) - set(OVERRIDE_KEYS)
    config = FlywheelConfig()
    for name, dotted in OVERRIDE_KEYS.items():
        section, key = dotted.split(".")
        assert key in type(getattr(config, section)).model_fields, dotted
        sample = {"integer": 1, "number": 0.5, "boolean": True, "string": "x", "array": ["q_proj"]}
        value = sample[next(p.type for p in RUN_PARAMS if p.name == name)]
        assert param_overrides({name: value}) == {dotted: value}
    # The failure notifier leaves the params out: none may decide where an alert goes.
    assert not [k for k in OVERRIDE_KEYS.values() if k.split(".")[0] in {"alerts", "warehouse"}]


def test_descriptions_read_the_configured_value(base):
    by_name = {p.name: p for p in RUN_PARAMS}
    assert by_name["lag_days"].describe(base).endswith("(config: extract.lag_days = 21)")
    assert "(config: filters.min_quality_score = 0.5)" in by_name["min_quality_score"].describe(base)
    assert by_name["force_review"].describe(base).endswith("(config: review.enabled = true)")
    assert by_name["lag_days"].describe(None).endswith("(config: extract.lag_days)")
    assert by_name["dry_run"].describe(base) == by_name["dry_run"].about


def test_the_dag_params_are_generated_from_the_table(tmp_path, monkeypatch):
    from airflow.sdk import Param

    from flywheel_airflow.cycle_dag import cycle_params

    weekly = cycle_params()
    assert list(weekly) == [p.name for p in RUN_PARAMS if not p.bootstrap_only]
    for p in RUN_PARAMS:
        if p.bootstrap_only:
            continue
        param = weekly[p.name]
        assert isinstance(param, Param) and param.value == p.default, p.name
        assert param.schema == {"type": p.json_type, **p.json_schema}, p.name
        assert param.description == p.describe(load_config()), p.name
    assert weekly["lag_days"].value is None and weekly["lag_days"].description.endswith("extract.lag_days = 14)")
    bootstrap = cycle_params({"extract.lag_days": 0, "extract.window_days": 14}, bootstrap=True)
    assert list(bootstrap) == [p.name for p in RUN_PARAMS]
    assert bootstrap["lag_days"].description.endswith("(config: extract.lag_days = 0)")
    assert bootstrap["window_days"].description.endswith("(config: extract.window_days = 14)")
    # A YAML that does not load still gives the DAG its params, naming the keys only.
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "missing.yaml"))
    assert cycle_params()["lag_days"].description.endswith("(config: extract.lag_days)")
