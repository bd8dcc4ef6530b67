"""The flywheel dashboard: a FastAPI app the Airflow API server serves under ``/flywheel``.

The learning curve (``/flywheel/curve.png``, drawn from the warehouse on each request), velocity
plots over cycles (with phases), each cycle's decision and why with links to its report
(``/flywheel/reports/<cycle_id>/``) and its gates' Data Docs, the champion and its lineage, every model's status,
running A/B tests, new-data checks, recent gate failures, alerts and rollbacks, read from the warehouse through
`flywheel.ops.report` (the functions the cycle reports use). Airflow does not authenticate plugin
apps, so every route here depends on Airflow's own `requires_authenticated`: without a valid
Airflow token (the UI's session cookie, or a bearer token from ``/auth/token``) it answers 401,
or, to a browser, redirects to Airflow's login page.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException


def _authenticated() -> Any:
    from airflow.api_fastapi.core_api.security import requires_authenticated

    return Depends(requires_authenticated())


def _warehouse(config: Any = None):
    from flywheel.config import load_config
    from flywheel_airflow.hooks import FlywheelWarehouseHook

    wh = FlywheelWarehouseHook(config or load_config()).get_warehouse()
    wh.ensure_schema()
    return wh


def render_curve() -> bytes:
    """The learning curve of every cycle so far as PNG bytes, on the configured phase bands."""
    from flywheel.config import load_config
    from flywheel.ops.curve import write_learning_curve

    config = load_config()
    buf = io.BytesIO()
    write_learning_curve(_warehouse(config), config.phases, buf)
    return buf.getvalue()


def _png(plot: Any, rows: Any) -> str:
    """A plot as an inline <img>, drawn into memory (nothing written to the artefact store)."""
    buf = io.BytesIO()
    plot(rows, buf)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(rows: list[dict[str, Any]], columns: list[str], empty: str, *, markup: tuple[str, ...] = ()) -> str:
    """An HTML table of ``rows``; every cell escaped but those of the ``markup`` columns, which
    this module built itself (links)."""
    if not rows:
        return f"<p class='empty'>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    cell = lambda r, c: str(r.get(c) or "") if c in markup else html.escape(_cell(r.get(c)))  # noqa: E731
    body = "".join("<tr>" + "".join(f"<td>{cell(r, c)}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


def dashboard_data(wh: Any, reviewers_per_item: int = 1) -> dict[str, Any]:
    """Everything the page shows, as plain data (also served as JSON). ``reviewers_per_item``:
    the configured reviews an item needs (`review.reviewers_per_item`)."""
    from flywheel.model import registry
    from flywheel.ops.metrics import challenger_decision
    from flywheel.ops.report import (
        champion_lineage,
        recent_alerts,
        recent_gate_failures,
        rollbacks,
        velocity_rows,
    )

    rows = velocity_rows(wh)
    # Every table exists: the app opens the warehouse with `ensure_schema` (`_warehouse`).
    all_experiments = wh.query("SELECT * FROM experiments ORDER BY started_at DESC").to_pylist()
    experiments = [e for e in all_experiments if e["status"] == "running"]
    # Why each challenger is or is not champion: its A/B test's outcome where it had one, else
    # the offline gate's decision (the promotions table keeps the reason, e.g. a slice regression).
    by_cycle = {e["cycle_id"]: e for e in reversed(all_experiments)}  # the newest test per cycle
    offline = {p["cycle_id"]: p["reason"] for p in wh.select("promotions").to_pylist()}
    new_data = wh.query("SELECT cycle_id, newest_start, newest_end, n_newest, twin_accuracy, challenger_accuracy, "
                        "delta, verdict, flagged FROM new_data_comparisons ORDER BY logical_date").to_pylist()  # fmt: skip
    return {
        "cycles": [
            {"cycle_id": r.cycle_id, "dag_id": r.dag_id, "logical_date": r.logical_date, "phase": r.phase,
             "kept": r.kept, "pass_rate": r.pass_rate, "champion_accuracy": r.champion_accuracy,
             "challenger_accuracy": r.challenger_accuracy, "promoted": r.promoted,
             "examples_per_day": r.get("examples_per_day"), "quality_delta": r.get("quality_delta"),
             "decision": challenger_decision(r.promoted, r.challenger, (by_cycle.get(r.cycle_id) or {}).get("status")),
             "why": (by_cycle.get(r.cycle_id) or {}).get("reason") or offline.get(r.cycle_id)}
            for r in rows
        ],
        "ab_tests": [e for e in all_experiments if e["status"] != "running"],
        # Items short of their reviews, per cycle: a cycle waiting at its review sensor needs these.
        "review_waiting": wh.query(
            "SELECT cycle_id, COUNT(*) AS waiting FROM (SELECT i.cycle_id, i.item_id, COUNT(r.reviewer) AS n "
            "FROM review_items i LEFT JOIN reviews r ON r.item_id = i.item_id GROUP BY i.cycle_id, i.item_id) t "
            "WHERE n < $k GROUP BY cycle_id ORDER BY cycle_id", {"k": reviewers_per_item}).to_pylist(),
        "champion": registry.current_champion(wh) if wh.count("promotions") else None,
        "lineage": champion_lineage(wh) if wh.count("promotions") else [],
        "statuses": [{"version": v, "status": s} for v, s in sorted(registry.model_statuses(wh).items())],
        "experiments": experiments,
        "gate_failures": recent_gate_failures(wh),
        "alerts": recent_alerts(wh),
        "rollbacks": rollbacks(wh),
        "new_data": new_data,
    }  # fmt: skip


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d2733; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
table { border-collapse: collapse; font-size: 0.85rem; } td, th { border: 1px solid #d5dbe3; padding: 3px 7px; }
th { background: #f0f3f7; text-align: left; } .empty { color: #6b7785; } img { max-width: 100%; }
"""


GATE_NAMES = {"raw_window": "raw data docs", "training_set": "training-set data docs"}


def _cycle_links(cycle_id: str, gates: set[str]) -> str:
    """The cycle's report and its gates' Data Docs pages, relative to the dashboard."""
    c = quote(cycle_id, safe="")
    links = [f'<a href="reports/{c}/">report</a>']
    links += [f'<a href="gates/{c}/{quote(g)}">{html.escape(GATE_NAMES.get(g, g))}</a>' for g in sorted(gates)]
    return " · ".join(links)


def _waiting(waiting: list[dict[str, Any]]) -> str:
    if not waiting:
        return "<span class='empty'>no item waits for review.</span>"
    per_cycle = ", ".join(f"{html.escape(w['cycle_id'])}: {w['waiting']}" for w in waiting)
    return f"<b>{sum(w['waiting'] for w in waiting)}</b> items wait ({per_cycle}): <a href=\"review/\">review them</a>"


def render_dashboard(wh: Any, reviewers_per_item: int = 1) -> str:
    from flywheel.ops.report import plot_rule_pass_rates, plot_velocity, velocity_rows

    data = dashboard_data(wh, reviewers_per_item)
    gates: dict[str, set[str]] = {}
    for g in wh.query("SELECT DISTINCT cycle_id, gate FROM gate_results").to_pylist():
        gates.setdefault(g["cycle_id"], set()).add(g["gate"])
    cycles = [c | {"links": _cycle_links(c["cycle_id"], gates.get(c["cycle_id"], set()))} for c in data["cycles"]]
    rows = velocity_rows(wh)
    plots = (_png(plot_velocity, rows) + _png(plot_rule_pass_rates, rows)) if rows else "<p class='empty'>No cycle recorded yet.</p>"
    # Its own route, relative to the page (/flywheel/): the browser sends the same Airflow token.
    curve = ('<img alt="learning curve: golden-set accuracy per cycle" src="curve.png">' if rows
             else "<p class='empty'>No cycle recorded yet.</p>")  # fmt: skip
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Flywheel</title><style>{STYLE}</style></head><body>
<h1>Flywheel</h1>
<p>Champion: <b>{html.escape(data["champion"] or "none yet")}</b></p>
<p>Review: {_waiting(data["review_waiting"])}</p>
<p>Quarantine: <a href="quarantine">every cycle's malformed rows, each with its reason</a> | Data Docs: <a href="data-docs/index.html">the gates' validation results</a></p>
<h2>Learning curve</h2>{curve}
<h2>Velocity</h2>{plots}
{_table(cycles, ["cycle_id", "phase", "kept", "pass_rate", "examples_per_day", "champion_accuracy", "challenger_accuracy", "quality_delta", "decision", "why", "links"], "No cycle recorded yet.", markup=("links",))}
<h2>Champion lineage</h2>{_table(data["lineage"], ["version", "cycle_id", "window_start", "window_end", "dataset_hash"], "No champion yet.")}
<h2>Models</h2>{_table(data["statuses"], ["version", "status"], "No model registered yet.")}
<h2>Running A/B tests</h2>{_table(data["experiments"], ["experiment_id", "challenger", "champion", "traffic_share", "started_at"], "No A/B test running.")}
<h2>Past A/B tests</h2>{_table(data["ab_tests"], ["experiment_id", "challenger", "champion", "status", "reason", "started_at", "updated_at"], "No A/B test has ended.")}
<h2>New data vs old data</h2>{_table(data["new_data"], ["cycle_id", "newest_start", "newest_end", "n_newest", "twin_accuracy", "challenger_accuracy", "delta", "verdict", "flagged"], "No twin trained yet (monthly cycles, or the compare_new_data param).")}
<h2>Recent gate failures</h2>{_table(data["gate_failures"], ["cycle_id", "gate", "n_failed", "docs_url", "evaluated_at"], "No gate has failed.")}
<h2>Rollbacks</h2>{_table(data["rollbacks"], ["cycle_id", "champion_before", "champion_after", "reason", "decided_at"], "No rollback.")}
<h2>Recent alerts</h2>{_table(data["alerts"], ["raised_at", "dag_id", "task_id", "kind", "message"], "No alert.")}
</body></html>"""  # fmt: skip


QUARANTINE_ROWS_SHOWN = 500


def quarantine_data(wh: Any, cycle_id: str | None) -> dict[str, Any]:
    """Without ``cycle_id``: each cycle (and ingested file, ``ingest:<file>``) with quarantined
    rows. With it: that cycle's counts by field.rule and its first rows, each with its reason and
    the row as kept (text fields PII-redacted when they were quarantined)."""
    if cycle_id is None:
        return {"cycles": wh.query(
            "SELECT cycle_id, COUNT(DISTINCT row_number) AS rows_quarantined, COUNT(*) AS reasons, "
            "MAX(quarantined_at) AS quarantined_at FROM quarantine GROUP BY cycle_id "
            "ORDER BY MAX(quarantined_at) DESC, cycle_id LIMIT 200").to_pylist()}  # fmt: skip
    where = {"c": cycle_id}
    by_rule = wh.query("SELECT field, rule, COUNT(*) AS n FROM quarantine WHERE cycle_id = $c "
                       "GROUP BY field, rule ORDER BY n DESC, field, rule", where).to_pylist()  # fmt: skip
    rows = wh.query("SELECT row_number, request_id, field, rule, reason, raw_json FROM quarantine WHERE cycle_id = $c "
                    f"ORDER BY row_number, field, rule LIMIT {QUARANTINE_ROWS_SHOWN}", where).to_pylist()  # fmt: skip
    return {"cycle_id": cycle_id, "rows_quarantined": wh.query(
        "SELECT COUNT(DISTINCT row_number) AS n FROM quarantine WHERE cycle_id = $c", where).column("n")[0].as_py(),
        "by_rule": by_rule, "rows": rows}  # fmt: skip


def render_quarantine(wh: Any, cycle_id: str | None) -> str:
    data = quarantine_data(wh, cycle_id)
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>Quarantine</title><style>{STYLE}</style></head><body>"
    if cycle_id is None:
        items = "".join(
            f"<tr><td><a href=\"?cycle_id={quote(c['cycle_id'], safe='')}\">{html.escape(c['cycle_id'])}</a></td>"
            f"<td>{c['rows_quarantined']}</td><td>{c['reasons']}</td><td>{html.escape(_cell(c['quarantined_at']))}</td></tr>"
            for c in data["cycles"]
        )
        table = (f"<table><thead><tr><th>cycle (or ingested file)</th><th>rows</th><th>reasons</th><th>last</th></tr></thead>"
                 f"<tbody>{items}</tbody></table>" if items else "<p class='empty'>Nothing is quarantined.</p>")  # fmt: skip
        return f"{head}<h1>Quarantine</h1><p><a href='./'>dashboard</a></p>{table}</body></html>"
    for r in data["rows"]:
        raw = r.get("raw_json") or ""
        r["raw_json"] = raw if len(raw) <= 400 else f"{raw[:400]}... ({len(raw)} characters)"
    shown = f" (the first {QUARANTINE_ROWS_SHOWN} reasons below)" if len(data["rows"]) == QUARANTINE_ROWS_SHOWN else ""
    return f"""{head}<h1>Quarantine: {html.escape(cycle_id)}</h1>
<p><a href="quarantine">every cycle</a> | <a href="./">dashboard</a></p>
<p><b>{data["rows_quarantined"]}</b> rows quarantined{shown}.</p>
<h2>By field and rule</h2>{_table(data["by_rule"], ["field", "rule", "n"], "Nothing quarantined.")}
<h2>Rows</h2>{_table(data["rows"], ["row_number", "request_id", "field", "rule", "reason", "raw_json"], "Nothing quarantined.")}
</body></html>"""


def artefacts_here(config: Any, *parts: str) -> Path:
    """A folder of the artefact store on this machine (fetched from the bucket when artefacts
    live in one): the Data Docs site, a cycle's report."""
    from flywheel.artefacts import ArtefactStore

    root = config.artefacts_root.joinpath(*parts)
    store = ArtefactStore(config)
    return store.fetch(root) if store.remote and store.published(root) else root


def _check_cycle_id(cycle_id: str) -> None:
    """A cycle id names one folder: no separators, no dot segments (404 otherwise)."""
    if not cycle_id or cycle_id.startswith(".") or any(c in cycle_id for c in "/\\\0"):
        raise StarletteHTTPException(404, "no such cycle")


def render_report(markdown: str, cycle_id: str) -> str:
    """A cycle's ``report.md`` as a page; its plots resolve beside it (``reports/<cycle>/``). Raw
    HTML in the Markdown is shown as text (markdown-it's ``html`` option off)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Report {html.escape(cycle_id)}</title>"
            f"<style>{STYLE}</style></head><body><p><a href='../../'>dashboard</a></p>{body}</body></html>")  # fmt: skip


def create_app() -> FastAPI:
    from flywheel.config import load_config
    from flywheel.evaluation.serving import current_manifest, route_user
    from flywheel_airflow.review_ui import create_router

    app = FastAPI(title="Flywheel dashboard and review", dependencies=[_authenticated()])
    app.include_router(create_router())

    @app.exception_handler(StarletteHTTPException)
    async def login_for_browsers(request: Request, exc: StarletteHTTPException) -> Response:
        """A browser that is not logged in goes to Airflow's login page, and back here after it;
        API clients (no ``text/html`` in Accept) keep the 401 and its JSON."""
        if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
            from airflow.api_fastapi.app import get_auth_manager

            login = get_auth_manager().get_url_login()
            return RedirectResponse(f"{login}?next={quote(str(request.url), safe='')}", status_code=303)
        return await http_exception_handler(request, exc)

    @app.get("/", response_class=HTMLResponse)
    def dashboard() -> str:
        config = load_config()
        return render_dashboard(_warehouse(config), config.review.reviewers_per_item)

    @app.get("/api/summary")
    def summary() -> dict[str, Any]:
        config = load_config()
        return dashboard_data(_warehouse(config), config.review.reviewers_per_item)

    @app.get("/quarantine", response_class=HTMLResponse)
    def quarantine(cycle_id: str | None = None) -> str:
        return render_quarantine(_warehouse(), cycle_id)

    @app.get("/api/quarantine")
    def quarantine_json(cycle_id: str | None = None) -> dict[str, Any]:
        return quarantine_data(_warehouse(), cycle_id)

    @app.get("/api/serving")
    def serving_json() -> dict[str, Any]:
        """The serving manifest: base model, champion and challenger adapters (URIs and hashes),
        the A/B share and salt (`flywheel.evaluation.serving`)."""
        manifest = current_manifest(load_config())
        if manifest is None:
            raise StarletteHTTPException(404, "no serving manifest yet: it is published at the first promotion decision")
        return manifest

    @app.get("/api/route")
    def route_json(user_id: str) -> dict[str, Any]:
        """Which model answers ``user_id`` now: the A/B test's own hashing over the manifest."""
        if not user_id.strip():
            raise StarletteHTTPException(422, "user_id is empty")
        manifest = serving_json()
        return {"manifest_version": manifest["version"], "user_id": user_id, **route_user(manifest, user_id)}

    @app.get("/gates/{cycle_id}/{gate}")
    def gate_docs(cycle_id: str, gate: str, request: Request) -> Response:
        """The Data Docs page of a cycle's gate result (the gate tasks' "Data Docs" link)."""
        config = load_config()
        rows = _warehouse(config).select("gate_results", {"cycle_id": cycle_id, "gate": gate}).to_pylist()
        if not rows or not rows[0]["docs_url"]:
            raise StarletteHTTPException(404, f"no {gate} gate result for {cycle_id}")
        url = rows[0]["docs_url"]
        if not url.startswith("file://"):
            return RedirectResponse(url, status_code=307)
        try:
            page = Path(unquote(urlsplit(url).path)).relative_to(config.artefacts_root / "data_docs")
        except ValueError:
            raise StarletteHTTPException(404, "the gate's Data Docs page is outside the Data Docs site") from None
        return RedirectResponse(str(request.url_for("data_docs", path=page.as_posix())), status_code=307)

    @app.get("/data-docs/{path:path}", name="data_docs")
    def data_docs(path: str) -> Response:
        """The Great Expectations Data Docs site the gates write (behind Airflow's login, like
        every page here)."""
        root = artefacts_here(load_config(), "data_docs").resolve()
        target = (root / (path or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise StarletteHTTPException(404, "no such Data Docs page")
        return FileResponse(target)

    @app.get("/reports/{cycle_id}/", response_class=HTMLResponse)
    def report(cycle_id: str) -> str:
        """The cycle's report (``write_report``), rendered, behind the login."""
        _check_cycle_id(cycle_id)
        page = artefacts_here(load_config(), "reports", cycle_id) / "report.md"
        if not page.is_file():
            raise StarletteHTTPException(404, f"no report for {cycle_id}: write_report writes it at the end of the cycle")
        return render_report(page.read_text(encoding="utf-8"), cycle_id)

    @app.get("/reports/{cycle_id}/{name}")
    def report_file(cycle_id: str, name: str) -> Response:
        """A file of the cycle's report (its plots)."""
        _check_cycle_id(cycle_id)
        config = load_config()
        root = (config.artefacts_root / "reports").resolve()
        folder = artefacts_here(config, "reports", cycle_id).resolve()
        target = (folder / name).resolve()
        if not folder.is_relative_to(root) or target.parent != folder or not target.is_file():
            raise StarletteHTTPException(404, "no such report file")
        return FileResponse(target)

    @app.get("/curve.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def curve() -> Response:
        # Drawn on each request, so the page always shows the cycles recorded so far.
        return Response(render_curve(), media_type="image/png", headers={"Cache-Control": "no-store"})

    return app
