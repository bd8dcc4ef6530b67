"""The simulated product's logs written in the shapes other teams' logs have (OpenAI
chat-completions calls, Langfuse traces, OpenTelemetry GenAI spans), with a product's own
feedback vocabulary, to test and show `flywheel.data.shapes` on more than a handful of lines.

``python -m flywheel.sim.shapes SHAPE OUT.jsonl [--requests N] [--seed S]`` writes a simulated
week; ``FEEDBACK`` is the vocabulary to give ``ingest.actions``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel.sim.traffic import AnswerFn, simulate_traffic

# The product's feedback buttons -> the flywheel's actions (what `ingest.actions` is given).
FEEDBACK = {"thumbs_up": "accepted", "copy": "copied", "edit": "corrected", "retry": "regenerated"}
_BUTTON = {action: button for button, action in FEEDBACK.items()}
# Langfuse keeps feedback as a numeric score; the product records the button as its comment.
LANGFUSE_FEEDBACK = {"1": "accepted", "2": "copied", "-1": "corrected", "0": "regenerated"}
_SCORE = {action: float(value) for value, action in LANGFUSE_FEEDBACK.items()}


def openai_chat(row: dict[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are the shop's assistant. Be brief."}]
    # Half the requests send content as parts, as the multimodal API allows.
    if int(row["request_id"][:2], 16) % 2:
        messages.append({"role": "user", "content": [{"type": "text", "text": row["prompt"]}]})
    else:
        messages.append({"role": "user", "content": row["prompt"]})
    metadata = {"task_type": row["task_type"], **({"context": row["context"]} if row["context"] else {})}
    return {
        "request": {"model": "shop-assistant", "messages": messages, "user": row["user_id"], "metadata": metadata},
        "response": {
            "id": row["request_id"], "object": "chat.completion", "created": int(row["timestamp"].timestamp()),
            "model": row["model_version"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": row["response"]}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43},
        },
        "feedback": _BUTTON.get(row["user_action"], row["user_action"]),
        "correction": row["correction"],
        "quality_score": row["quality_score"],
        "latency_ms": 182,
    }  # fmt: skip


def langfuse(row: dict[str, Any]) -> dict[str, Any]:
    ts = row["timestamp"].astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "id": row["request_id"], "timestamp": ts, "name": "answer", "userId": row["user_id"], "sessionId": None,
        "input": {"messages": [{"role": "user", "content": row["prompt"]}]},
        "output": {"role": "assistant", "content": row["response"]},
        "metadata": {"task_type": row["task_type"], "context": row["context"], "correction": row["correction"]},
        "tags": ["production"], "release": None, "version": None,
        "scores": [
            {"name": "user_feedback", "value": _SCORE[row["user_action"]], "comment": _BUTTON[row["user_action"]]},
            {"name": "quality", "value": row["quality_score"]},
        ],
        "observations": [{"type": "GENERATION", "name": "llm", "model": row["model_version"], "startTime": ts}],
    }  # fmt: skip


def _kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value if isinstance(value, str) else json.dumps(value)}}


def otel_genai(row: dict[str, Any]) -> dict[str, Any]:
    start = int(row["timestamp"].timestamp()) * 10**9 + row["timestamp"].microsecond * 1000
    attributes = [
        _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.provider.name", "openai"),
        _kv("gen_ai.request.model", "shop-assistant"), _kv("gen_ai.response.model", row["model_version"]),
        _kv("gen_ai.response.id", row["request_id"]), _kv("user.id", row["user_id"]),
        _kv("gen_ai.input.messages", [{"role": "user", "parts": [{"type": "text", "content": row["prompt"]}]}]),
        _kv("gen_ai.output.messages", [{"role": "assistant", "parts": [{"type": "text", "content": row["response"]}],
                                        "finish_reason": "stop"}]),
        _kv("app.user_action", _BUTTON[row["user_action"]]), _kv("app.task_type", row["task_type"]),
        _kv("app.quality_score", row["quality_score"]),
    ]  # fmt: skip
    if row["correction"] is not None:
        attributes.append(_kv("app.correction", row["correction"]))
    if row["context"] is not None:
        attributes.append(_kv("app.context", row["context"]))
    return {
        "traceId": row["request_id"].replace("-", ""), "spanId": row["request_id"][:16].replace("-", ""),
        "name": "chat shop-assistant", "kind": 3, "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 182_000_000), "attributes": attributes, "status": {},
    }  # fmt: skip


RENDER = {"openai_chat": openai_chat, "langfuse": langfuse, "otel_genai": otel_genai}
ACTIONS = {"openai_chat": FEEDBACK, "langfuse": LANGFUSE_FEEDBACK, "otel_genai": FEEDBACK}


def write_week(shape: str, out: Path, answer_fn: AnswerFn, *, week_start: datetime, n_requests: int = 300,
               seed: int = 3) -> list[dict[str, Any]]:  # fmt: skip
    """A simulated week answered by ``answer_fn``, written in ``shape`` to ``out``; returns the
    rows it stands for (the flywheel's records)."""
    rows = simulate_traffic(week_start, answer_fn, model_version="base", n_requests=n_requests, seed=seed,
                            malformed_rate=0.0, adversarial_rate=0.0).to_pylist()  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(RENDER[shape](row), ensure_ascii=False) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flywheel.sim.shapes", description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", choices=sorted(RENDER))
    parser.add_argument("out", type=Path)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--week", default="2026-01-05", help="the Monday the week starts (UTC)")
    args = parser.parse_args(argv)
    week = datetime.fromisoformat(args.week).replace(tzinfo=UTC)
    # A model that answers every request "42": right on some sums, corrected or retried elsewhere.
    rows = write_week(args.shape, args.out, lambda pairs: ["42"] * len(pairs), week_start=week,
                      n_requests=args.requests, seed=args.seed)  # fmt: skip
    print(f"{args.out}: {len(rows)} {args.shape} lines; ingest with ingest.shape={args.shape} and "
          f"ingest.actions={json.dumps(ACTIONS[args.shape])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
