"""The flywheel record, the warehouse tables' schemas, and row validation with reasons.

Production logs are stored loosely typed (every column nullable, the action a free string), so
that a malformed row still lands in the warehouse and can be quarantined with its reason instead
of breaking the loader or, worse, vanishing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from flywheel.config import USER_ACTIONS

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TrainingCandidate:
    """One production interaction that may become a training example."""

    request_id: str
    timestamp: datetime
    user_id: str
    prompt: str
    response: str
    user_action: str
    correction: str | None
    task_type: str
    quality_score: float
    included_in_training: bool = False
    model_version: str | None = None
    context: str | None = None

    @property
    def target(self) -> str:
        """What the model should have said: the user's correction when there is one."""
        if self.user_action == "corrected" and self.correction:
            return self.correction
        return self.response

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


PRODUCTION_LOG_FIELDS = (
    "request_id",
    "timestamp",
    "user_id",
    "prompt",
    "response",
    "user_action",
    "correction",
    "task_type",
    "quality_score",
    "included_in_training",
    "model_version",
    "context",
)

PRODUCTION_LOGS = pa.schema(
    [
        ("request_id", pa.string()),
        ("timestamp", TS),
        ("user_id", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("user_action", pa.string()),
        ("correction", pa.string()),
        ("task_type", pa.string()),
        ("quality_score", pa.float64()),
        ("included_in_training", pa.bool_()),
        ("model_version", pa.string()),
        ("context", pa.string()),
        # Set by the loader; a row whose event timestamp is missing is windowed by this one,
        # so it reaches a cycle (and quarantine) instead of never being read.
        ("ingested_at", TS),
    ]
)

# The text fields a pushed-down read may withhold, and the facts it returns about each instead.
ELIDABLE_TEXT_FIELDS = ("prompt", "response", "correction", "context")

# A window as the extraction reads it: the logs, whether the cheap rules pushed down into the
# query kept the row (its text is withheld otherwise), and facts about every text field that
# validation needs whether or not the text came along (see `text_facts`).
WINDOW_SNAPSHOT = pa.schema(
    [
        *PRODUCTION_LOGS,
        ("pushdown_kept", pa.bool_()),
        ("text_digest", pa.string()),
        *[
            field
            for name in ELIDABLE_TEXT_FIELDS
            for field in (
                pa.field(f"{name}_present", pa.bool_()),
                pa.field(f"{name}_chars", pa.int64()),
                pa.field(f"{name}_blank", pa.bool_()),
                pa.field(f"{name}_control_at", pa.int64()),
                pa.field(f"{name}_control_char", pa.int64()),
            )
        ],
    ]
)

QUARANTINE = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("row_number", pa.int64()),
        ("request_id", pa.string()),
        ("field", pa.string()),
        ("rule", pa.string()),
        ("reason", pa.string()),
        ("raw_json", pa.string()),
        ("quarantined_at", TS),
    ]
)

DECISIONS = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("request_id", pa.string()),
        ("rule", pa.string()),
        ("kept", pa.bool_()),
        ("score", pa.float64()),
        ("threshold", pa.float64()),
        ("reason", pa.string()),
        ("decided_at", TS),
    ]
)

DATASETS = pa.schema(
    [
        ("dataset_id", pa.string()),
        ("cycle_id", pa.string()),
        ("path", pa.string()),
        ("n_train", pa.int64()),
        ("n_val", pa.int64()),
        ("n_corrections", pa.int64()),
        ("content_hash", pa.string()),
        ("window_start", TS),
        ("window_end", TS),
        ("created_at", TS),
    ]
)

MODELS = pa.schema(
    [
        ("version", pa.string()),
        ("base_model", pa.string()),
        ("adapter_path", pa.string()),
        ("parent_version", pa.string()),
        ("cycle_id", pa.string()),
        ("dataset_id", pa.string()),
        ("dataset_hash", pa.string()),
        ("window_start", TS),
        ("window_end", TS),
        ("train_loss", pa.float64()),
        ("created_at", TS),
        # The training config and its metrics (JSON), so a version can be rebuilt and compared.
        ("config_json", pa.string()),
        ("metrics_json", pa.string()),
    ]
)

EVALUATIONS = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("model_version", pa.string()),
        ("role", pa.string()),
        ("accuracy", pa.float64()),
        ("n_items", pa.int64()),
        ("n_correct", pa.int64()),
        ("per_task_json", pa.string()),
        ("golden_hash", pa.string()),
        ("evaluated_at", TS),
        # Issue 8: the accuracy's bootstrap interval, the scorer, and one score per golden item.
        ("accuracy_low", pa.float64()),
        ("accuracy_high", pa.float64()),
        ("scorer", pa.string()),
        ("item_scores_json", pa.string()),
    ]
)

PROMOTIONS = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("logical_date", TS),
        ("champion_before", pa.string()),
        ("challenger", pa.string()),
        ("champion_after", pa.string()),
        ("promoted", pa.bool_()),
        ("reason", pa.string()),
        ("decided_at", TS),
    ]
)

CYCLES = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("dag_id", pa.string()),
        ("logical_date", TS),
        ("window_start", TS),
        ("window_end", TS),
        ("rows_in_window", pa.int64()),
        ("quarantined", pa.int64()),
        ("kept", pa.int64()),
        ("rejected", pa.int64()),
        ("pass_rate", pa.float64()),
        ("champion_before", pa.string()),
        ("challenger", pa.string()),
        ("champion_accuracy", pa.float64()),
        ("challenger_accuracy", pa.float64()),
        ("promoted", pa.bool_()),
        ("champion_after", pa.string()),
        ("finished_at", TS),
        # The method's phase measured at the end of the cycle (see `flywheel.ops.phases`); the next
        # cycle runs under that phase's capture policy.
        ("phase", pa.string()),
    ]
)

METRICS = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("name", pa.string()),
        ("value", pa.float64()),
        ("recorded_at", TS),
    ]
)


# The interactions each cycle's training set was built from, as dedup fingerprints only (no
# text): later cycles reject exact and near copies of anything already trained on.
TRAINING_FINGERPRINTS = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("logical_date", TS),
        ("request_id", pa.string()),
        ("exact_key", pa.int64()),
        ("signature", pa.binary()),
        ("fingerprint_spec", pa.string()),
    ]
)

GATE_RESULTS = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("gate", pa.string()),
        ("success", pa.bool_()),
        ("n_expectations", pa.int64()),
        ("n_failed", pa.int64()),
        ("failed_json", pa.string()),
        ("docs_url", pa.string()),
        ("evaluated_at", TS),
    ]
)

# Examples whose answer a person vouched for: imported manual labels (cold start) and approved
# reviews. They train with `training.gold_weight`, and every later consolidation (monthly) cycle
# retrains on all of them. Text is stored after the filters ran (PII redacted).
GOLD_EXAMPLES = pa.schema(
    [
        ("request_id", pa.string()),
        ("source", pa.string()),  # manual_labels | review
        ("cycle_id", pa.string()),  # the cycle that accepted it
        ("logical_date", TS),
        ("task_type", pa.string()),
        ("prompt", pa.string()),
        ("context", pa.string()),
        ("response", pa.string()),
        ("labeler", pa.string()),
        ("created_at", TS),
    ]
)

# Every golden-set version a cycle evaluated on, by content hash: the set is immutable, a new
# version is a new hash.
GOLDEN_SETS = pa.schema(
    [
        ("golden_hash", pa.string()),
        ("path", pa.string()),
        ("n_items", pa.int64()),
        ("task_types_json", pa.string()),
        ("first_cycle_id", pa.string()),
        ("created_at", TS),
    ]
)

# Human review (`flywheel.review.items`): the sampled items (text already PII-redacted), who was handed
# which item, and the reviews.
REVIEW_ITEMS = pa.schema(
    [
        ("item_id", pa.string()),
        ("cycle_id", pa.string()),
        ("logical_date", TS),
        ("request_id", pa.string()),
        ("slice", pa.string()),  # priority | random
        ("priority", pa.float64()),
        ("reasons_json", pa.string()),
        ("task_type", pa.string()),
        ("user_action", pa.string()),
        ("prompt", pa.string()),
        ("context", pa.string()),
        ("response", pa.string()),
        ("correction", pa.string()),
        ("filter_kept", pa.bool_()),
        ("filter_scores_json", pa.string()),
        ("created_at", TS),
    ]
)

REVIEW_ASSIGNMENTS = pa.schema(
    [
        ("item_id", pa.string()),
        ("reviewer", pa.string()),
        ("assigned_at", TS),
    ]
)

REVIEWS = pa.schema(
    [
        ("item_id", pa.string()),
        ("reviewer", pa.string()),
        ("cycle_id", pa.string()),
        ("accuracy", pa.int64()),  # 1-5
        ("helpfulness", pa.int64()),
        ("safety", pa.int64()),
        ("verdict", pa.string()),  # approve | reject
        ("edited_response", pa.string()),
        ("seconds_spent", pa.float64()),
        ("reviewed_at", TS),
    ]
)

# Filter thresholds fitted to reviews: each version holds config overrides that cycles after
# its logical date run under.
CONFIG_VERSIONS = pa.schema(
    [
        ("version_id", pa.string()),
        ("cycle_id", pa.string()),
        ("logical_date", TS),
        ("overrides_json", pa.string()),
        ("n_reviews", pa.int64()),
        ("agreement_before", pa.float64()),
        ("agreement_after", pa.float64()),
        ("per_rule_json", pa.string()),
        ("adopted", pa.bool_()),
        ("created_at", TS),
    ]
)

ALERTS = pa.schema(
    [
        ("alert_id", pa.string()),
        ("dag_id", pa.string()),
        ("task_id", pa.string()),
        ("run_id", pa.string()),
        ("logical_date", TS),
        ("kind", pa.string()),
        ("message", pa.string()),
        ("link", pa.string()),
        ("raised_at", TS),
    ]
)


# --- Issue 8: offline gate and online A/B (flywheel.evaluation.offline, flywheel.evaluation.experiment) -----------

OFFLINE_COMPARISONS = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("champion", pa.string()),
        ("challenger", pa.string()),
        ("golden_hash", pa.string()),
        ("champion_accuracy", pa.float64()),
        ("champion_low", pa.float64()),
        ("champion_high", pa.float64()),
        ("challenger_accuracy", pa.float64()),
        ("challenger_low", pa.float64()),
        ("challenger_high", pa.float64()),
        ("delta", pa.float64()),
        ("delta_low", pa.float64()),
        ("delta_high", pa.float64()),
        ("slices_json", pa.string()),
        ("passed", pa.bool_()),
        ("reason", pa.string()),
        ("compared_at", TS),
    ]
)

# New data vs old data: the challenger against its twin trained without the newest window.
NEW_DATA_COMPARISONS = pa.schema(
    [
        ("cycle_id", pa.string()),
        ("logical_date", TS),
        ("challenger", pa.string()),
        ("twin", pa.string()),
        ("newest_start", TS),
        ("newest_end", TS),
        ("n_newest", pa.int64()),  # examples of the newest window the twin did not train on
        ("challenger_accuracy", pa.float64()),
        ("twin_accuracy", pa.float64()),
        ("delta", pa.float64()),  # challenger - twin: what the newest window added
        ("delta_low", pa.float64()),
        ("delta_high", pa.float64()),
        ("verdict", pa.string()),  # helped | no_gain | hurt
        ("flagged", pa.bool_()),  # hurt beyond the tolerance: kept out of this and later cycles
        ("reason", pa.string()),
        ("compared_at", TS),
    ]
)

# The dashboard reads experiment_id, challenger, champion, traffic_share, started_at, status.
EXPERIMENTS = pa.schema(
    [
        ("experiment_id", pa.string()),
        ("cycle_id", pa.string()),
        ("champion", pa.string()),
        ("challenger", pa.string()),
        ("traffic_share", pa.float64()),
        ("ramp_json", pa.string()),
        ("status", pa.string()),  # running | promoted | rolled_back | stopped
        ("started_at", TS),
        ("updated_at", TS),
        ("reason", pa.string()),
    ]
)

# Every monitor decision on an experiment (the experiment's state as of a date derives from it).
EXPERIMENT_DECISIONS = pa.schema(
    [
        ("experiment_id", pa.string()),
        ("as_of", TS),
        ("action", pa.string()),  # keep_running | ramp | promote | rollback | stop
        ("traffic_share", pa.float64()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("n_champion", pa.int64()),
        ("n_challenger", pa.int64()),
        ("rate_champion", pa.float64()),
        ("rate_challenger", pa.float64()),
        ("p_value", pa.float64()),
        ("required_per_arm", pa.int64()),
        ("metrics_json", pa.string()),
        ("decided_at", TS),
    ]
)


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    # Columns that identify a row: writes MERGE on them, so reruns never duplicate.
    keys: tuple[str, ...]


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec("production_logs", PRODUCTION_LOGS, ("request_id",)),
        TableSpec("quarantine", QUARANTINE, ("cycle_id", "row_number", "field", "rule")),
        TableSpec("decisions", DECISIONS, ("cycle_id", "request_id", "rule")),
        TableSpec("datasets", DATASETS, ("dataset_id",)),
        TableSpec("models", MODELS, ("version",)),
        TableSpec("evaluations", EVALUATIONS, ("cycle_id", "model_version", "role")),
        TableSpec("promotions", PROMOTIONS, ("cycle_id",)),
        TableSpec("cycles", CYCLES, ("cycle_id",)),
        TableSpec("metrics", METRICS, ("cycle_id", "name")),
        TableSpec("training_fingerprints", TRAINING_FINGERPRINTS, ("cycle_id", "request_id")),
        TableSpec("gate_results", GATE_RESULTS, ("cycle_id", "gate")),
        TableSpec("alerts", ALERTS, ("alert_id",)),
        TableSpec("gold_examples", GOLD_EXAMPLES, ("request_id",)),
        TableSpec("golden_sets", GOLDEN_SETS, ("golden_hash",)),
        TableSpec("review_items", REVIEW_ITEMS, ("item_id",)),
        TableSpec("review_assignments", REVIEW_ASSIGNMENTS, ("item_id", "reviewer")),
        TableSpec("reviews", REVIEWS, ("item_id", "reviewer")),
        TableSpec("config_versions", CONFIG_VERSIONS, ("version_id",)),
        TableSpec("offline_comparisons", OFFLINE_COMPARISONS, ("cycle_id",)),
        TableSpec("new_data_comparisons", NEW_DATA_COMPARISONS, ("cycle_id",)),
        TableSpec("experiments", EXPERIMENTS, ("experiment_id",)),
        TableSpec("experiment_decisions", EXPERIMENT_DECISIONS, ("experiment_id", "as_of")),
    )
}


@dataclass(frozen=True)
class ValidationIssue:
    """Why a row cannot be used: the field at fault, the rule it broke, and a readable reason."""

    field: str
    rule: str
    reason: str


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


@dataclass(frozen=True)
class ValidationLimits:
    """Structural limits from `flywheel.config.ValidationConfig`."""

    max_text_chars: int = 20000
    max_clock_skew: timedelta = timedelta(minutes=10)
    earliest_timestamp: datetime = datetime(2000, 1, 1, tzinfo=UTC)

    @classmethod
    def from_config(cls, cfg: Any) -> ValidationLimits:
        earliest = datetime.fromisoformat(cfg.earliest_timestamp)
        if earliest.tzinfo is None:
            earliest = earliest.replace(tzinfo=UTC)
        return cls(cfg.max_text_chars, timedelta(minutes=cfg.max_clock_skew_minutes), earliest)


TEXT_FIELDS = ("request_id", "user_id", "prompt", "response", "correction", "task_type", "context", "model_version")
# C0/C1 control characters (tab, newline and carriage return are text) and the bidirectional
# overrides and isolates that make text display differently from what it says.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class TextFacts:
    """What validation needs to know about a text field, with or without the text itself.

    The warehouse query computes the same facts for the rows whose text it withholds
    (``read_logs_window.sql``); `text_facts` computes them from the text."""

    present: bool
    chars: int | None = None
    blank: bool = False
    control_at: int | None = None
    control_char: int | None = None
    is_text: bool = True


def text_facts(value: Any) -> TextFacts:
    if value is None:
        return TextFacts(False)
    if not isinstance(value, str):
        return TextFacts(True, is_text=False)
    bad = _CONTROL.search(value)
    return TextFacts(
        True, len(value), not value.strip(), bad.start() if bad else None, ord(bad.group()) if bad else None
    )


def facts_from_row(row: dict[str, Any]) -> dict[str, TextFacts]:
    """The facts a window snapshot row carries for its elidable text fields."""
    out = {}
    for name in ELIDABLE_TEXT_FIELDS:
        if f"{name}_present" in row and row[f"{name}_present"] is not None:
            out[name] = TextFacts(
                bool(row[f"{name}_present"]),
                row[f"{name}_chars"],
                bool(row[f"{name}_blank"]),
                row[f"{name}_control_at"],
                row[f"{name}_control_char"],
            )
    return out


def validate_row(
    row: dict[str, Any], limits: ValidationLimits | None = None, facts: dict[str, TextFacts] | None = None
) -> list[ValidationIssue]:
    """Every reason this production-log row cannot become a `TrainingCandidate` (empty: valid).

    ``facts`` stand in for text fields the warehouse withheld (pushdown); fields without facts
    are judged from the row itself. Reasons name the field and the rule, never quote the text:
    a log row may hold PII.
    """
    limits = limits or ValidationLimits()
    facts = facts or {}
    fact = {name: facts.get(name) or text_facts(row.get(name)) for name in TEXT_FIELDS}
    issues: list[ValidationIssue] = []
    for name in ("request_id", "user_id", "prompt", "response", "task_type"):
        f = fact[name]
        # An empty response is a real product event (the model said nothing), not a broken
        # row: it stays valid and the filters reject it. Only a missing one is malformed.
        if not f.present or (name != "response" and f.is_text and f.blank):
            issues.append(ValidationIssue(name, "required", f"{name} is missing or empty"))
        elif not f.is_text:
            issues.append(ValidationIssue(name, "type", f"{name} must be text, got {type(row.get(name)).__name__}"))
    for name in TEXT_FIELDS:
        f = fact[name]
        if not f.present or not f.is_text:
            continue
        if f.chars is not None and f.chars > limits.max_text_chars:
            issues.append(ValidationIssue(name, "max_length", f"{name} has {f.chars} characters > {limits.max_text_chars}"))
        if f.control_at is not None:
            issues.append(
                ValidationIssue(
                    name, "control_characters", f"{name} holds control character U+{f.control_char or 0:04X} at {f.control_at}"
                )
            )

    ts = row.get("timestamp")
    if ts is None:
        issues.append(ValidationIssue("timestamp", "required", "timestamp is missing"))
    elif not isinstance(ts, datetime) or ts.tzinfo is None:
        issues.append(ValidationIssue("timestamp", "type", f"timestamp must be a timezone-aware datetime, got {ts!r}"))
    else:
        ingested = row.get("ingested_at")
        if ts < limits.earliest_timestamp:
            issues.append(
                ValidationIssue("timestamp", "plausible", f"timestamp {ts.isoformat()} is before {limits.earliest_timestamp.isoformat()}")
            )
        elif isinstance(ingested, datetime) and ingested.tzinfo is not None and ts > ingested + limits.max_clock_skew:
            issues.append(
                ValidationIssue(
                    "timestamp", "future", f"timestamp {ts.isoformat()} is after its ingestion at {ingested.isoformat()}"
                )
            )

    action = row.get("user_action")
    if _missing(action):
        issues.append(ValidationIssue("user_action", "required", "user_action is missing"))
    elif action not in USER_ACTIONS:
        shown = action if isinstance(action, str) and len(action) <= 40 else f"{str(action)[:40]}..."
        issues.append(
            ValidationIssue("user_action", "allowed_values", f"user_action {shown!r} is not one of {list(USER_ACTIONS)}")
        )
    elif action == "corrected" and (not fact["correction"].present or fact["correction"].blank):
        issues.append(
            ValidationIssue("correction", "required_when_corrected", "user_action is 'corrected' but correction is empty")
        )

    score = row.get("quality_score")
    if score is None:
        issues.append(ValidationIssue("quality_score", "required", "quality_score is missing"))
    elif not isinstance(score, int | float) or isinstance(score, bool):
        issues.append(ValidationIssue("quality_score", "type", f"quality_score must be a number, got {type(score).__name__}"))
    elif not math.isfinite(score):
        issues.append(ValidationIssue("quality_score", "finite", f"quality_score is {score}, not a finite number"))
    elif not 0.0 <= float(score) <= 1.0:
        issues.append(ValidationIssue("quality_score", "range", f"quality_score {score} is outside [0, 1]"))
    return issues


def content_fingerprint(row: dict[str, Any]) -> str:
    """The row's content (everything but its ingestion time), to tell a re-delivery of the same
    event from two different events that share a request_id."""
    fields = {k: row.get(k) for k in PRODUCTION_LOG_FIELDS}
    if row.get("text_digest") is not None:  # a snapshot row: its texts may have been withheld
        for name in ELIDABLE_TEXT_FIELDS:
            fields.pop(name)
        fields["text_digest"] = row["text_digest"]
    return hashlib.sha256(json.dumps(fields, default=str, sort_keys=True).encode()).hexdigest()


def candidate_from_row(row: dict[str, Any]) -> TrainingCandidate:
    """Build a candidate from a row that `validate_row` passed."""
    return TrainingCandidate(
        request_id=row["request_id"],
        timestamp=row["timestamp"],
        user_id=row["user_id"],
        prompt=row["prompt"],
        response=row["response"],
        user_action=row["user_action"],
        correction=row.get("correction") or None,
        task_type=row["task_type"],
        quality_score=float(row["quality_score"]),
        included_in_training=bool(row.get("included_in_training") or False),
        model_version=row.get("model_version"),
        context=row.get("context") or None,
    )


def row_to_json(row: dict[str, Any]) -> str:
    """The raw row, kept with its quarantine reason so nothing is lost."""
    return json.dumps(row, default=str, sort_keys=True)


def empty_table(table: str) -> pa.Table:
    return TABLES[table].schema.empty_table()


def rows_to_table(table: str, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows (dicts) as an Arrow table of the named warehouse table's schema."""
    schema = TABLES[table].schema
    return pa.Table.from_pylist([{f: r.get(f) for f in schema.names} for r in rows], schema=schema)
