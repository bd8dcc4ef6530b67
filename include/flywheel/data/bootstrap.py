"""Cold start: the rows model v1 learns from when there is little or no production traffic.

Three sources join the beta users' traffic in the bootstrap cycle's window:

- **manual labels**: a CSV or JSONL file (or a folder of them) of prompts with the answer a
  person wrote or approved. Each becomes a log-shaped row, so it is validated like a log row
  (malformed ones are quarantined with their reason) and filtered like one (PII, toxicity,
  decontamination, dedup); those kept become gold examples.
- **synthetic examples**: the product's task templates with their checked answers (here the
  simulator's; a real product plugs in its own templates the same way).

Nothing here reads a hub or the network.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flywheel.config import ValidationConfig
from flywheel.errors import FlywheelError
from flywheel.tasks import TaskTemplates

MANUAL_MODEL_VERSION = "manual-labels"
SYNTHETIC_MODEL_VERSION = "synthetic"
LABEL_COLUMNS = ("prompt", "response", "task_type")
TEXT_COLUMNS = ("prompt", "response", "task_type", "context", "labeler")


@dataclass(frozen=True)
class LabelProblem:
    """A line of a labels file that could not even be read as a row (bad JSON, no columns)."""

    source: str
    line: int
    reason: str


def label_files(path: Path) -> list[Path]:
    """The CSV/JSONL files a labels path names, in a stable order."""
    if not path.exists():
        raise FlywheelError(f"manual labels path {path} does not exist")
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix.lower() in (".csv", ".jsonl", ".json"))


def _not_unicode(rec: dict[str, Any]) -> str:
    """Why a record's text is not valid Unicode, or ''. Bytes that are not UTF-8 are read as
    lone surrogates (``surrogateescape``), and JSON may spell one (``"\\ud800"``); neither can
    be stored or encoded, so the line is a problem, not a row that fails later on every retry."""
    for key, value in rec.items():
        for name, text in ((f"column name {key!r}", key), (str(key), value)):
            if isinstance(text, str) and any("\ud800" <= ch <= "\udfff" for ch in text):
                return f"{name}: not valid UTF-8 text (a byte sequence or escape that is no character)"
    return ""


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, record or None, problem) for every record of one file."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                yield 1, None, f"header lacks the columns {missing} (has {reader.fieldnames})"
                return
            for n, rec in enumerate(reader, start=2):
                row = {k: (v if v != "" else None) for k, v in rec.items() if k is not None}
                bad = _not_unicode(row)
                yield (n, None, bad) if bad else (n, row, "")
        return
    # Lines end at "\n" only: JSON text may hold U+2028 or U+0085 raw, which str.splitlines cuts at.
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield n, None, f"not valid JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(rec, dict):
            yield n, None, f"a JSON {type(rec).__name__}, not an object"
            continue
        bad = _not_unicode(rec)
        yield (n, None, bad) if bad else (n, rec, "")


_PLAIN_ID = re.compile(ValidationConfig().id_pattern)  # the default id format


def _labeler_id(labeler: Any) -> Any:
    """The row's user id: the labeler as written where it is a plain id ("ann", "rater-7"), else
    a stable hash of it ("Ann Smith" is a name, not an id, and would fail validation's id
    format); "manual-labels" where the file names none."""
    if labeler is None or labeler == "":
        return "manual-labels"
    if isinstance(labeler, str) and _PLAIN_ID.fullmatch(labeler):
        return labeler
    return f"labeler-{hashlib.sha256(str(labeler).encode()).hexdigest()[:12]}"


def read_manual_labels(path: Path, *, labelled_at: datetime) -> tuple[list[dict[str, Any]], list[LabelProblem]]:
    """Manual labels as production-log rows, and the lines that could not be read at all.

    A row's request id is a hash of its file name and content, so importing the same file
    twice gives the same ids (the warehouse keeps one copy). Values are taken as given: a
    missing prompt or an out-of-range score is for validation to quarantine, with its reason,
    not for the reader to drop silently. Only what cannot be a log row at all (not JSON, no
    header, an object where text belongs, a score that is not a number) is a `LabelProblem`,
    which the cycle quarantines too.
    """
    rows: list[dict[str, Any]] = []
    problems: list[LabelProblem] = []
    for file in label_files(path):
        for n, rec, problem in _records(file):
            if rec is None:
                problems.append(LabelProblem(file.name, n, problem))
                continue
            structured = sorted(k for k in TEXT_COLUMNS if isinstance(rec.get(k), dict | list))
            if structured:
                problems.append(LabelProblem(file.name, n, f"{', '.join(structured)}: a JSON object or list, not text"))
                continue
            # A number where text belongs ("response": 4) is that text; validation checks the rest.
            rec = {k: (str(v) if k in TEXT_COLUMNS and isinstance(v, int | float | bool) else v) for k, v in rec.items()}
            digest = hashlib.sha256(json.dumps([file.name, rec], sort_keys=True, default=str).encode()).hexdigest()[:24]
            score = rec.get("quality_score", 1.0)
            try:
                score = float(score) if score is not None else None
            except (TypeError, ValueError):
                problems.append(LabelProblem(file.name, n, f"quality_score {score!r} is not a number"))
                continue
            rows.append(
                {
                    "request_id": f"manual-{digest}",
                    "timestamp": labelled_at,
                    "user_id": _labeler_id(rec.get("labeler")),
                    "prompt": rec.get("prompt"),
                    "response": rec.get("response"),
                    "user_action": "accepted",
                    "correction": None,
                    "task_type": rec.get("task_type"),
                    "quality_score": score,
                    "included_in_training": False,
                    "model_version": MANUAL_MODEL_VERSION,
                    "context": rec.get("context"),
                    "ingested_at": labelled_at,
                }
            )
    return rows, problems


def synthetic_rows(templates: TaskTemplates, per_task_type: int, *, seed: int, created_at: datetime) -> list[dict[str, Any]]:
    """``per_task_type`` template examples of every task type, with their checked answers."""
    rows: list[dict[str, Any]] = []
    made: Counter[str] = Counter()
    for task in templates.synthetic_tasks(per_task_type, seed):
        i = made[task.task_type]
        made[task.task_type] += 1
        rows.append(
            {
                "request_id": f"synthetic-{seed}-{task.task_type}-{i}",
                "timestamp": created_at,
                "user_id": "synthetic",
                "prompt": task.prompt,
                "response": task.answer,
                "user_action": "accepted",
                "correction": None,
                "task_type": task.task_type,
                "quality_score": 1.0,
                "included_in_training": False,
                "model_version": SYNTHETIC_MODEL_VERSION,
                "context": task.context,
                "ingested_at": created_at,
            }
        )
    return rows


def write_labels_file(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write labels as JSONL (what `read_manual_labels` reads); for the demo and tests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    return path
