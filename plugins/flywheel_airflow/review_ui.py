"""The review UI: where people score the cycle's review sample, inside Airflow.

Served by the plugin's FastAPI app under ``/flywheel/review/`` and, like every route of that
app, only to a logged-in Airflow user (the reviewer is that user). A reviewer sees one item at a
time: the redacted prompt, context, response and the user's correction, why it was picked, and
scores it with the keyboard: ``1``-``5`` score accuracy, then helpfulness, then safety; ``a``
approves, ``r`` rejects (each submits); ``e`` edits the answer. Items come from
`flywheel.review.items.next_item` (oldest cycle first, highest priority first, leased to the reviewer).

Teams on Label Studio can export the waiting items as Label Studio tasks and import the
annotations back as reviews.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Form, HTTPException
from fastapi.responses import HTMLResponse, RedirectResponse


def _reviewer() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    # A default, not an annotation: under postponed annotations FastAPI could not resolve a
    # locally imported dependency in `Annotated[...]`.
    async def reviewer(user: Any = Depends(get_user)) -> str:  # noqa: B008
        return str(user.get_name())

    return Depends(reviewer)


def _store():
    from flywheel.config import load_config
    from flywheel_airflow.hooks import FlywheelWarehouseHook

    config = load_config()
    wh = FlywheelWarehouseHook(config).get_warehouse()
    wh.ensure_schema()
    return config, wh


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Flywheel review</title><style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; max-width: 60rem; color: #1d2733; }}
.box {{ border: 1px solid #d5dbe3; border-radius: 6px; padding: .6rem .9rem; margin: .5rem 0; white-space: pre-wrap; }}
.label {{ font-size: .8rem; color: #6b7785; text-transform: uppercase; }} .scores span {{ margin-right: 1.2rem; }}
.active {{ outline: 2px solid #1f6feb; }} kbd {{ border: 1px solid #aaa; border-radius: 3px; padding: 0 .3rem; }}
</style></head><body>
<h1>Review</h1><p>Reviewer <b>{reviewer}</b> · {waiting} item(s) waiting · {done} reviewed by you</p>{body}
<p class="label">Keys: <kbd>1</kbd>-<kbd>5</kbd> score accuracy, helpfulness, safety in turn · <kbd>a</kbd> approve
· <kbd>r</kbd> reject · <kbd>e</kbd> edit the answer · <kbd>Esc</kbd> leave the editor</p>
</body></html>"""

FORM = """<p class="label">Cycle {cycle} · {task_type} · user {user_action} · {slice} slice · why: {reasons}</p>
<div class="label">Prompt</div><div class="box" id="prompt">{prompt}</div>
{context}<div class="label">Model's answer</div><div class="box" id="response">{response}</div>{correction}
<form method="post" action="items/{item_id}" id="review">
<div class="scores">{scores}</div>
<p><label class="label" for="edited_response">Edited answer (optional)</label><br>
<textarea name="edited_response" id="edited_response" rows="2" cols="70"></textarea></p>
<input type="hidden" name="verdict" id="verdict"><input type="hidden" name="seconds_spent" id="seconds_spent">
<button type="button" id="approve">Approve (a)</button> <button type="button" id="reject">Reject (r)</button>
</form>
<script>
const dims = ["accuracy", "helpfulness", "safety"]; let current = 0; const t0 = Date.now();
const mark = () => dims.forEach((d, i) => document.getElementById("score-" + d).classList.toggle("active", i === current));
function submit(verdict) {{
  if (dims.some(d => !document.querySelector(`input[name=${{d}}]:checked`))) {{ alert("Score accuracy, helpfulness and safety first"); return; }}
  document.getElementById("verdict").value = verdict;
  document.getElementById("seconds_spent").value = ((Date.now() - t0) / 1000).toFixed(1);
  document.getElementById("review").submit();
}}
document.getElementById("approve").onclick = () => submit("approve");
document.getElementById("reject").onclick = () => submit("reject");
document.addEventListener("keydown", e => {{
  if (e.target.tagName === "TEXTAREA") {{ if (e.key === "Escape") e.target.blur(); return; }}
  if (e.key >= "1" && e.key <= "5") {{
    document.querySelector(`input[name=${{dims[current]}}][value="${{e.key}}"]`).checked = true;
    current = Math.min(current + 1, dims.length - 1); mark();
  }} else if (e.key === "a") submit("approve");
  else if (e.key === "r") submit("reject");
  else if (e.key === "e") {{ e.preventDefault(); document.getElementById("edited_response").focus(); }}
}});
mark();
</script>"""


def _scores() -> str:
    out = []
    for dim in ("accuracy", "helpfulness", "safety"):
        radios = "".join(f'<label><input type="radio" name="{dim}" value="{v}">{v}</label> ' for v in range(1, 6))
        out.append(f'<span id="score-{dim}"><b>{dim}</b> {radios}</span>')
    return "".join(out)


def render_item(item: dict[str, Any] | None) -> str:
    if item is None:
        return "<p id='empty'>Nothing to review right now. Thank you!</p>"
    e = lambda v: html.escape(v or "")  # noqa: E731
    context = f'<div class="label">Context</div><div class="box">{e(item["context"])}</div>' if item["context"] else ""
    correction = (f'<div class="label">User\'s correction</div><div class="box" id="correction">{e(item["correction"])}</div>'
                  if item["correction"] else "")  # fmt: skip
    return FORM.format(
        cycle=e(item["cycle_id"]), task_type=e(item["task_type"]), user_action=e(item["user_action"]), slice=e(item["slice"]),
        reasons=e("; ".join(json.loads(item["reasons_json"] or "[]"))), prompt=e(item["prompt"]), context=context,
        response=e(item["response"]), correction=correction, item_id=html.escape(item["item_id"], quote=True), scores=_scores(),
    )  # fmt: skip


def create_router() -> APIRouter:
    router = APIRouter(prefix="/review")

    @router.get("/", response_class=HTMLResponse)
    def review_page(reviewer: str = _reviewer()) -> str:
        from flywheel.review.items import next_item

        config, wh = _store()
        now = datetime.now(UTC)
        item = next_item(wh, reviewer, reviewers_per_item=config.review.reviewers_per_item,
                         lease=timedelta(minutes=config.review.lease_minutes), now=now)  # fmt: skip
        waiting = wh.query(
            "SELECT COUNT(*) AS n FROM review_items i WHERE (SELECT COUNT(*) FROM reviews r WHERE r.item_id = i.item_id) < $k",
            {"k": config.review.reviewers_per_item},
        ).column("n")[0].as_py()
        done = wh.count("reviews", {"reviewer": reviewer})
        return PAGE.format(reviewer=html.escape(reviewer), waiting=waiting, done=done, body=render_item(item))

    @router.post("/items/{item_id}")
    def submit(
        item_id: str,
        accuracy: int = Form(...),
        helpfulness: int = Form(...),
        safety: int = Form(...),
        verdict: str = Form(...),
        edited_response: str | None = Form(None),
        seconds_spent: float | None = Form(None),
        reviewer: str = _reviewer(),
    ) -> RedirectResponse:
        from flywheel.review.items import ReviewError, submit_review

        _, wh = _store()
        try:
            submit_review(wh, item=item_id, reviewer=reviewer, accuracy=accuracy, helpfulness=helpfulness, safety=safety,
                          verdict=verdict, edited_response=edited_response, seconds_spent=seconds_spent)  # fmt: skip
        except ReviewError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        return RedirectResponse("../", status_code=303)  # the next item

    @router.get("/export/label-studio")
    def export_label_studio(cycle_id: str) -> list[dict[str, Any]]:
        from flywheel.review.items import to_label_studio

        _, wh = _store()
        return to_label_studio(wh.select("review_items", {"cycle_id": cycle_id}, order_by="item_id").to_pylist())

    @router.post("/import/label-studio")
    def import_label_studio(tasks: Annotated[list[dict[str, Any]], Body()], reviewer: str = _reviewer()) -> dict[str, Any]:
        from flywheel.review.items import ReviewError, from_label_studio, submit_review

        _, wh = _store()
        stored, refused = 0, []
        for r in from_label_studio(tasks):
            try:
                submit_review(wh, **r)
                stored += 1
            except (ReviewError, TypeError) as exc:
                refused.append({"item": r.get("item"), "reviewer": r.get("reviewer"), "reason": str(exc)})
        return {"stored": stored, "refused": refused, "imported_by": reviewer}

    return router
