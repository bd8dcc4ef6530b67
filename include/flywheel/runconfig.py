"""A run's config, built one way for every caller, and the run params, declared once.

Stage operators, the review sensor, the A/B monitor, the failure notifier and the demo all get
the config a run stands for from `build_run_config`, so none of them can see a threshold that
another one does not. `RUN_PARAMS` is the one table of the params an operator may set when
triggering a run: the DAGs' ``Param`` objects (built in ``flywheel_airflow.cycle_dag``) and the
override map (`OVERRIDE_KEYS`) are both generated from it, so a param cannot be offered in the
UI without reaching the config, or reach a config key it does not name.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flywheel.config import FlywheelConfig
from flywheel.data.extract import as_utc
from flywheel.errors import ConfigError
from flywheel.ops.phases import apply_policy, phase_before
from flywheel.review.calibrate import overrides_before
from flywheel.warehouse import Warehouse

log = logging.getLogger(__name__)

# Each DAG's fixed overrides (layer 4 of `build_run_config`), here rather than in the DAG files
# so that a cycle run in process (`flywheel.cycle.inprocess`) is the same cycle as the DAG's.
DAG_OVERRIDES: dict[str, dict[str, Any]] = {
    "flywheel_weekly": {},
    "flywheel_bootstrap": {
        "extract.lag_days": 0,
        "extract.window_days": 14,  # beta traffic: the two weeks before the run
        "filters.keep_fraction": 1.0,  # every example that passes the filters: data is scarce
        "review.enabled": False,  # manual labels are reviewed already; there is no champion to prioritise for
        "experiment.enabled": False,  # model v1 replaces the bare base model on the offline gate alone
    },
    "flywheel_monthly": {
        "extract.window_days": 28,
        "extract.include_gold": True,
        "filters.dedup_against_history": False,
        "review.enabled": False,  # the weeks' samples were reviewed; the month is calibrated on them
        "evaluation.compare_new_data": True,  # a twin without the newest week: did the new data help?
    },
}

# What a set value of each JSON-schema type must be in Python (bool is an int: checked apart).
_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "string": str,
    "array": list,
}


_NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


@dataclass(frozen=True)
class RunParam:
    """One param an operator may set when triggering a run.

    ``default`` None makes the param nullable: left empty, the config decides (the YAML, the
    phase policy, the calibration, the DAG's overrides). ``config_key`` None marks a run-only
    param (``dry_run``, ``window_start``) that steers the run without being a config value."""

    name: str
    type: str  # the JSON-schema type of a set value: integer, number, boolean, string, array
    about: str  # what it does; the configured value is added from the config (`describe`)
    config_key: str | None = None
    schema: Mapping[str, Any] = field(default_factory=dict)  # bounds and formats (JSON schema)
    default: Any = None
    bootstrap_only: bool = False  # only the bootstrap DAG offers it (manual labels, synthetic data)

    @property
    def nullable(self) -> bool:
        return self.default is None

    @property
    def json_type(self) -> str | list[str]:
        return ["null", self.type] if self.nullable else self.type

    @property
    def json_schema(self) -> dict[str, Any]:
        """The param's JSON schema beyond its type. A nullable number's bounds sit under
        ``allOf``: Airflow's trigger form passes a top-level ``minimum`` to its number input,
        which marks the empty field invalid although empty is allowed (it means: the config
        decides); under ``allOf`` the bounds still hold for a set value (JSON Schema checks
        ``minimum`` on numbers only), on the form's submit and in the REST API."""
        bounds = {k: v for k, v in self.schema.items() if k in _NUMBER_BOUNDS}
        if not (self.nullable and bounds):
            return dict(self.schema)
        return {**{k: v for k, v in self.schema.items() if k not in bounds}, "allOf": [bounds]}

    def describe(self, config: FlywheelConfig | None) -> str:
        """The param's description, with the value the run gets when it is left empty (the
        YAML with the DAG's overrides); just the key where no config could be read."""
        if self.config_key is None:
            return self.about
        if config is None:
            return f"{self.about} (config: {self.config_key})"
        section, key = self.config_key.split(".")
        return f"{self.about} (config: {self.config_key} = {_shown(getattr(getattr(config, section), key))})"

    def check(self, value: Any) -> None:
        """A set value must have the param's type: a string where a number belongs is the
        caller's mistake, not something to coerce silently. Some params check more."""
        expected = _PYTHON_TYPES[self.type]
        if isinstance(value, bool) != (self.type == "boolean") or not isinstance(value, expected):
            raise ConfigError(f"run param {self.name!r} takes a {self.type}, got {value!r}")
        if self.name == "base_model" and isinstance(value, str):
            check_model_reference(value)


# A hub model id: a name, or an owner and a name (letters, digits, '.', '_', '-').
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
# In the trigger form's schema: no whitespace or control characters, no '..' path segment.
MODEL_REFERENCE_PATTERN = r"^(?!.*(^|[/\\])\.\.([/\\]|$))[^\s\x00-\x1f]+$"


def check_model_reference(value: str) -> None:
    """A ``base_model`` set for one run: a hub model id (``owner/name``), the built-in
    ``tiny-llama``, a bucket URI, or an existing folder that holds a transformers model. Checked
    on the worker that will load it, when the run's config is built."""
    parts = re.split(r"[/\\]", value.split("://", 1)[-1])
    if not value or any(ch.isspace() or ord(ch) < 32 for ch in value) or ".." in parts:
        raise ConfigError(f"run param 'base_model' {value!r}: a model id or an absolute folder path, "
                          "without spaces, control characters or '..' segments")  # fmt: skip
    folder = Path(value).expanduser()
    if "://" in value or (_MODEL_ID.match(value) and not folder.exists()):
        return
    if not folder.is_dir():
        raise ConfigError(f"run param 'base_model' {value!r} is neither a model id (owner/name) nor an existing model folder")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"run param 'base_model' {value!r}: the folder holds no config.json (not a transformers model)")


def _shown(value: Any) -> str:
    return value if isinstance(value, str) and value else json.dumps(value)


RUN_PARAMS: tuple[RunParam, ...] = (
    RunParam("lag_days", "integer", "Days between the window's end and the run.", "extract.lag_days", {"minimum": 0}),
    RunParam("window_days", "integer", "Window length in days.", "extract.window_days", {"minimum": 1}),
    RunParam("window_start", "string",
             "Override the window: read [window_start, window_start + window_days) instead of the lagged window.",
             schema={"format": "date"}),
    RunParam("dry_run", "boolean", "Run every stage, but never move the champion (the decision is recorded as a dry run).",
             default=False),
    RunParam("skip_training", "boolean",
             "Stop after the training-set gate: no challenger, no evaluation; the cycle is still recorded.", default=False),
    RunParam("force_review", "boolean",
             "true: send this run's sample to human review even where the DAG skips it (monthly, bootstrap); "
             "false: no review this run.", "review.enabled"),
    RunParam("min_quality_score", "number", "Quality filter threshold; calibration and the phase policy may move it.",
             "filters.min_quality_score", {"minimum": 0, "maximum": 1}),
    RunParam("epochs", "number", "LoRA epochs.", "training.epochs", {"exclusiveMinimum": 0}),
    RunParam("learning_rate", "number", "LoRA learning rate.", "training.learning_rate", {"exclusiveMinimum": 0}),
    RunParam("base_model", "string", "Base model: a model id (owner/name) or the absolute path of a model folder.",
             "training.base_model", {"pattern": MODEL_REFERENCE_PATTERN}),
    RunParam("lora_r", "integer", "LoRA rank.", "training.lora_r", {"minimum": 1}),
    RunParam("lora_alpha", "integer", "LoRA alpha.", "training.lora_alpha", {"minimum": 1}),
    RunParam("lora_dropout", "number", "LoRA dropout.", "training.lora_dropout", {"minimum": 0, "exclusiveMaximum": 1}),
    RunParam("target_modules", "array",
             'Layers LoRA adapts: ["attention"] or ["all-linear"] (found in the model), or layer names.', "training.target_modules", {"items": {"type": "string"}}),
    RunParam("batch_size", "integer", "Per-device batch size.", "training.batch_size", {"minimum": 1}),
    RunParam("max_length", "integer", "Max tokens per example.", "training.max_length", {"minimum": 9}),
    RunParam("seed", "integer", "Training seed.", "training.seed"),
    RunParam("min_improvement", "number", "Accuracy margin the challenger must beat.", "evaluation.min_improvement",
             {"minimum": 0}),
    RunParam("compare_new_data", "boolean",
             "true: also train a twin without the window's newest days and report whether they helped; "
             "a window that hurt is flagged and kept out.", "evaluation.compare_new_data"),
    RunParam("labels_path", "string", "CSV/JSONL file or folder of manual labels.", "bootstrap.labels_path",
             bootstrap_only=True),
    RunParam("synthetic_per_task_type", "integer", "Synthetic examples per task type.", "bootstrap.synthetic_per_task_type",
             {"minimum": 0}, bootstrap_only=True),
)  # fmt: skip

PARAMS_BY_NAME: dict[str, RunParam] = {p.name: p for p in RUN_PARAMS}
# param name -> the dotted config key it overrides for one run
OVERRIDE_KEYS: dict[str, str] = {p.name: p.config_key for p in RUN_PARAMS if p.config_key is not None}


def checked_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's params, each known and of its type; empty (None) ones left out. An unknown
    name is an error: a misspelt param must not leave a run on the config it meant to change."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(PARAMS_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown run params {unknown}; known: {sorted(PARAMS_BY_NAME)}")
    for name, value in params.items():
        if value is not None:
            PARAMS_BY_NAME[name].check(value)
    return {name: value for name, value in params.items() if value is not None}


def param_overrides(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The dotted config overrides the run's set params stand for."""
    return {OVERRIDE_KEYS[name]: value for name, value in checked_params(params).items() if name in OVERRIDE_KEYS}


@dataclass(frozen=True)
class RunConfig:
    """The config a run stands for, and what its run-only params ask of it."""

    config: FlywheelConfig
    # The phase whose capture policy applied; None where it was not looked up (no warehouse or
    # no logical date), so the run is on the YAML's values.
    phase: str | None = None
    window_start: datetime | None = None
    dry_run: bool = False


def build_run_config(
    base: FlywheelConfig,
    *,
    warehouse: Warehouse | None = None,
    logical_date: datetime | None = None,
    dag_overrides: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> RunConfig:
    """The run's config. Precedence, lowest first; each layer's keys beat the one before:

    1. the YAML (``base``, as `flywheel.config.load_config` read it);
    2. the capture policy of the phase the flywheel was in before ``logical_date``
       (`flywheel.ops.phases`: ``phases.policy``);
    3. the filter thresholds calibrated on reviews before it (`flywheel.review.calibrate`);
    4. the DAG's fixed overrides (the monthly 28-day window, the bootstrap's zero lag, ...);
    5. the run's params (`RUN_PARAMS`; an empty one keeps the layers below).

    Layers 2 and 3 are read from the cycles and calibrations recorded strictly before the
    logical date, so a rerun or a backfill gets the same config. ``base`` opens the warehouse
    (the warehouse section is the YAML's), which is why it is passed in already loaded.
    """
    given = checked_params(params)
    config, phase = base, None
    if warehouse is not None and logical_date is not None:
        moment = as_utc(logical_date)
        warehouse.ensure_schema()  # a fresh warehouse has no cycles or calibrations to read yet
        phase = phase_before(warehouse, moment)
        config = apply_policy(config, phase).with_overrides(overrides_before(warehouse, moment))
    else:
        # No "before" to read from: layers 2 and 3 are skipped, so no phase's capture policy and
        # the YAML's thresholds. Fine for a caller that reads neither (alerts, the demo's set-up).
        log.debug("run config without phase policy or calibration: %s", "no warehouse" if warehouse is None else "no logical date")
    config = config.with_overrides(dict(dag_overrides or {})).with_overrides(param_overrides(given))
    window_start = given.get("window_start")
    try:
        start = datetime.fromisoformat(window_start) if window_start else None
    except ValueError as exc:
        raise ConfigError(f"run param 'window_start' is not a date: {window_start!r}") from exc
    return RunConfig(config, phase, window_start=start, dry_run=bool(given.get("dry_run")))
