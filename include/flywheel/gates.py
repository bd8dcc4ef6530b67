"""Data gates with Great Expectations 1.x: suites as code, fail closed, Data Docs on disk.

Two gates guard each cycle:

- ``raw_window``, on the extracted window before anything else: schema, nulls, enums, ranges,
  unique request ids (each allowed to miss on at most ``max_invalid_share`` of the rows: a few
  malformed rows are quarantined, many mean the source is broken), and volume within a band
  of recent cycles.
- ``training_set``, on the built dataset before training: no PII, no golden-set overlap, no
  task type above its share, answer lengths within bounds, unique request ids.

Gates validate a *profile* of the data (lengths, flags, enums, scores) and never the text
itself, so no PII value can reach the Data Docs pages. GX is imported inside `run_gate` (it
takes seconds); its usage analytics are switched off (this workplace has no network).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from flywheel.config import USER_ACTIONS, FlywheelConfig
from flywheel.errors import GateError
from flywheel.filters.pii_second import pii_kinds
from flywheel.records import PRODUCTION_LOG_FIELDS
from flywheel.text import count_tokens

# Great Expectations is imported inside the functions that use it: it takes seconds to
# import, and DAG parsing and the light stages import this module without needing it.

log = logging.getLogger(__name__)

RAW_TEXT_FIELDS = ("prompt", "response", "correction", "context")
RAW_PROFILE_COLUMNS = (
    "request_id", "timestamp", "user_id", "user_action", "task_type", "quality_score",
    "model_version", "ingested_at", "prompt_chars", "response_chars", "correction_chars", "context_chars",
)  # fmt: skip


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str  # e.g. "expect_column_values_to_be_in_set(user_action)"
    success: bool
    observed: str  # what GX saw: unexpected count and share, or the observed value


@dataclass(frozen=True)
class GateResult:
    gate: str
    success: bool
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    docs_url: str | None = None

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def describe_failures(self) -> str:
        lines = [f"  - {o.expectation}: {o.observed}" for o in self.failed]
        return "\n".join(lines)


def raw_window_profile(table: pa.Table) -> pd.DataFrame:
    """The window as the raw gate sees it: the logs' columns without their text, and the text's
    lengths (from the snapshot's facts, so rows whose text the pushdown withheld count too).

    A log column missing from the snapshot is missing here too, so the schema expectation sees it.
    """
    frame: dict[str, Any] = {}
    for name in (*PRODUCTION_LOG_FIELDS, "ingested_at"):
        if name not in table.column_names or name == "included_in_training":
            continue
        col = table.column(name)
        if name in RAW_TEXT_FIELDS:
            if f"{name}_chars" in table.column_names:
                lengths = table.column(f"{name}_chars").to_pylist()
            else:
                lengths = [len(v) if isinstance(v, str) else None for v in col.to_pylist()]
            frame[f"{name}_chars"] = pd.array(lengths, dtype="Int64")
        elif pa.types.is_timestamp(col.type):
            frame[name] = pd.Series(col.to_pylist(), dtype=object)
        else:
            frame[name] = col.to_pandas()
    return pd.DataFrame(frame)


def raw_window_expectations(config: FlywheelConfig, *, volume_median: float | None) -> list[Any]:
    import great_expectations.expectations as gxe

    g = config.gates
    mostly = max(0.0, 1.0 - g.max_invalid_share)
    min_rows = g.min_rows
    max_rows = None
    if volume_median:
        low, high = g.volume_band
        min_rows = max(min_rows, int(volume_median * low))
        max_rows = int(volume_median * high)
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(RAW_PROFILE_COLUMNS), exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=max_rows),
        *[
            gxe.ExpectColumnValuesToNotBeNull(column=c, mostly=mostly)
            for c in ("request_id", "timestamp", "user_id", "user_action", "task_type", "quality_score",
                      "prompt_chars", "response_chars")
        ],
        gxe.ExpectColumnValuesToBeUnique(column="request_id", mostly=mostly),
        gxe.ExpectColumnValuesToBeInSet(column="user_action", value_set=list(USER_ACTIONS), mostly=mostly),
        gxe.ExpectColumnValuesToBeBetween(column="quality_score", min_value=0.0, max_value=1.0, mostly=mostly),
        gxe.ExpectColumnValuesToBeBetween(
            column="prompt_chars", min_value=1, max_value=config.validation.max_text_chars, mostly=mostly
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="response_chars", min_value=0, max_value=config.validation.max_text_chars, mostly=mostly
        ),
    ]


def training_set_profile(
    rows: Sequence[dict[str, Any]], *, pii_scanner: Any, golden_index: Any, hasher: Any,
    second_detector: Callable[[str], list[str]] = pii_kinds,
) -> pd.DataFrame:
    """Per example: PII values still present (by the redacting scanner, and by a second,
    independent detector over every message, so one blind spot cannot pass twice), golden-set
    overlap, answer length, type share."""
    users = [r["messages"][0]["content"] for r in rows]
    answers = [r["messages"][-1]["content"] for r in rows]
    overlap = golden_index.check(hasher.fingerprint(users), [r["request_id"] for r in rows], add_unique=False)
    task_types = [r["task_type"] for r in rows]
    share = pd.Series(task_types).map(pd.Series(task_types).value_counts(normalize=True)) if rows else pd.Series([], dtype=float)
    return pd.DataFrame(
        {
            "request_id": [r["request_id"] for r in rows],
            "task_type": task_types,
            "pii_hits": [len(pii_scanner.scan(u)) + len(pii_scanner.scan(a)) for u, a in zip(users, answers, strict=True)],
            "pii_second_hits": [len(second_detector("\n".join(m["content"] for m in r["messages"]))) for r in rows],
            "golden_overlap": [m is not None for m in overlap],
            "target_tokens": [count_tokens(a) for a in answers],
            "task_type_share": share.astype(float).tolist(),
        }
    )


def training_set_expectations(config: FlywheelConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    g = config.gates
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=config.training.min_examples),
        gxe.ExpectColumnValuesToBeUnique(column="request_id"),
        gxe.ExpectColumnValuesToBeBetween(column="pii_hits", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="pii_second_hits", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeInSet(column="golden_overlap", value_set=[False]),
        gxe.ExpectColumnValuesToBeBetween(column="target_tokens", min_value=g.min_target_tokens, max_value=g.max_target_tokens),
        gxe.ExpectColumnMaxToBeBetween(column="task_type_share", max_value=g.max_task_type_share),
    ]


def _describe(result: Any) -> ExpectationOutcome:
    cfg = result.expectation_config
    column = cfg.kwargs.get("column")
    name = f"{cfg.type}({column})" if column else cfg.type
    res = result.result or {}
    if "unexpected_count" in res:
        observed = f"{res.get('unexpected_count')} unexpected ({(res.get('unexpected_percent') or 0.0):.1f}%)"
        if "mostly" in cfg.kwargs:
            observed += f", allowed {100 * (1 - cfg.kwargs['mostly']):.1f}%"
    elif "observed_value" in res:
        observed = f"observed {res['observed_value']!r}"
        bounds = {k: cfg.kwargs[k] for k in ("min_value", "max_value") if cfg.kwargs.get(k) is not None}
        if bounds:
            observed += f", expected {bounds}"
    elif result.exception_info and result.exception_info.get("raised_exception"):
        observed = f"error: {result.exception_info.get('exception_message')}"
    else:
        observed = "failed" if not result.success else "ok"
    return ExpectationOutcome(name, bool(result.success), observed)


def run_gate(gate: str, frame: pd.DataFrame, expectations: list[Any], *, docs_dir: Path, run_name: str) -> GateResult:
    """Validate ``frame`` against ``expectations`` with a GX checkpoint; write Data Docs."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    docs_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    site = "flywheel"
    context.add_data_docs_site(
        site_name=site,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = context.data_sources.add_pandas("flywheel").add_dataframe_asset(gate).add_batch_definition_whole_dataframe("cycle")
    suite = context.suites.add(gx.ExpectationSuite(name=gate))
    for expectation in expectations:
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=gate, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=gate,
            validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[site])],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 0},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=RunIdentifier(run_name=run_name))
    outcomes: list[ExpectationOutcome] = []
    docs_url = None
    for key, vr in result.run_results.items():
        outcomes.extend(_describe(r) for r in vr.results)
        urls = context.get_docs_sites_urls(resource_identifier=key, site_name=site)
        docs_url = next((u["site_url"] for u in urls if u.get("site_url")), docs_url)
    return GateResult(gate, bool(result.success), outcomes, docs_url or (docs_dir / "index.html").as_uri())


def enforce(result: GateResult, *, cycle_id: str, note: str = "") -> None:
    """Fail closed: a failed gate raises with the failed expectations, the Data Docs link and
    the caller's ``note`` (where the bad rows are)."""
    if result.success:
        log.info("%s: gate %s passed (%d expectations)", cycle_id, result.gate, len(result.outcomes))
        return
    raise GateError(
        f"{cycle_id}: gate {result.gate!r} failed {len(result.failed)} of {len(result.outcomes)} expectations:\n"
        f"{result.describe_failures()}\nData Docs: {result.docs_url}" + (f"\n{note}" if note else "")
    )


def result_row(result: GateResult, *, cycle_id: str, evaluated_at: Any) -> dict[str, Any]:
    return {
        "cycle_id": cycle_id,
        "gate": result.gate,
        "success": result.success,
        "n_expectations": len(result.outcomes),
        "n_failed": len(result.failed),
        "failed_json": json.dumps([o.__dict__ for o in result.failed]),
        "docs_url": result.docs_url,
        "evaluated_at": evaluated_at,
    }
