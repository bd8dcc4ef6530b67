"""Validate: the snapshot split into valid rows and quarantined rows, each with every reason;
what operators see of a quarantined row has its PII redacted."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.cycle import spec
from flywheel.cycle.extract import unreadable_lines
from flywheel.cycle.spec import CycleSpec
from flywheel.filters.pii import redact_row_for_quarantine
from flywheel.records import content_fingerprint, row_to_json
from flywheel.tables import WINDOW_SNAPSHOT, rows_to_table
from flywheel.validation import ValidationIssue, facts_from_row, validate_row
from flywheel.warehouse import Warehouse

log = logging.getLogger(__name__)


def validate_rows(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Split the snapshot into valid rows and quarantined rows, each with every reason.

    A request_id seen more than once is a re-delivery when every copy has the same content (the
    first copy stays valid, the others are quarantined as duplicates) and a conflict when the
    copies differ (every copy is quarantined: there is no telling which one is true).
    """
    rows = pq.read_table(cycle.file("extract.parquet")).to_pylist()
    limits = cycle.limits
    copies: dict[str, set[str]] = {}
    for row in rows:
        rid = row.get("request_id")
        if isinstance(rid, str) and rid:
            copies.setdefault(rid, set()).add(content_fingerprint(row))
    valid: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    seen: set[str] = set()
    now = spec.now()
    for n, row in enumerate(rows):
        issues = validate_row(row, limits, facts_from_row(row))
        rid = row.get("request_id")
        if isinstance(rid, str) and rid in copies:
            if len(copies[rid]) > 1:
                issues.append(
                    ValidationIssue(
                        "request_id", "conflicting_duplicate", f"request_id appears {len(copies[rid])} times with different content"
                    )
                )
            elif rid in seen:
                issues.append(ValidationIssue("request_id", "duplicate_delivery", "an identical copy of this row was already read"))
            seen.add(rid)
        if not issues:
            valid.append(row)
            continue
        raw = row_to_json(redact_row_for_quarantine(row, cycle.config))
        for issue in issues:
            quarantine.append(quarantine_row(cycle, n, rid, issue.field, issue.rule, f"row {n} (request_id={rid!r}): {issue.reason}",
                                             raw_json=raw, quarantined_at=now))  # fmt: skip
    for k, problem in enumerate(unreadable_lines(cycle)):
        quarantine.append(quarantine_row(cycle, len(rows) + k, None, "line", "unreadable",
                                         f"{problem['source']} line {problem['line']}: {problem['reason']}",
                                         raw_json=None, quarantined_at=now))  # fmt: skip
    wh.replace_partition("quarantine", {"cycle_id": cycle.cycle_id}, rows_to_table("quarantine", quarantine))
    pq.write_table(pa.Table.from_pylist(valid, schema=WINDOW_SNAPSHOT), cycle.file("valid.parquet"))
    n_quarantined = len({q["row_number"] for q in quarantine})
    reasons = Counter(f"{q['field']}.{q['rule']}" for q in quarantine)
    if n_quarantined:
        log.warning("%s: %d rows quarantined: %s", cycle.cycle_id, n_quarantined, dict(reasons))
    return {"valid": len(valid), "quarantined": n_quarantined, "quarantine_reasons": dict(reasons)}


def quarantine_row(
    cycle: CycleSpec,
    row_number: int,
    request_id: Any,
    field: str,
    rule: str,
    reason: str,
    *,
    raw_json: str | None,
    quarantined_at: datetime,
) -> dict[str, Any]:
    """A `quarantine` row: one failed rule of one input row (a row failing three rules has three)."""
    return {"cycle_id": cycle.cycle_id, "row_number": row_number, "request_id": request_id, "field": field,
            "rule": rule, "reason": reason, "raw_json": raw_json, "quarantined_at": quarantined_at}  # fmt: skip
