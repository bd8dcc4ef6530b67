"""The one validated configuration: YAML defaults, dotted overrides, errors as ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flywheel.config import DEFAULT_CONFIG_PATH, FlywheelConfig, load_config
from flywheel.errors import ConfigError


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))


@pytest.fixture
def config() -> FlywheelConfig:
    return load_config()


def test_default_config_loads_and_matches_yaml(config, tmp_path):
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    assert config.model_dump() == {
        section: {**FlywheelConfig().model_dump()[section], **values}
        for section, values in raw.items()
    }
    assert config.home == (tmp_path / "home").resolve()


def test_method_defaults(config):
    assert config.extract.lag_days == 14 and config.extract.window_days == 7
    assert config.filters.min_words == 20 and config.filters.min_tokens == 50
    assert config.filters.length_counts == "response"  # the method counts the response alone
    assert config.filters.min_quality_score == 0.6
    assert config.filters.allowed_actions == ["accepted", "copied", "corrected"]
    assert config.evaluation.min_improvement == 0.0


def test_code_defaults_match_method():
    c = FlywheelConfig(home=Path("/x"))
    assert (
        c.extract.lag_days,
        c.filters.length_counts,
        c.filters.min_words,
        c.filters.min_tokens,
        c.filters.min_quality_score,
    ) == (14, "response", 20, 50, 0.6)
    both = c.with_overrides({"filters.length_counts": "prompt_and_response"})
    assert both.filters.length_counts == "prompt_and_response"


def test_paths_resolve_against_home(tmp_path):
    c = FlywheelConfig(home=tmp_path)
    assert c.duckdb_path == tmp_path / "warehouse.duckdb"
    assert c.artefacts_root == tmp_path / "artefacts"
    assert c.resolve("/abs/file") == Path("/abs/file")


def test_with_overrides_returns_new_validated_object(config):
    new = config.with_overrides({"extract.lag_days": 7, "filters.min_words": 5})
    assert new is not config
    assert new.extract.lag_days == 7 and new.filters.min_words == 5
    assert config.extract.lag_days == 14  # the original is untouched
    assert new.home == config.home
    assert new.extract.window_days == config.extract.window_days


def test_with_overrides_coerces_and_skips_none(config):
    new = config.with_overrides({"extract.lag_days": "3", "training.seed": None})
    assert new.extract.lag_days == 3
    assert new.training.seed == config.training.seed


@pytest.mark.parametrize("overrides", [None, {}])
def test_no_overrides_is_a_no_op(config, overrides):
    assert config.with_overrides(overrides) is config


@pytest.mark.parametrize(
    "key", ["extract.lag_dayz", "nosuch.lag_days", "extract", "home", "extract.lag_days.x"]
)
def test_unknown_override_key(config, key):
    with pytest.raises(ConfigError, match="unknown config key"):
        config.with_overrides({key: 1})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("filters.min_quality_score", 1.5),
        ("filters.min_quality_score", -0.1),
        ("extract.lag_days", -1),
        ("extract.window_days", 0),
        ("extract.lag_days", "seven"),
        ("warehouse.backend", "oracle"),
        ("filters.allowed_actions", ["accepted", "liked"]),
    ],
)
def test_invalid_override_value(config, key, value):
    with pytest.raises(ConfigError, match="invalid flywheel config"):
        config.with_overrides({key: value})


def test_unknown_action_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("filters:\n  allowed_actions: [accepted, liked]\n")
    with pytest.raises(ConfigError, match="liked"):
        load_config(path)


def test_unknown_section_or_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("extract:\n  lag_dayz: 3\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_flywheel_config_env_var(monkeypatch, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("extract:\n  lag_days: 3\n")
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(path))
    c = load_config()
    assert c.extract.lag_days == 3
    assert c.filters.min_words == 20  # unset keys keep their defaults


def test_flywheel_config_env_var_to_missing_file(monkeypatch, tmp_path):
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        load_config()


def test_empty_yaml_is_all_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert load_config(path).model_dump() == FlywheelConfig().model_dump()


def test_non_mapping_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_yaml_syntax_error_is_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("extract: [lag_days: 3\n")
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("filters.pii_entities", ["EMAIL_ADDRESS", "PASSPORT"], "unsupported entities"),
        ("filters.pii_policy", "mask", "pii_policy"),
        ("filters.length_counts", "prompt", "length_counts"),
        ("filters.score_weights", {"quality": 1.0, "vibes": 1.0}, "score_weights"),
        ("filters.toxicity_scorer", "perspective", "toxicity_scorer"),
        ("filters.keep_fraction", 0.0, "keep_fraction"),
        ("gates.volume_band", [0.5], "volume_band"),
    ],
)
def test_filter_and_gate_settings_are_validated(config, key, value, message):
    with pytest.raises(ConfigError, match=message):
        config.with_overrides({key: value})


def test_method_filter_defaults(config):
    f = FlywheelConfig().filters
    assert f.max_toxicity == 0.1  # the method's threshold, for a calibrated classifier
    assert config.filters.pii_policy == "redact" and config.filters.keep_fraction == 0.3
    assert config.gates.enabled and config.gates.max_invalid_share == 0.05
