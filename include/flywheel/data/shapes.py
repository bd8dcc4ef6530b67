"""The log shapes teams already have, mapped onto the flywheel's record at ingestion.

A product's logs rarely have the flywheel's field names. ``ingest.shape`` names what a line of a
log file is, and ``ingest.fields`` / ``ingest.actions`` / ``ingest.task_type_rules`` adjust it:

- ``flywheel``: the flywheel's own record (``production_logs``' fields); with no ``fields``
  mapping, a field the record does not have is quarantined (the strict default);
- ``openai_chat``: ``{"request": <chat-completions request body>, "response": <ChatCompletion>}``
  and the product's own fields beside them (``feedback``, ``correction``, ...): what a product
  that calls an OpenAI-compatible API logs per call;
- ``langfuse``: one trace per line as Langfuse exports it (``id``, ``timestamp``, ``userId``,
  ``input``, ``output``, ``metadata``, ``scores``, ``observations``), the user's feedback and the
  quality score read from named scores;
- ``otel_genai``: one OpenTelemetry span per line as JSON (OTLP's ``attributes`` list of
  key/value pairs, or a plain object), with the GenAI semantic conventions' ``gen_ai.*``
  attributes (``gen_ai.input.messages``, ``gen_ai.output.messages``, ``gen_ai.response.id``...).

Each field of the record is read with a JMESPath expression (the `jmespath` library, the query
language AWS's CLI uses): the shape's defaults, overridden per field by ``ingest.fields``. Then:

- a chat value (a list of messages, content parts, ``{"messages": ...}``) becomes text: the
  prompt is the last user turn, the response the first assistant message; a part that is not
  text (an image, audio) is a quarantine reason, never dropped silently;
- an epoch timestamp is read in the shape's unit (OpenAI's ``created``: seconds; OTLP's
  ``startTimeUnixNano``: nanoseconds), defined by the format, never guessed;
- the product's feedback values map onto the four actions through ``ingest.actions``
  (``thumbs_up: accepted``, ``edit: corrected``, ``retry: regenerated``); a value the mapping
  does not know is quarantined with the mapping's values listed;
- a record without a task type takes the first of ``ingest.task_type_rules`` whose pattern
  matches its prompt.

What a mapped record says is then typed as strictly as a flywheel record (`flywheel.data.ingest`),
and the line itself is kept verbatim in the raw layer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jmespath

from flywheel.config import USER_ACTIONS, IngestConfig
from flywheel.errors import ConfigError
from flywheel.records import PRODUCTION_LOG_FIELDS

Problem = tuple[str, str, str]  # (field, rule, reason)
TEXT_FIELDS = ("prompt", "response", "correction", "context")


@dataclass(frozen=True)
class Shape:
    name: str
    fields: dict[str, str]  # flywheel field -> JMESPath into the line's record
    timestamp_unit: str  # "iso", or the unit of an epoch number: "s", "ms", "ns"


SHAPES: dict[str, Shape] = {
    "flywheel": Shape("flywheel", {}, "iso"),
    "openai_chat": Shape("openai_chat", {
        "request_id": "response.id",
        "timestamp": "response.created",
        "user_id": "request.user || request.metadata.user_id",
        "prompt": "request.messages",
        "response": "response.choices[0].message.content",
        "model_version": "response.model",
        "user_action": "feedback",
        "correction": "correction",
        "task_type": "request.metadata.task_type",
        "quality_score": "quality_score",
        "context": "request.metadata.context",
    }, "s"),
    "langfuse": Shape("langfuse", {
        "request_id": "id",
        "timestamp": "timestamp",
        "user_id": "userId",
        "prompt": "input",
        "response": "output",
        "model_version": "observations[?type=='GENERATION'] | [-1].model || release || version",
        "user_action": "scores[?name=='user_feedback'] | [0].value",
        "correction": "metadata.correction",
        "task_type": "metadata.task_type",
        "quality_score": "scores[?name=='quality'] | [0].value",
        "context": "metadata.context",
    }, "iso"),
    "otel_genai": Shape("otel_genai", {
        "request_id": "attributes.\"gen_ai.response.id\" || spanId",
        "timestamp": "startTimeUnixNano",
        "user_id": "attributes.\"user.id\" || attributes.\"enduser.id\"",
        "prompt": "attributes.\"gen_ai.input.messages\"",
        "response": "attributes.\"gen_ai.output.messages\"",
        "model_version": "attributes.\"gen_ai.response.model\" || attributes.\"gen_ai.request.model\"",
        "user_action": "attributes.\"app.user_action\"",
        "correction": "attributes.\"app.correction\"",
        "task_type": "attributes.\"app.task_type\"",
        "quality_score": "attributes.\"app.quality_score\"",
        "context": "attributes.\"app.context\"",
    }, "ns"),
}  # fmt: skip
_EPOCH_DIGITS = re.compile(r"\d{1,20}")
# A plain path (`response.id`, `attributes."gen_ai.response.id"`, `choices[0]`): read by a lookup,
# with JMESPath's meaning (null where a step is missing), about 5x faster than its interpreter;
# anything else (filters, `||`, pipes) goes through jmespath.
_STEP = re.compile(r'(?:^|\.)(?:([A-Za-z_]\w*)|"([^"\\]+)")|\[(-?\d+)\]')


def _plain_path(expr: str) -> list[str | int] | None:
    steps: list[str | int] = []
    at = 0
    for m in _STEP.finditer(expr):
        if m.start() != at:
            return None
        name, quoted, index = m.groups()
        steps.append(int(index) if index is not None else name or quoted)
        at = m.end()
    return steps if steps and at == len(expr) else None


def _follow(obj: Any, steps: list[str | int]) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(obj, list) or not -len(obj) <= step < len(obj):
                return None
        elif not isinstance(obj, dict):
            return None
        obj = obj[step] if isinstance(step, int) else obj.get(step)
    return obj
_DIVISOR = {"s": 1, "ms": 10**3, "ns": 10**9}


def _otlp_value(value: Any) -> Any:
    """An OTLP JSON ``AnyValue`` ({"stringValue": ...}, {"arrayValue": {"values": [...]}}, ...)
    as a plain value; a JSON text (GenAI messages recorded as a string attribute) parsed."""
    if not isinstance(value, dict) or len(value) != 1:
        return value
    kind, inner = next(iter(value.items()))
    if kind == "stringValue" and isinstance(inner, str):
        if inner[:1] in "[{":
            try:
                return json.loads(inner)
            except ValueError:
                return inner
        return inner
    if kind in ("boolValue", "doubleValue"):
        return inner
    if kind == "intValue":  # int64 is a string in OTLP JSON
        return int(inner) if isinstance(inner, str) and inner.lstrip("-").isdigit() else inner
    if kind == "arrayValue" and isinstance(inner, dict):
        return [_otlp_value(v) for v in inner.get("values", [])]
    if kind == "kvlistValue" and isinstance(inner, dict):
        return _attributes(inner.get("values", []))
    return value


def _attributes(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(kv, dict) and "key" in kv for kv in value):
        return {kv["key"]: _otlp_value(kv.get("value")) for kv in value}
    if isinstance(value, dict):
        return {k: _otlp_value(v) if isinstance(v, dict) else v for k, v in value.items()}
    return value


def _parts_text(parts: list[Any], field: str, problems: list[Problem]) -> str | None:
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        text = part.get("text", part.get("content")) if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text", None) and isinstance(text, str):
            texts.append(text)
        else:
            problems.append((field, "not_text", f"{field} holds a {kind!s:.40} part, not text: the flywheel trains on "
                                                "text only (the raw layer keeps the line)"))  # fmt: skip
            return None
    return "".join(texts)


def chat_text(value: Any, field: str, problems: list[Problem]) -> Any:
    """A chat value as the text the record holds: the last user turn for the prompt, the first
    assistant message for the response; text as it is; anything else unchanged (then typed)."""
    if isinstance(value, dict):
        for key in ("messages", "content", "parts", "text"):
            if key in value:
                return chat_text(value[key], field, problems)
        return value
    if not isinstance(value, list) or not value:
        return value
    if all(isinstance(m, dict) and "role" in m for m in value):
        want = "user" if field == "prompt" else "assistant"
        turns = [m for m in value if m.get("role") == want]
        if not turns:
            return None
        chosen = turns[-1] if field == "prompt" else turns[0]
        return chat_text(chosen.get("content", chosen.get("parts")), field, problems)
    return _parts_text(value, field, problems)


def _epoch(value: Any, unit: str) -> Any:
    if unit == "iso" or isinstance(value, bool):
        return value
    if isinstance(value, str) and _EPOCH_DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value / _DIVISOR[unit], tz=UTC)
        except (OverflowError, OSError, ValueError):
            return value  # typed next: an epoch number it cannot place
    return value


def _action_key(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


class RecordMapper:
    """``ingest.shape`` and its adjustments, applied to one parsed record."""

    def __init__(self, config: IngestConfig) -> None:
        unknown = sorted(set(config.fields) - set(PRODUCTION_LOG_FIELDS))
        if unknown:
            raise ConfigError(f"ingest.fields: {unknown} are not fields of the log record ({', '.join(PRODUCTION_LOG_FIELDS)})")
        self.shape = SHAPES[config.shape]
        exprs = {**self.shape.fields, **config.fields}
        self.exprs = {name: jmespath.compile(expr) for name, expr in exprs.items()}
        self.plain = {name: steps for name, expr in exprs.items() if (steps := _plain_path(expr)) is not None}
        self.unit = config.timestamp_unit or self.shape.timestamp_unit
        self.actions = {str(k).strip().lower(): v for k, v in config.actions.items()}
        self.rules = [(re.compile(r.pattern), r.task_type) for r in config.task_type_rules]
        # The flywheel's own record with nothing to map: typed as it is (unknown fields quarantined).
        self.identity = config.shape == "flywheel" and not (config.fields or config.actions or config.task_type_rules)
        self.strict_fields = config.shape == "flywheel" and not config.fields

    def __call__(self, obj: Any) -> tuple[Any, list[Problem]]:
        if self.identity or not isinstance(obj, dict):
            return obj, []
        problems: list[Problem] = []
        if self.shape.name == "otel_genai":
            if "resourceSpans" in obj:
                return None, [("line", "otlp_bundle", "is an OTLP export of many spans; write one span per line "
                               "(jq -c '.resourceSpans[].scopeSpans[].spans[]')")]  # fmt: skip
            obj = {**obj, "attributes": _attributes(obj.get("attributes"))}
        out: dict[str, Any] = {}
        for name in PRODUCTION_LOG_FIELDS:
            if name in self.plain:
                value = _follow(obj, self.plain[name])
            else:
                expr = self.exprs.get(name)
                value = expr.search(obj) if expr is not None else obj.get(name)
            if name in TEXT_FIELDS:
                value = chat_text(value, name, problems)
            out[name] = value
        if self.strict_fields:  # the flywheel's record with adjusted actions or rules: still strict
            out.update({k: v for k, v in obj.items() if k not in out})
        out["timestamp"] = _epoch(out["timestamp"], self.unit)
        action = out["user_action"]
        # Another shape's feedback is the product's own vocabulary: mapped, or a clear reason.
        if action is not None and (self.actions or self.shape.name != "flywheel"):
            key = _action_key(action)
            mapped = self.actions.get(key.lower(), key if key in USER_ACTIONS else None)
            if mapped is None:
                known = f"not in ingest.actions ({', '.join(sorted(self.actions))})" if self.actions else \
                    "not mapped: ingest.actions is empty"
                problems.append(("user_action", "vocabulary", f"user_action {key[:60]!r} is {known} nor one of "
                                 f"{', '.join(USER_ACTIONS)}; map the product's feedback values in ingest.actions"))  # fmt: skip
            out["user_action"] = mapped
        if out["task_type"] is None and self.rules and isinstance(out["prompt"], str):
            out["task_type"] = next((task for pattern, task in self.rules if pattern.search(out["prompt"])), None)
        return out, problems
