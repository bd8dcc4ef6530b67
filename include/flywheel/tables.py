"""The warehouse tables: their Arrow schemas and the keys a write merges on.

Every backend creates these tables from the schemas here (`flywheel.warehouse.sql`), and every
stage writes its rows through `rows_to_table`, so a column is declared once.

Why this module is long: it is a catalogue, 23 table declarations and nothing else, read in one
place; split, a reader would hunt for a column across files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from flywheel.records import ELIDABLE_TEXT_FIELDS

TS = pa.timestamp("us", tz="UTC")


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

# The raw layer: every line `flywheel.ingest` read, verbatim, before any typing, with what
# became of it (loaded, duplicate or quarantined and why). A re-ingest of a file skips the lines
# this table already holds, so it adds nothing.
RAW_LOG_LINES = pa.schema(
    [
        ("source", pa.string()),
        ("line_number", pa.int64()),
        ("line_sha256", pa.string()),
        ("raw_line", pa.string()),
        ("outcome", pa.string()),  # loaded | duplicate | quarantined
        ("request_id", pa.string()),
        ("reason", pa.string()),
        ("ingested_at", TS),
    ]
)

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
        # The accuracy's bootstrap interval, the scorer, and one score per golden item.
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


# The offline gate and the online A/B test (flywheel.evaluation.offline, .experiment).

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
        TableSpec("raw_log_lines", RAW_LOG_LINES, ("source", "line_number")),
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


def empty_table(table: str) -> pa.Table:
    return TABLES[table].schema.empty_table()


def rows_to_table(table: str, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows (dicts) as an Arrow table of the named warehouse table's schema."""
    schema = TABLES[table].schema
    return pa.Table.from_pylist([{f: r.get(f) for f in schema.names} for r in rows], schema=schema)
