"""Waiting for human review without holding a worker slot.

`WaitForReviewSensor` returns at once when the cycle's review batch is already done (or review
is disabled); otherwise it defers to `ReviewBatchTrigger`, which polls the review store from
the triggerer (asyncio, one coroutine among many) until `review.required_share` of the items
have their reviews, or until the deadline (`review.deadline_hours` after the items were
created). On the deadline the cycle goes on with what is reviewed (`review.on_deadline:
proceed`, logged loudly) or fails its task, which alerts (`fail`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.exceptions import AirflowFailException
from airflow.sdk import BaseSensorOperator, Context
from airflow.triggers.base import BaseTrigger, TriggerEvent

from flywheel.ops.links import review_url
from flywheel_airflow.links import ReviewLink, links_for, remember_links

log = logging.getLogger(__name__)


def _review_state(config_path: str | None, cycle_id: str, reviewers_per_item: int) -> dict[str, Any]:
    from flywheel.config import load_config
    from flywheel.review.items import progress
    from flywheel_airflow.hooks import FlywheelWarehouseHook

    wh = FlywheelWarehouseHook(load_config(config_path)).get_warehouse()
    p = progress(wh, cycle_id, reviewers_per_item)
    return {"items": p.items, "complete": p.complete, "share": p.share}


class ReviewBatchTrigger(BaseTrigger):
    """Fires when a cycle's review batch is complete enough, or at its deadline."""

    def __init__(self, *, cycle_id: str, required_share: float, reviewers_per_item: int, poll_seconds: float,
                 deadline: str, config_path: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.cycle_id = cycle_id
        self.required_share = required_share
        self.reviewers_per_item = reviewers_per_item
        self.poll_seconds = poll_seconds
        self.deadline = deadline
        self.config_path = config_path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"cycle_id": self.cycle_id, "required_share": self.required_share, "reviewers_per_item": self.reviewers_per_item,
             "poll_seconds": self.poll_seconds, "deadline": self.deadline, "config_path": self.config_path},
        )  # fmt: skip

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = datetime.fromisoformat(self.deadline)
        while True:
            state = await asyncio.to_thread(_review_state, self.config_path, self.cycle_id, self.reviewers_per_item)
            if state["share"] >= self.required_share:
                yield TriggerEvent({"status": "complete", **state})
                return
            if datetime.now(UTC) >= deadline:
                yield TriggerEvent({"status": "deadline", **state})
                return
            await asyncio.sleep(self.poll_seconds)


class WaitForReviewSensor(BaseSensorOperator):
    """Wait (deferred) until humans have reviewed the cycle's sample."""

    template_fields: Sequence[str] = ("config_path",)
    ui_color = "#fdf3e1"
    operator_extra_links = (ReviewLink(),)

    def __init__(self, *, config_path: str | None = None, config_overrides: dict[str, Any] | None = None,
                 warehouse_conn_id: str = "flywheel_warehouse", **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.config_path = config_path
        self.config_overrides = dict(config_overrides or {})
        self.warehouse_conn_id = warehouse_conn_id

    def execute(self, context: Context) -> Any:
        from flywheel_airflow.operators import cycle_from_context

        cycle, wh = cycle_from_context(context, self.config_path, self.config_overrides, self.warehouse_conn_id)
        cfg = cycle.config.review
        if not cfg.enabled:
            return {"skipped": "review.enabled is false"}
        state = _review_state(self.config_path, cycle.cycle_id, cfg.reviewers_per_item)
        if state["share"] >= cfg.required_share:
            log.info("%s: review batch complete: %s", cycle.cycle_id, state)
            return state
        # The "Review" button on the task's page while the run waits (see flywheel_airflow.links).
        remember_links(self, links_for(self, cycle.config, cycle.cycle_id), context)
        log.info("%s: review the items at %s", cycle.cycle_id, review_url(cycle.config))
        created = wh.query("SELECT MIN(created_at) AS t FROM review_items WHERE cycle_id = $c", {"c": cycle.cycle_id}).to_pylist()
        start = created[0]["t"] or datetime.now(UTC)
        deadline = start + timedelta(hours=cfg.deadline_hours)
        log.info("%s: %d/%d items reviewed; deferring until %.0f%% are, or %s", cycle.cycle_id, state["complete"],
                 state["items"], 100 * cfg.required_share, deadline.isoformat())  # fmt: skip
        self.defer(
            trigger=ReviewBatchTrigger(cycle_id=cycle.cycle_id, required_share=cfg.required_share,
                                       reviewers_per_item=cfg.reviewers_per_item, poll_seconds=cfg.poll_seconds,
                                       deadline=deadline.isoformat(), config_path=self.config_path),
            method_name="execute_complete",
        )  # fmt: skip

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        from flywheel_airflow.operators import cycle_from_context

        cycle, _ = cycle_from_context(context, self.config_path, self.config_overrides, self.warehouse_conn_id)
        if event["status"] == "complete":
            log.info("%s: review batch complete: %s", cycle.cycle_id, event)
            return event
        message = (f"{cycle.cycle_id}: review deadline passed with {event['complete']}/{event['items']} items reviewed "
                   f"(< {cycle.config.review.required_share:.0%})")  # fmt: skip
        if cycle.config.review.on_deadline == "fail":
            raise AirflowFailException(message)
        log.warning("%s; review.on_deadline=proceed: the cycle goes on with the reviews it has", message)
        return event
