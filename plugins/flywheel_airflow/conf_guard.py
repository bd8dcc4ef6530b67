"""Unknown conf keys refused when a cycle is triggered, before any run exists.

Airflow validates a run's params against their schemas when the run is created, but passes conf
keys that are no param through without a word (apache/airflow#29018): `{"epoch": 3}` would start a
run on the configured epochs. This ASGI middleware, installed on the API server's root app by the
plugin (``fastapi_root_middlewares``), looks at the two requests that create cycle runs, a trigger
(``POST /api/v2/dags/<dag_id>/dagRuns``, which the UI's Trigger form sends too) and a backfill
(``POST /api/v2/backfills`` and its ``dry_run``), and answers 400 with the unknown names and the
known ones when a cycle DAG's conf holds a key that is none of its params. Every other request,
and every other DAG's, passes untouched. The run's first task still checks the params
(`flywheel.runconfig.checked_params`) for runs made another way (``airflow dags test``, the CLI).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from flywheel.runconfig import RUN_PARAMS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The cycle DAGs and whether each offers the bootstrap's own params (`cycle_params`); a DAG
# integrity test holds this to the params the DAG files declare.
CYCLE_DAGS = {"flywheel_weekly": False, "flywheel_monthly": False, "flywheel_bootstrap": True}
TRIGGER = re.compile(r"/api/v2/dags/([^/]+)/dagRuns/?")
BACKFILL = re.compile(r"/api/v2/backfills(?:/dry_run)?/?")


def known_params(dag_id: str) -> set[str] | None:
    """The params a cycle DAG declares; None for a DAG that is not one of the flywheel's cycles."""
    if dag_id not in CYCLE_DAGS:
        return None
    return {p.name for p in RUN_PARAMS if CYCLE_DAGS[dag_id] or not p.bootstrap_only}


def refusal(dag_id: str, conf: Any) -> str | None:
    """Why a run of ``dag_id`` with ``conf`` must not be created, or None."""
    known = known_params(dag_id)
    if known is None or not isinstance(conf, dict):
        return None  # not a cycle, or not a dict (Airflow refuses that itself)
    unknown = sorted(set(conf) - known)
    if not unknown:
        return None
    return (f"unknown run params {unknown} for {dag_id}: a misspelt param would leave the run on the config it meant "
            f"to change; known params: {sorted(known)}")  # fmt: skip


def _dag_and_conf(path: str, body: bytes) -> tuple[str, Any] | None:
    """The DAG and conf a run-creating request asks for, or None for any other request."""
    trigger = TRIGGER.search(path)
    backfill = BACKFILL.search(path)
    if not ((trigger and trigger.end() == len(path)) or (backfill and backfill.end() == len(path))):
        return None
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return None  # Airflow answers a body that is not JSON
    if not isinstance(payload, dict):
        return None
    if trigger and trigger.end() == len(path):
        return unquote(trigger.group(1)), payload.get("conf")
    return str(payload.get("dag_id", "")), payload.get("dag_run_conf")


class RunConfGuard:
    """ASGI middleware: 400 for a cycle run whose conf has keys that are no param of its DAG."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or "/api/v2/" not in path:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message)
            more = message.get("more_body", False)
        body = b"".join(m.get("body", b"") for m in chunks)
        asked = _dag_and_conf(path, body)
        problem = refusal(*asked) if asked else None
        if problem is None:
            await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)
            return
        content = json.dumps({"detail": problem}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": content})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that hands the buffered messages back first, then the client's own."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
