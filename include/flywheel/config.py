"""The one validated flywheel configuration: YAML defaults, overridden per run by DAG params.

Every threshold and knob the stages use comes from here, so that an operator can see (and
change) what a cycle did without reading code.

Why this module is long: one validated section per section of the YAML, each with its fields'
comments; split, the model of one file would be scattered over many.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import jmespath
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flywheel.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "include" / "config" / "flywheel.yaml"
USER_ACTIONS = ("accepted", "copied", "corrected", "regenerated")
LengthCounts = Literal["response", "prompt_and_response"]  # what the length rule counts
# Bucket schemes an artefact root may use, with what must be installed to open them.
REMOTE_SCHEMES = {"s3": "s3fs (and apache-airflow-providers-amazon for its connections)", "gs": "gcsfs (and apache-airflow-providers-google for its connections)"}


def split_root(root: str) -> tuple[str, str]:
    """``(scheme, location)`` of an ``artefacts.root``: scheme ``""`` for a local path."""
    scheme = urlsplit(root).scheme
    if not scheme or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        return "", root
    if scheme == "file":
        return "", urlsplit(root).path
    if scheme not in REMOTE_SCHEMES:
        raise ConfigError(
            f"artefacts.root {root!r}: unsupported scheme {scheme!r}; use a local path, file://, "
            f"{', '.join(s + '://bucket/prefix' for s in sorted(REMOTE_SCHEMES))}"
        )
    if not urlsplit(root).netloc:
        raise ConfigError(f"artefacts.root {root!r}: {scheme}:// needs a bucket ({scheme}://bucket/prefix)")
    return scheme, root.rstrip("/")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WarehouseConfig(_Section):
    """Which warehouse holds the flywheel's tables. Credentials never live here: the cloud
    backends connect through the Airflow connection ``conn_id`` (see `flywheel_airflow.hooks`);
    these fields only name where the tables are, and are validated because they are spliced
    into SQL as identifiers."""

    backend: Literal["duckdb", "bigquery", "snowflake"] = "duckdb"
    duckdb_path: str = "warehouse.duckdb"
    read_batch_rows: int = Field(5000, gt=0)
    # Rows per bulk write (a BigQuery load job, a Snowflake array insert).
    write_batch_rows: int = Field(50000, gt=0)
    conn_id: str = "flywheel_warehouse"
    # BigQuery: the project (empty: the connection's) and dataset holding the tables.
    bigquery_project: str | None = Field(None, pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
    bigquery_dataset: str = Field("flywheel", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,1023}$")
    bigquery_location: str | None = Field(None, pattern=r"^[A-Za-z0-9-]+$")
    # Snowflake: the database (empty: the connection's) and schema holding the tables.
    snowflake_database: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")
    snowflake_schema: str = Field("FLYWHEEL", pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,254}$")


class ArtefactsConfig(_Section):
    """Where datasets, adapters, base models and reports live (`flywheel.artefacts`): a local
    folder (relative to FLYWHEEL_HOME), ``file://``, ``s3://bucket/prefix`` or
    ``gs://bucket/prefix``. Credentials never live here: a bucket is reached through the Airflow
    connection ``conn_id`` (none: the cloud SDK's default credentials)."""

    root: str = "artefacts"
    conn_id: str | None = None
    # With a bucket root: this machine's working copy of the artefacts it writes and fetches.
    cache_dir: str = "artefacts-cache"

    @model_validator(mode="after")
    def _known_scheme(self) -> ArtefactsConfig:
        try:
            split_root(self.root)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self


class ExtractConfig(_Section):
    lag_days: int = Field(14, ge=0)
    window_days: int = Field(7, gt=0)
    # Add every gold example accepted before the cycle (manual labels, approved reviews) to its
    # window: the monthly consolidation retrains on the accumulated gold set.
    include_gold: bool = False


class IngestConfig(_Section):
    """`python -m flywheel.ingest`: log files into the warehouse through the raw layer."""

    # Lines typed and written per batch: memory stays bounded whatever the file's size.
    batch_lines: int = Field(2000, gt=0)
    # A line longer than this is quarantined unparsed (its first 64 KiB kept in the raw layer),
    # so one runaway line cannot exhaust memory. Records near `validation.max_text_chars` in
    # every text field stay far below it.
    max_line_bytes: int = Field(8 * 1024 * 1024, gt=0)
    # What a line of a log file is (`flywheel.data.shapes`): the flywheel's own record, or a shape
    # teams already have: openai_chat, langfuse, otel_genai. `python -m flywheel.ingest --shape`.
    shape: Literal["flywheel", "openai_chat", "langfuse", "otel_genai"] = "flywheel"
    # flywheel field -> JMESPath expression into the line's record, over the shape's defaults.
    fields: dict[str, str] = Field(default_factory=dict)
    # The product's feedback values -> the four actions (thumbs_up: accepted, edit: corrected, ...).
    actions: dict[str, str] = Field(default_factory=dict)
    # A record without a task type: the first rule whose regex matches its prompt names it.
    task_type_rules: list[TaskTypeRule] = Field(default_factory=list)
    # The unit of an epoch timestamp ("s", "ms", "ns"); None: the shape's ("iso" for flywheel).
    timestamp_unit: Literal["iso", "s", "ms", "ns"] | None = None

    @model_validator(mode="after")
    def _valid_mapping(self) -> IngestConfig:
        for name, expr in self.fields.items():  # the names are checked by `flywheel.data.shapes`
            try:
                jmespath.compile(expr)
            except jmespath.exceptions.ParseError as e:
                raise ValueError(f"ingest.fields.{name}: {expr!r} is not a JMESPath expression: {e}") from None
        wrong = {k: v for k, v in self.actions.items() if v not in USER_ACTIONS}
        if wrong:
            raise ValueError(f"ingest.actions: {wrong} map onto no action; the actions are {', '.join(USER_ACTIONS)}")
        return self


# The fields a product's own log table must map: without any of them every row would be
# quarantined (`flywheel.validation` requires them), which is a config error, not bad data.
SOURCE_REQUIRED = ("request_id", "timestamp", "prompt", "response", "user_action", "quality_score")
SOURCE_FIELDS = SOURCE_REQUIRED + (
    "user_id", "correction", "task_type", "model_version", "context", "included_in_training", "ingested_at",
)  # fmt: skip
_SOURCE_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]*(\.[A-Za-z_][A-Za-z0-9_$]*){0,2}$")
_SOURCE_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


class SourceConfig(_Section):
    """The product's own log table or view, read in place by every cycle (`flywheel.warehouse.
    source`): no copy, the same window query and pushdown as the flywheel's ``production_logs``.
    Empty ``table``: the cycles read ``production_logs``, which `flywheel.ingest` and the
    simulator fill."""

    # ``table``, ``dataset.table`` or ``project.dataset.table`` (BigQuery), ``schema.table`` or
    # ``database.schema.table`` (Snowflake, DuckDB), in the warehouse the flywheel uses.
    table: str | None = None
    # flywheel field -> the table's column. request_id, timestamp, prompt, response, user_action
    # and quality_score are required; ingested_at (the row's load time) lets a row with no usable
    # event time reach a cycle, which quarantines it.
    columns: dict[str, str] = Field(default_factory=dict)
    # The table's action values (matched case-insensitively) -> the four actions; a value that is
    # neither mapped nor an action is quarantined with its value.
    actions: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_source(self) -> SourceConfig:
        if self.table is None:
            if self.columns or self.actions:
                raise ValueError("source.columns and source.actions need source.table")
            return self
        if not _SOURCE_TABLE.match(self.table):
            raise ValueError(f"source.table {self.table!r} is not a [project.]dataset.table or [database.]schema.table name")
        unknown = sorted(set(self.columns) - set(SOURCE_FIELDS))
        if unknown:
            raise ValueError(f"source.columns: {unknown} are not flywheel fields; they are {', '.join(SOURCE_FIELDS)}")
        missing = [f for f in SOURCE_REQUIRED if f not in self.columns]
        if missing:
            raise ValueError(f"source.columns must map {missing} onto columns of {self.table}")
        odd = {k: v for k, v in self.columns.items() if not _SOURCE_COLUMN.match(v)}
        if odd:
            raise ValueError(f"source.columns: {odd} are not column names")
        wrong = {k: v for k, v in self.actions.items() if v not in USER_ACTIONS}
        if wrong:
            raise ValueError(f"source.actions: {wrong} map onto no action; the actions are {', '.join(USER_ACTIONS)}")
        self.actions = {k.lower(): v for k, v in self.actions.items()}
        return self


class TaskTypeRule(_Section):
    pattern: str
    task_type: str

    @model_validator(mode="after")
    def _compiles(self) -> TaskTypeRule:
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"ingest.task_type_rules: {self.pattern!r} is not a regular expression: {e}") from None
        return self


PII_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_SSN",
    "CRYPTO",
    "SECRET",  # API keys, tokens, private keys, credentials in URLs (`flywheel.filters.secrets`)
    "US_PASSPORT",  # a passport number named as one ("passport no. X12345678")
    "DATE_OF_BIRTH",  # a date named as a birth date ("DOB: 1984-03-12", "born on 12 March 1984")
    "STREET_ADDRESS",  # a full postal address (US, CA, GB: pyap)
    "PERSON",  # a person's name: a gazetteer, capitals and cue words (`flywheel.filters.names`)
)


class ScaleConfig(_Section):
    """How the cycle's heavy stages spread over workers; results never depend on it."""

    # The filter stage in this many shards (by a hash of request_id), each a mapped task on any
    # worker, then one merge (`flywheel.cycle.filter_shards`); 1: one filter task. Read where the
    # DAG is parsed: a change takes effect with the next parse.
    filter_shards: int = Field(1, ge=1, le=256)


class FiltersConfig(_Section):
    """The method's filters; defaults are the method's own thresholds.

    Each rule of `flywheel.filters.rules` names the fields here that it reads (its
    ``settings``); a new rule's threshold is one more line (why the fields live here and not in
    the rule modules: `flywheel.filters`' docstring)."""

    # The cheap rules: user action, length, quality score (the first and last are decided in
    # the warehouse query, which then withholds the text of the rows they reject).
    allowed_actions: list[str] = Field(default_factory=lambda: ["accepted", "copied", "corrected"])
    # Length: what is counted. The method counts the response (the training target); a product
    # whose answers are a word or two counts the prompt with it, or no answer would pass.
    length_counts: LengthCounts = "response"
    min_words: int = Field(20, ge=0)
    min_tokens: int = Field(50, ge=0)
    min_quality_score: float = Field(0.6, ge=0.0, le=1.0)
    # Toxicity: `profanity_check` (offline, ships its model) or `transformers:<name or path>`.
    toxicity_scorer: str = "profanity_check"
    max_toxicity: float = Field(0.1, ge=0.0, le=1.0)
    # PII (presidio pattern recognizers, no model download): redact in place, or drop the row.
    pii_policy: Literal["redact", "drop"] = "redact"
    pii_entities: list[str] = Field(default_factory=lambda: list(PII_ENTITIES))
    pii_min_score: float = Field(0.4, ge=0.0, le=1.0)
    # Grounding: where a context is given, the share of the answer's content that it supports.
    grounding_scorer: str = "lexical"
    min_grounding: float = Field(0.5, ge=0.0, le=1.0)
    # Dedup (exact: normalised hash; near: MinHash LSH over word shingles).
    near_dup_threshold: float = Field(0.9, gt=0.0, le=1.0)
    minhash_permutations: int = Field(64, ge=16, le=512)
    shingle_words: int = Field(3, ge=1, le=8)
    dedup_against_history: bool = True
    # Decontamination: no kept input may be an exact or near duplicate of a golden-set input.
    decontamination_threshold: float = Field(0.85, gt=0.0, le=1.0)
    # Selection: keep the top share of the window's candidates by composite score, per task type.
    keep_fraction: float = Field(0.3, gt=0.0, le=1.0)
    min_per_task_type: int = Field(5, ge=0)
    score_weights: dict[str, float] = Field(
        default_factory=lambda: {"quality": 0.6, "grounding": 0.1, "non_toxicity": 0.1, "correction": 0.2}
    )

    @model_validator(mode="after")
    def _known_values(self) -> FiltersConfig:
        unknown = sorted(set(self.allowed_actions) - set(USER_ACTIONS))
        if unknown:
            raise ValueError(f"allowed_actions has unknown actions {unknown}; known: {USER_ACTIONS}")
        bad = sorted(set(self.pii_entities) - set(PII_ENTITIES))
        if bad:
            raise ValueError(f"pii_entities has unsupported entities {bad}; supported: {PII_ENTITIES}")
        weights = {"quality", "grounding", "non_toxicity", "correction"}
        if set(self.score_weights) - weights or any(w < 0 for w in self.score_weights.values()):
            raise ValueError(f"score_weights takes non-negative weights for {sorted(weights)}")
        if not (self.toxicity_scorer == "profanity_check" or self.toxicity_scorer.startswith("transformers:")):
            raise ValueError("toxicity_scorer is 'profanity_check' or 'transformers:<model name or path>'")
        if not (self.grounding_scorer == "lexical" or self.grounding_scorer.startswith("transformers:")):
            raise ValueError("grounding_scorer is 'lexical' or 'transformers:<model name or path>'")
        return self


class ValidationConfig(_Section):
    """Structural checks: a row that breaks one goes to quarantine with the reason."""

    max_text_chars: int = Field(20000, gt=0)
    # An event stamped later than its ingestion (plus this skew) is from the future: quarantined.
    max_clock_skew_minutes: float = Field(10.0, ge=0)
    earliest_timestamp: str = "2000-01-01T00:00:00+00:00"
    # Identifiers (a Python regular expression each, matched whole): request and user ids of
    # printable ASCII letters, digits and . _ : @ + = | - (UUIDs, "chatcmpl-...", "user-42",
    # an e-mail address); model versions may add '/' (hub ids: owner/name). Whitespace around
    # an id, zero-width or full-width look-alikes, HTML, path segments and mojibake break it,
    # so two spellings of one id cannot pass as two requests. A product whose ids differ sets
    # its own.
    id_pattern: str = r"[A-Za-z0-9][A-Za-z0-9._:@+=|-]{0,199}"
    model_version_pattern: str = r"[A-Za-z0-9][A-Za-z0-9._:@+=|-]{0,199}(/[A-Za-z0-9][A-Za-z0-9._:@+=|-]{0,199})*"

    @model_validator(mode="after")
    def _patterns_compile(self) -> ValidationConfig:
        for name in ("id_pattern", "model_version_pattern"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise ValueError(f"validation.{name} is not a regular expression: {exc}") from exc
        return self


class GatesConfig(_Section):
    """Great Expectations gates: the raw window and the final training set."""

    enabled: bool = True
    # Raw window: the share of rows allowed to break a structural expectation (nulls, enums,
    # ranges, unique ids). More than this and the gate fails: the source is broken, not noisy.
    max_invalid_share: float = Field(0.05, ge=0.0, le=1.0)
    min_rows: int = Field(50, ge=0)
    # Volume band: rows in the window within [low, high] x the median of recent cycles.
    volume_band: list[float] = Field(default_factory=lambda: [0.5, 2.0], min_length=2, max_length=2)
    volume_history_cycles: int = Field(4, ge=1)
    # Training set: no PII, no golden overlap, balance and length.
    max_task_type_share: float = Field(0.7, gt=0.0, le=1.0)
    min_target_tokens: int = Field(1, ge=0)
    max_target_tokens: int = Field(512, gt=0)


class VelocityConfig(_Section):
    """Flywheel velocity: when a stalled flywheel is called stagnant, and what counts as a cause."""

    stagnation_min_delta: float = Field(0.02, ge=0.0)  # a healthy cycle gains 2-5%
    stagnation_cycles: int = Field(3, ge=1)
    min_examples_per_day: float = Field(20.0, ge=0.0)
    min_pass_rate: float = Field(0.1, ge=0.0, le=1.0)
    saturation_accuracy: float = Field(0.95, gt=0.0, le=1.0)
    max_mix_shift: float = Field(0.2, gt=0.0, le=1.0)


class ReviewConfig(_Section):
    """Human review of a 5-10% sample of each window's candidates (`flywheel.review.items`)."""

    enabled: bool = True
    sample_rate: float = Field(0.08, gt=0.0, le=0.5)  # of the window's valid candidates
    # Of the sample: a uniform random slice over every candidate (kept or not), kept apart
    # from the prioritised one so that calibration measures the filters without bias.
    random_share: float = Field(0.3, ge=0.0, le=1.0)
    min_items: int = Field(10, ge=0)
    reviewers_per_item: int = Field(1, ge=1)
    # The sensor lets the cycle go on once this share of the items has its reviews.
    required_share: float = Field(0.9, gt=0.0, le=1.0)
    deadline_hours: float = Field(72.0, gt=0.0)
    on_deadline: Literal["proceed", "fail"] = "proceed"  # with what is reviewed, or fail + alert
    poll_seconds: float = Field(300.0, gt=0.0)
    # An assignment is a lease: an item handed to a reviewer goes to nobody else for this long.
    lease_minutes: float = Field(30.0, gt=0.0)
    priority_weights: dict[str, float] = Field(
        default_factory=lambda: {"uncertainty": 1.0, "disagreement": 1.0, "behaviour_change": 1.0,
                                 "rare_task": 1.0, "correction": 1.0}
    )  # fmt: skip
    model_signals: bool = True  # uncertainty and behaviour change need the champion loaded

    @model_validator(mode="after")
    def _known_signals(self) -> ReviewConfig:
        known = {"uncertainty", "disagreement", "behaviour_change", "rare_task", "correction"}
        if set(self.priority_weights) - known or any(w < 0 for w in self.priority_weights.values()):
            raise ValueError(f"priority_weights takes non-negative weights for {sorted(known)}")
        return self


class CalibrationConfig(_Section):
    """Filter thresholds fitted to human verdicts on the random review slice (`flywheel.review.calibrate`)."""

    enabled: bool = True
    lookback_days: int = Field(28, gt=0)  # random-slice reviews of the cycles this far back
    min_reviews: int = Field(30, ge=1)
    min_gain: float = Field(0.01, ge=0.0)  # adopt new thresholds only when agreement gains this much
    # Thresholds stay within these bounds whatever the reviews say.
    bounds: dict[str, list[float]] = Field(
        default_factory=lambda: {"min_quality_score": [0.3, 0.9], "max_toxicity": [0.05, 0.9], "min_grounding": [0.2, 0.9]}
    )


PHASES = ("cold_start", "growth", "maturity")


class PhasesConfig(_Section):
    """The method's phases, measured from the champion's golden-set accuracy and the volume of
    examples collected so far (cold start reaches 60-70%, growth climbs, maturity holds 90%+).

    ``policy`` is each phase's capture policy: config overrides (dotted keys) that the cycles
    run under while the flywheel is in that phase. Cold start captures more of what little
    traffic there is, and puts corrections and rare task types first."""

    growth_min_accuracy: float = Field(0.6, ge=0.0, le=1.0)
    maturity_min_accuracy: float = Field(0.9, ge=0.0, le=1.0)
    growth_min_examples: int = Field(500, ge=0)
    maturity_min_examples: int = Field(5000, ge=0)
    policy: dict[str, dict[str, Any]] = Field(default_factory=lambda: {p: dict[str, Any]() for p in PHASES})

    @model_validator(mode="after")
    def _ordered(self) -> PhasesConfig:
        if self.maturity_min_accuracy < self.growth_min_accuracy:
            raise ValueError("maturity_min_accuracy must be >= growth_min_accuracy")
        if self.maturity_min_examples < self.growth_min_examples:
            raise ValueError("maturity_min_examples must be >= growth_min_examples")
        unknown = sorted(set(self.policy) - set(PHASES))
        if unknown:
            raise ValueError(f"policy names unknown phases {unknown}; phases: {PHASES}")
        return self


class BootstrapConfig(_Section):
    """Cold start (`flywheel_bootstrap`): model v1 from synthetic examples, imported manual
    labels and beta-user traffic."""

    # CSV or JSONL file, or a folder of them; columns: prompt, response, task_type, and
    # optionally context, labeler, quality_score. Empty: no manual labels.
    labels_path: str = ""
    synthetic_per_task_type: int = Field(40, ge=0)
    synthetic_seed: int = 99


class AlertsConfig(_Section):
    """Where failure alerts go besides the warehouse's `alerts` table and the task log. A channel
    is used when its Airflow connection exists; credentials live only in the connection."""

    email_to: list[str] = Field(default_factory=list)
    smtp_conn_id: str = "flywheel_smtp"
    slack_conn_id: str = "flywheel_slack"
    airflow_base_url: str = "http://localhost:8080"


class TrainingConfig(_Section):
    base_model: str = "tiny-llama"
    seed: int = 13
    epochs: float = Field(1, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, gt=0)
    max_length: int = Field(160, gt=8)
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # The layers LoRA adapts, found in the loaded model (`flywheel.model.architecture`):
    # "attention" (every linear layer of its attention blocks), "all-linear" (every linear layer
    # but the output head), or a list of layer names, checked against the model.
    target_modules: list[str] | Literal["attention", "all-linear"] = "attention"
    # Weights and compute on a GPU: "auto" is bfloat16 where the GPU supports it, float16 where
    # not, and float32 on a CPU (always float32 there, whatever this says).
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Recompute activations in the backward pass: less memory for longer sequences, ~30% slower.
    gradient_checkpointing: bool = False
    # QLoRA: the base weights in 4 bits (NF4, bitsandbytes; CUDA only), the adapter in `precision`.
    load_in_4bit: bool = False
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    min_examples: int = Field(16, ge=1)
    # A checkpoint every N optimizer steps, in a folder fixed by the cycle: a retried (or
    # killed) training task resumes from the last one instead of starting over.
    checkpoint_steps: int = Field(50, gt=0)
    # Reviewed (gold) examples count this many times a plain one in the loss.
    gold_weight: float = Field(2.0, gt=0)
    # Order the training split easy to hard (shorter exchanges first) instead of shuffling.
    curriculum: bool = False
    # The kept examples of up to this many earlier cycles that the champion has not learnt yet
    # (trained after it, not promoted, and not worse than their champion offline) train again
    # with this cycle's (`flywheel.cycle.dataset`). 0: each cycle trains on its own window only.
    carry_over_cycles: int = Field(0, ge=0)

    @field_validator("target_modules", mode="before")
    @classmethod
    def _one_keyword(cls, value: Any) -> Any:
        """A run param is a list: ``["all-linear"]`` means the keyword, as in the YAML."""
        if isinstance(value, list | tuple) and len(value) == 1 and value[0] in ("attention", "all-linear"):
            return value[0]
        if isinstance(value, list | tuple) and not value:
            raise ValueError("an empty list adapts nothing; use attention, all-linear or layer names")
        return value


class EvaluationConfig(_Section):
    golden_set_size: int = Field(240, gt=0)
    golden_seed: int = 20260101
    max_new_tokens: int = Field(16, gt=0)
    min_improvement: float = Field(0.0, ge=0.0)
    # The offline gate's intervals (paired bootstrap over golden items) and slice rule.
    bootstrap_samples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_seed: int = 17
    max_slice_regression: float = Field(0.05, ge=0.0, le=1.0)
    require_significant: bool = False
    # A curated golden set (JSONL: task_type, prompt, answer[, context]; see `flywheel.evaluation.golden`)
    # instead of the simulator's; and the task types it must cover (None: the simulator's).
    golden_path: str | None = None
    required_task_types: list[str] | None = None
    # The product's task templates (a `flywheel.task_templates` entry point, `flywheel.providers`):
    # the golden set drawn when no golden_path is set, the bootstrap's synthetic examples, and the
    # task types a golden set must cover by default. "simulated": the simulated product's.
    task_templates: str = "simulated"
    # New data vs old data: train a twin without the window's newest `newest_window_days` and
    # compare both on the golden set. A newest window whose model is worse than the twin by more
    # than `max_new_data_regression` is flagged and kept out (the twin goes on in its place).
    compare_new_data: bool = False
    newest_window_days: int = Field(7, gt=0)
    max_new_data_regression: float = Field(0.01, ge=0.0, le=1.0)


class ExperimentConfig(_Section):
    """Online A/B test (`flywheel.evaluation.experiment`) and the guardrails `ab_monitor` enforces."""

    # False: a challenger that passes the offline gate is promoted at once (no A/B).
    enabled: bool = True
    ramp: list[float] = Field(default_factory=lambda: [0.05, 0.2, 0.5])
    # Challenger rows needed at a ramp step (with no guardrail breach) before the next step.
    min_rows_per_step: int = Field(50, gt=0)
    # Power calculation for the acceptance rate (accepted + copied): the smallest absolute lift
    # worth detecting, the test's one-sided alpha and its power.
    min_detectable_effect: float = Field(0.05, gt=0.0, lt=1.0)
    alpha: float = Field(0.05, gt=0.0, lt=0.5)
    power: float = Field(0.8, gt=0.5, lt=1.0)
    # No significant difference after this many times the planned sample: stop, keep the champion.
    max_sample_factor: float = Field(3.0, ge=1.0)
    # Guardrails, judged on at least guardrail_min_rows rows per arm: the challenger's (or a
    # newly promoted champion's) acceptance rate below the baseline's by more than this, and
    # significantly so; a toxic-answer share or an error (empty answer) share above these.
    guardrail_min_rows: int = Field(30, gt=0)
    max_acceptance_drop: float = Field(0.1, gt=0.0, lt=1.0)
    max_toxic_share: float = Field(0.02, ge=0.0, le=1.0)
    max_error_share: float = Field(0.05, ge=0.0, le=1.0)
    # A promoted champion stays watched this long against its predecessor's last days.
    watch_days: float = Field(7, gt=0)
    bucket_salt: str = "flywheel-ab"

    @model_validator(mode="after")
    def _ramp_increases(self) -> ExperimentConfig:
        if not self.ramp or any(not 0 < s <= 1 for s in self.ramp) or self.ramp != sorted(set(self.ramp)):
            raise ValueError(f"experiment.ramp must be increasing traffic shares in (0, 1], got {self.ramp}")
        return self


class SimulateConfig(_Section):
    requests_per_week: int = Field(1200, gt=0)
    seed: int = 7
    malformed_rate: float = Field(0.01, ge=0.0, le=1.0)
    adversarial_rate: float = Field(0.02, ge=0.0, le=1.0)
    pii_rate: float = Field(0.0, ge=0.0, le=1.0)
    toxic_rate: float = Field(0.0, ge=0.0, le=1.0)
    # Poisoned feedback: users who accept wrong answers, in a way that fools the product's
    # automatic quality estimate (the negative-flywheel scenario).
    poison_rate: float = Field(0.0, ge=0.0, le=1.0)


class TinyModelConfig(_Section):
    vocab_size: int = Field(800, gt=64)
    hidden_size: int = Field(96, gt=0)
    intermediate_size: int = Field(256, gt=0)
    num_hidden_layers: int = Field(3, gt=0)
    num_attention_heads: int = Field(4, gt=0)
    num_key_value_heads: int = Field(2, gt=0)
    max_position_embeddings: int = Field(256, gt=0)
    pretrain_examples: int = Field(6000, gt=0)
    pretrain_epochs: float = Field(3, gt=0)
    pretrain_learning_rate: float = Field(4e-3, gt=0)
    seed: int = 11


class FlywheelConfig(_Section):
    warehouse: WarehouseConfig = Field(default_factory=WarehouseConfig)
    artefacts: ArtefactsConfig = Field(default_factory=ArtefactsConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    velocity: VelocityConfig = Field(default_factory=VelocityConfig)
    phases: PhasesConfig = Field(default_factory=PhasesConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)

    # Where relative paths resolve; not part of the YAML.
    home: Path = Field(default_factory=lambda: flywheel_home(), exclude=True)

    @model_validator(mode="after")
    def _policy_keys_exist(self) -> FlywheelConfig:
        for phase, overrides in self.phases.policy.items():
            for dotted in overrides:
                section, _, key = dotted.partition(".")
                model = getattr(self, section, None)
                if not isinstance(model, _Section) or key not in type(model).model_fields:
                    raise ValueError(f"phases.policy.{phase} overrides unknown config key {dotted!r}")
        return self

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.home / p

    @property
    def artefacts_root(self) -> Path:
        """The local folder artefacts are written to and read from: the root itself, or, for a
        bucket root, this machine's cache of it (`flywheel.artefacts.ArtefactStore`)."""
        scheme, location = split_root(self.artefacts.root)
        return self.resolve(self.artefacts.cache_dir if scheme else location)

    @property
    def duckdb_path(self) -> Path:
        return self.resolve(self.warehouse.duckdb_path)

    def with_overrides(self, overrides: dict[str, Any] | None) -> FlywheelConfig:
        """A copy with dotted-key overrides applied (``{"extract.lag_days": 7}``), re-validated."""
        if not overrides:
            return self
        data = self.model_dump()
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            if not key or section not in data or key not in data[section]:
                raise ConfigError(f"unknown config key {dotted!r} in overrides")
            data[section][key] = value
        return _validate(data, home=self.home, source="overrides")


def flywheel_home() -> Path:
    return Path(os.environ.get("FLYWHEEL_HOME", PROJECT_ROOT / "data")).resolve()


def _validate(data: dict[str, Any], *, home: Path, source: str) -> FlywheelConfig:
    try:
        return FlywheelConfig.model_validate({**data, "home": home})
    except ValidationError as exc:
        raise ConfigError(f"invalid flywheel config ({source}):\n{exc}") from exc


def load_config(path: str | os.PathLike[str] | None = None) -> FlywheelConfig:
    """Load the YAML named by ``path``, else ``$FLYWHEEL_CONFIG``, else the project default."""
    path = Path(path or os.environ.get("FLYWHEEL_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"flywheel config not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"flywheel config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"flywheel config {path} must be a mapping at top level")
    return _validate(data, home=flywheel_home(), source=str(path))
