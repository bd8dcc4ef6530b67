"""Operator extra links: buttons on a task's page in the Airflow UI that open the dashboard's
page for the task's cycle (its gate's Data Docs, its quarantine, the Review page).

A task works its links out while it runs (`remember_links`); Airflow stores them in XCom when
the task ends, failed or not, and the UI reads them from there. A task that defers (the review
sensor) pushes them at once, so the link is there while the run waits."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink, Context

from flywheel.config import FlywheelConfig
from flywheel.ops.links import gate_docs_url, quarantine_url, review_url


class _CycleLink(BaseOperatorLink):
    """The URL the task stored under this link's name while it ran ('' before it ran)."""

    name = "Flywheel"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        return (getattr(operator, "flywheel_links", None) or {}).get(self.name, "")


class DataDocsLink(_CycleLink):
    name = "Data Docs"


class QuarantineLink(_CycleLink):
    name = "Quarantine"


class ReviewLink(_CycleLink):
    name = "Review"


def links_for(operator: BaseOperator, config: FlywheelConfig, cycle_id: str, gate: str | None = None) -> dict[str, str]:
    """The URLs of the operator's extra links for this cycle."""
    urls = {
        DataDocsLink.name: gate_docs_url(config, cycle_id, gate) if gate else "",
        QuarantineLink.name: quarantine_url(config, cycle_id),
        ReviewLink.name: review_url(config),
    }
    return {link.name: urls[link.name] for link in operator.operator_extra_links if link.name in urls}


def remember_links(operator: BaseOperator, links: dict[str, str], context: Context | None = None) -> None:
    """Keep the links for Airflow to store when the task ends; with ``context``, store them now."""
    operator.flywheel_links = links  # type: ignore[attr-defined]
    if context is not None:
        for link in operator.operator_extra_links:
            if links.get(link.name):
                context["ti"].xcom_push(key=link.xcom_key, value=links[link.name])
