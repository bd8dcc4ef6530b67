"""
### A/B monitor

Watches models on live traffic and is the only DAG that moves the champion pointer after a
cycle has started an experiment.

**Schedule.** Hourly, and whenever a cycle decides on a challenger (the
`flywheel://registry/model-decision` asset), so a new experiment is seen at once.

**Experiments.** A challenger that passed the offline gate serves a share of users chosen by a
hash of their id (`experiment.ramp`, 5% → 20% → 50%). Each run measures both arms from the
production logs by `model_version` (accept, copy, correct, regenerate rates; toxic and empty
answers), then: a guardrail breach (acceptance down by more than `max_acceptance_drop` and
significantly, toxic or error share too high) stops the experiment and alerts; otherwise the
ramp moves up once a step has `min_rows_per_step` challenger rows; at the last step, once both
arms hold the sample size from the power calculation, a one-sided two-proportion z-test decides:
a significant win **promotes**, a significant loss rolls back, no difference after
`max_sample_factor` times the sample stops the test and keeps the champion.

**Live champion.** For `watch_days` after a promotion, the champion's live metrics are compared
with its predecessor's last days; a breach **rolls back** to the predecessor at once and alerts
(e-mail/Slack where configured, always the `alerts` table).

**Assets.** `publish_champion` updates `flywheel://registry/champion` only when the pointer
moved (promotion or rollback); it is skipped otherwise.

**Idempotent.** Decisions are keyed by experiment and date, and read only what happened before
the run's date: rerunning a date writes the same decision.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from flywheel_airflow.ab_monitor import MonitorExperimentsOperator, PublishChampionOperator
from flywheel_airflow.assets import CHAMPION, MODEL_DECISION
from flywheel_airflow.notifiers import FlywheelAlertNotifier


@dag(
    dag_id="ab_monitor",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 * * * *", timezone="UTC"), assets=MODEL_DECISION),
    start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # decisions build on the previous run's
    tags=["flywheel", "ab-test", "monitoring"],
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": timedelta(minutes=1),
                  "on_failure_callback": [FlywheelAlertNotifier()]},  # fmt: skip
    doc_md=__doc__,
)
def ab_monitor():
    monitor = MonitorExperimentsOperator(task_id="monitor_experiments", execution_timeout=timedelta(minutes=30))
    monitor >> PublishChampionOperator(task_id="publish_champion", monitor_task_id=monitor.task_id, outlets=[CHAMPION])


ab_monitor()
