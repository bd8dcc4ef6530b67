"""Raw ingestion: a product's log files (JSONL, CSV, Parquet) into the warehouse, strictly typed.

Every line is first kept verbatim in the raw layer (`raw_log_lines`: source, line number, the
line, what became of it), then typed into a `production_logs` row without coercion: a value of
the wrong type, a timestamp that is naive, not UTC, an epoch number or before
``validation.earliest_timestamp``, a field the record does not have, a line that is not a record
or not UTF-8 is quarantined with its reason, file and line number. Only the structure is judged
here; what a well-typed row says (empty fields, actions, lengths, PII) is judged by every cycle's
validation, the same as for rows that reach the warehouse any other way.

A re-ingest of a file adds nothing: the lines the raw layer holds as loaded are skipped, and
those it holds as quarantined are typed again (after a fixed mapping they may load). A
request_id the warehouse already holds is a duplicate when the content is the same and is
quarantined when it differs (the stored row is kept, never replaced). Files are read in batches
of ``ingest.batch_lines`` with lines longer than ``ingest.max_line_bytes`` cut off unparsed, so
memory stays bounded whatever the file.

Why this module is long: it is one pipeline (read, type, deduplicate, write) for three formats,
whose rules only make sense side by side.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from flywheel.config import FlywheelConfig
from flywheel.data.shapes import RecordMapper
from flywheel.errors import FlywheelError
from flywheel.records import PRODUCTION_LOG_FIELDS, content_fingerprint, row_to_json
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse

# What a quarantined row shows operators: its text fields with PII redacted (the caller's choice
# of detector, `flywheel.filters.pii.redact_row_for_quarantine`; this layer sits below the filters).
Redactor = Callable[[dict[str, Any]], dict[str, Any]]

log = logging.getLogger(__name__)

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
STRING_FIELDS = ("request_id", "user_id", "prompt", "response", "user_action", "correction", "task_type", "model_version", "context")
RAW_KEPT_CHARS = 65536  # of an oversized line, what the raw layer keeps
_EPOCH = re.compile(r"[+-]?\d+(\.\d+)?([eE][+-]?\d+)?")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class IngestError(FlywheelError):
    """A file that cannot be ingested at all (missing, unknown format, unusable header)."""


@dataclass
class IngestCounts:
    """What became of the lines read: ``read == loaded + duplicates + quarantined``."""

    read: int = 0
    loaded: int = 0
    duplicates: int = 0
    already_ingested: int = 0  # of the duplicates: lines an earlier ingest of the same file read
    quarantined: int = 0
    retried: int = 0  # lines an earlier ingest quarantined, typed again (a fixed mapping may load them)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, other: IngestCounts) -> None:
        for name in ("read", "loaded", "duplicates", "already_ingested", "quarantined", "retried"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.reasons.update(other.reasons)

    def summary(self) -> str:
        again = f" ({self.already_ingested} already ingested)" if self.already_ingested else ""
        retried = f"; {self.retried} lines quarantined before were typed again" if self.retried else ""
        return (f"{self.read} lines read: {self.loaded} loaded, {self.duplicates} duplicates{again}, "
                f"{self.quarantined} quarantined{retried}")  # fmt: skip


@dataclass
class RawLine:
    """One line as read: its number, its text (or why it has none), and the record it holds."""

    number: int
    text: str
    record: dict[str, Any] | None = None
    problem: tuple[str, str, str] | None = None  # (field, rule, reason)
    sha256: str = ""


def source_name(path: Path) -> str:
    """A file's identity in the raw layer: its absolute path."""
    return str(path.resolve())


def file_format(path: Path, given: str | None = None) -> str:
    if given:
        if given not in set(FORMATS.values()):
            raise IngestError(f"unknown format {given!r}: one of {sorted(set(FORMATS.values()))}")
        return given
    suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    try:
        return FORMATS[suffix.lower()]
    except KeyError:
        raise IngestError(f"{path}: cannot tell the format from {suffix!r}; name it with --format") from None


def _open_binary(path: Path) -> IO[bytes]:
    return cast(IO[bytes], gzip.open(path, "rb")) if path.suffix == ".gz" else path.open("rb")


# Typing: a parsed value -> the column's value, or why not ---------------------------------
def _timestamp(value: Any, earliest: datetime) -> datetime | tuple[str, str] | None:
    """An event time as an aware UTC datetime, or (rule, reason) why it is not one."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) or (isinstance(value, str) and _EPOCH.fullmatch(value.strip())):
        return "epoch_number", "is an epoch number; write it as ISO 8601 with a UTC offset (2026-01-05T10:00:00Z), so that its unit and zone are not guessed"
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            return "type", "is not an ISO 8601 date and time"
    else:
        return "type", f"must be an ISO 8601 text with a UTC offset, got {type(value).__name__}"
    if ts.tzinfo is None:
        return "naive", "has no UTC offset (a naive time): its zone would be guessed"
    if ts.utcoffset() and not isinstance(value, datetime):  # a typed Parquet time is an instant
        return "not_utc", f"has the offset {ts.strftime('%z')}, not UTC: the logs must be written in UTC"
    ts = ts.astimezone(UTC)
    if ts < earliest:
        return "before_earliest", f"{ts.isoformat()} is before the earliest allowed ({earliest.isoformat()}, validation.earliest_timestamp)"
    return ts


def _encoding_problem(value: str) -> str | None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds U+{ord(value[exc.start]):04X} at {exc.start}, a lone surrogate: not valid Unicode text"
    return None


def type_record(obj: Any, earliest: datetime, *, strings: bool = False) -> tuple[dict[str, Any] | None, list[tuple[str, str, str]]]:
    """A parsed record as a `production_logs` row, or every reason it cannot be one.

    ``strings``: every value is text (a CSV cell) and is read as its column's type; an empty
    cell is a missing value, except in a text field, where it is an empty text."""
    if not isinstance(obj, dict):
        return None, [("line", "not_a_record", f"is a JSON {type(obj).__name__}, not an object with the log's fields")]
    problems: list[tuple[str, str, str]] = []
    unknown = [k for k in obj if k not in PRODUCTION_LOG_FIELDS]
    for k in unknown[:5]:
        shown = k if isinstance(k, str) and len(k) <= 60 else f"{str(k)[:60]}..."
        problems.append((
            "line", "unknown_field",
            f"has the field {shown!r}, which the log record does not have ({', '.join(PRODUCTION_LOG_FIELDS)}); "
            "map or drop it before ingesting",
        ))  # fmt: skip
    row: dict[str, Any] = {}
    for name in STRING_FIELDS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            problems.append((name, "type", f"{name} must be text, got {type(value).__name__}"))
        elif isinstance(value, str) and (why := _encoding_problem(value)):
            problems.append((name, "encoding", f"{name} {why}"))
        row[name] = value
    score = obj.get("quality_score")
    if strings and isinstance(score, str):
        score = None if score == "" else float(score) if _NUMBER.fullmatch(score) else score
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
        problems.append(("quality_score", "type", f"quality_score must be a number, got {type(score).__name__}"))
    elif score is not None and not math.isfinite(score):
        problems.append(("quality_score", "finite", f"quality_score is {score}, not a finite number"))
    row["quality_score"] = float(score) if isinstance(score, int | float) and not isinstance(score, bool) else score
    flag = obj.get("included_in_training")
    if strings and isinstance(flag, str):
        flag = {"": None, "true": True, "false": False}.get(flag.lower(), flag)
    if flag is not None and not isinstance(flag, bool):
        problems.append(("included_in_training", "type", f"included_in_training must be true or false, got {type(flag).__name__}"))
    row["included_in_training"] = flag
    ts = obj.get("timestamp")
    if strings and ts == "":
        ts = None
    typed = _timestamp(ts, earliest)
    if isinstance(typed, tuple):
        problems.append(("timestamp", typed[0], f"timestamp {typed[1]}"))
    row["timestamp"] = typed if isinstance(typed, datetime) else None
    return (None if problems else row), problems


def type_line(obj: Any, earliest: datetime, mapper: RecordMapper, *, strings: bool = False) -> tuple[dict[str, Any] | None, tuple[str, str, str] | None]:
    """A parsed line through ``ingest.shape``'s mapping and strict typing: (the row, None), or
    (what its quarantine row keeps of it, the problem)."""
    mapped, problems = mapper(obj)
    record, typing = (None, []) if mapped is None and problems else type_record(mapped, earliest, strings=strings)
    problems = [*problems, *typing]
    if not problems:
        return record, None
    named = mapped if isinstance(mapped, dict) else obj if isinstance(obj, dict) else {}
    return _named(named.get("request_id")), _one_problem(problems)


def _one_problem(problems: list[tuple[str, str, str]]) -> tuple[str, str, str] | None:
    """A line's problems as one quarantine row: the first one's field and rule, every reason."""
    if not problems:
        return None
    return problems[0][0], problems[0][1], "; ".join(p[2] for p in problems)


def _named(request_id: Any) -> dict[str, Any] | None:
    """What a quarantined line keeps of its record: the request_id it names, if it is text."""
    if isinstance(request_id, str) and request_id and _encoding_problem(request_id) is None:
        return {"request_id": request_id[:200]}
    return None


# Readers: a file -> RawLine ---------------------------------------------------------------
def _json_record(text: str) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"the key {k[:60]!r} appears twice")
            out[k] = v
        return out

    return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_repeats)


def _binary_lines(fh: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes, int | None]]:
    """(line number, bytes without the newline, total length if cut off) per line; only ``\\n``
    ends a line (a CR before it is dropped: CRLF files), and no line is held past ``max_bytes``."""
    number = 0
    while line := fh.readline(max_bytes + 1):
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            total = len(line)
            while more := fh.readline(1 << 20):
                total += len(more)
                if more.endswith(b"\n"):
                    break
            yield number, line[: RAW_KEPT_CHARS], total
            continue
        yield number, line.removesuffix(b"\n").removesuffix(b"\r"), None


def _decode(data: bytes) -> tuple[str, str | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        shown = data.decode("utf-8", errors="backslashreplace")
        return shown, f"is not UTF-8: byte 0x{data[exc.start]:02X} at {exc.start} (stored with that byte escaped)"


def read_jsonl(path: Path, config: FlywheelConfig, earliest: datetime) -> Iterator[RawLine]:
    mapper = RecordMapper(config.ingest)
    with _open_binary(path) as fh:
        for number, data, cut in _binary_lines(fh, config.ingest.max_line_bytes):
            if number == 1:
                data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
            text, bad = _decode(data)
            line = RawLine(number, text, sha256=hashlib.sha256(data).hexdigest())
            if cut is not None:
                line.problem = ("line", "oversized", f"has {cut} bytes > ingest.max_line_bytes ({config.ingest.max_line_bytes}); "
                                "the raw layer keeps its first 64 KiB")  # fmt: skip
            elif bad:
                line.problem = ("line", "encoding", f"line {bad}")
            elif not text.strip():
                line.problem = ("line", "not_a_record", "is blank")
            else:
                try:
                    obj = _json_record(text)
                except ValueError as exc:
                    line.problem = ("line", "not_a_record", f"is not JSON: {str(exc)[:200]}")
                else:
                    line.record, line.problem = type_line(obj, earliest, mapper)
            yield line


def read_csv(path: Path, config: FlywheelConfig, earliest: datetime) -> Iterator[RawLine]:
    mapper = RecordMapper(config.ingest)
    csv.field_size_limit(config.ingest.max_line_bytes)
    with _open_binary(path) as raw:
        text_stream = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text_stream, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise IngestError(f"{path}: the CSV header cannot be read: {exc}") from exc
        repeated = [h for h, n in Counter(header).items() if n > 1]
        if repeated:
            raise IngestError(f"{path}: the CSV header names {repeated} more than once")
        number = 1
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                number += 1
                yield RawLine(number, "", problem=("line", "not_a_record", f"(file line {start}) is not CSV: {exc}"),
                              sha256=hashlib.sha256(f"unreadable:{start}".encode()).hexdigest())  # fmt: skip
                continue
            number += 1
            shown = json.dumps(dict(zip(header, cells, strict=False)) if len(cells) == len(header) else cells,
                               ensure_ascii=False).encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")  # fmt: skip
            line = RawLine(number, shown, sha256=hashlib.sha256(shown.encode("utf-8", errors="surrogatepass")).hexdigest())
            if len(cells) != len(header):
                line.problem = ("line", "not_a_record", f"(file line {start}) has {len(cells)} cells; the header has {len(header)}")
            elif any(_encoding_problem(c) for c in cells):
                line.problem = ("line", "encoding", f"(file line {start}) is not UTF-8")
            else:
                line.record, line.problem = type_line(dict(zip(header, cells, strict=True)), earliest, mapper, strings=True)
            yield line


def read_parquet(path: Path, config: FlywheelConfig, earliest: datetime) -> Iterator[RawLine]:
    mapper = RecordMapper(config.ingest)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise IngestError(f"{path}: not a readable Parquet file: {exc}") from exc
    number = 0
    for batch in pf.iter_batches(batch_size=config.ingest.batch_lines):
        for obj in batch.to_pylist():
            number += 1
            shown = json.dumps(obj, default=str, ensure_ascii=False)
            line = RawLine(number, shown, sha256=hashlib.sha256(shown.encode("utf-8", errors="surrogatepass")).hexdigest())
            line.record, line.problem = type_line(obj, earliest, mapper)
            yield line


READERS: dict[str, Callable[[Path, FlywheelConfig, datetime], Iterator[RawLine]]] = {
    "jsonl": read_jsonl, "csv": read_csv, "parquet": read_parquet,
}  # fmt: skip


# Writing ----------------------------------------------------------------------------------
def _batches(lines: Iterator[RawLine], size: int) -> Iterator[list[RawLine]]:
    batch: list[RawLine] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _stored(wh: Warehouse, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    return wh.query(sql, params).to_pylist()


def _ingest_batch(wh: Warehouse, redact: Redactor, source: str, label: str, batch: list[RawLine]) -> IngestCounts:
    counts = IngestCounts(read=len(batch))
    now = datetime.now(UTC)
    span = {"s": source, "a": batch[0].number, "b": batch[-1].number}
    held = {(r["line_number"], r["line_sha256"]): r["outcome"] for r in _stored(
        wh, "SELECT line_number, line_sha256, outcome FROM raw_log_lines WHERE source = $s AND line_number >= $a "
            "AND line_number <= $b", span)}  # fmt: skip
    # A line loaded (or found a duplicate) before is skipped; one quarantined before is typed again,
    # so that a re-ingest after fixing the mapping (`ingest.actions`, `ingest.fields`) loads it.
    fresh = [line for line in batch if held.get((line.number, line.sha256), "quarantined") == "quarantined"]
    counts.already_ingested = counts.duplicates = len(batch) - len(fresh)
    counts.retried = sum((line.number, line.sha256) in held for line in fresh)
    ids = sorted({line.record["request_id"] for line in fresh if line.problem is None and line.record and
                  isinstance(line.record.get("request_id"), str)})  # fmt: skip
    stored = {r["request_id"]: content_fingerprint(r) for r in _stored(
        wh, "SELECT * FROM production_logs WHERE list_contains($ids, request_id)", {"ids": ids})} if ids else {}  # fmt: skip
    logs: list[dict[str, Any]] = []
    quarantine: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for line in fresh:
        rid = line.record.get("request_id") if line.record else None
        problem = line.problem
        outcome = "loaded"
        if problem is None and line.record is not None:
            fingerprint = content_fingerprint(line.record)
            if isinstance(rid, str) and rid in stored:
                if stored[rid] == fingerprint:
                    outcome = "duplicate"
                else:
                    problem = ("request_id", "conflicting_duplicate",
                               "request_id is already in the warehouse with different content (the stored row is kept, not replaced)")  # fmt: skip
            if problem is None and outcome == "loaded":
                logs.append(line.record | {"ingested_at": now})
                if isinstance(rid, str):
                    stored[rid] = fingerprint
        if problem is not None:
            outcome = "quarantined"
            name, rule, why = problem
            shown = line.record if line.record and len(line.record) > 1 else {"raw_line": line.text}
            kept = row_to_json(redact(shown))
            quarantine.append({"cycle_id": f"ingest:{source}", "row_number": line.number, "request_id": rid, "field": name,
                               "rule": rule, "reason": f"{label} line {line.number}: {why}", "raw_json": kept,
                               "quarantined_at": now})  # fmt: skip
            counts.quarantined += 1
            counts.reasons[f"{name}.{rule}"] += 1
        elif outcome == "duplicate":
            counts.duplicates += 1
        else:
            counts.loaded += 1
        raw.append({"source": source, "line_number": line.number, "line_sha256": line.sha256, "raw_line": line.text,
                    "outcome": outcome, "request_id": rid if isinstance(rid, str) else None,
                    "reason": problem[2] if problem else None, "ingested_at": now})  # fmt: skip
    # Logs and quarantine first, the raw layer last: a batch cut short by a crash is read again
    # by the next ingest, and its loaded rows then count as duplicates instead of loading twice.
    if logs:
        wh.merge("production_logs", rows_to_table("production_logs", logs))
    if counts.retried:  # the retried lines' old reasons go; those still quarantined are written anew
        wh.execute("DELETE FROM quarantine WHERE cycle_id = $c AND row_number >= $a AND row_number <= $b",
                   {"c": f"ingest:{source}", "a": span["a"], "b": span["b"]})  # fmt: skip
    if quarantine:
        wh.merge("quarantine", rows_to_table("quarantine", quarantine))
    if raw:
        wh.merge("raw_log_lines", rows_to_table("raw_log_lines", raw))
    return counts


def ingest_file(wh: Warehouse, config: FlywheelConfig, path: Path, redact: Redactor, *, fmt: str | None = None,
                source: str | None = None, progress: bool | None = None) -> IngestCounts:  # fmt: skip
    """Ingest one file; ``source`` names it in the raw layer (default: its absolute path);
    ``redact`` makes a quarantined line fit for operators' eyes."""
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    kind = file_format(path, fmt)
    earliest = datetime.fromisoformat(config.validation.earliest_timestamp)
    earliest = earliest if earliest.tzinfo else earliest.replace(tzinfo=UTC)
    source = source or source_name(path)
    counts = IngestCounts()
    lines = READERS[kind](path, config, earliest)
    with tqdm(desc=path.name, unit=" lines", disable=None if progress is None else not progress, leave=False) as bar:
        for batch in _batches(lines, config.ingest.batch_lines):
            counts.add(_ingest_batch(wh, redact, source, path.name, batch))
            bar.update(len(batch))
    log.info("%s: %s", path, counts.summary())
    return counts
