"""
### Monthly flywheel cycle: consolidation

Once a month, the same stages as the weekly cycle over a **4-week window** with the same lag
(a run at `T` reads `[T - lag - 28 days, T - lag)`), retrained on the month's traffic **plus
every gold example accepted so far** (imported manual labels, approved reviews), which train
with `training.gold_weight`.

What differs from the weekly cycle (`config_overrides` below):

- `extract.window_days: 28`, `extract.include_gold: true`;
- `filters.dedup_against_history: false`: the weekly cycles already trained on parts of this
  month one week at a time; the consolidation sees the month whole (dedup within the month
  still applies);
- `write_report` adds the broader evaluation: champion and challenger on every task type of the
  golden set with 95% intervals, next to the velocity plots over every cycle so far.

New data vs old data: `train_twin_without_newest_window` trains the challenger's twin on the
same dataset less the month's newest week (`evaluation.newest_window_days`), and
`promote_if_better` compares the two on the golden set (paired bootstrap interval). The report
says whether the newest week helped. A week that left the model worse than its twin by more
than `evaluation.max_new_data_regression` is flagged: the twin goes to the offline gate in the
challenger's place, and later cycles keep that week's rows out (a `flagged_window` decision).

`calibrate_filters` refits the threshold filters (quality score, toxicity, grounding) to the
human verdicts on the random review slices of the month (`calibration.lookback_days: 28`); an
adopted fit is the config version later cycles run under. The monthly window itself is not
sampled for review again (`review.enabled: false`): its weeks were.

The monthly challenger must beat the champion like any other; the decision updates the
`flywheel://registry/model-decision` asset. Params are the weekly DAG's (see its docs).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag
from airflow.timetables.trigger import CronTriggerTimetable

from flywheel.runconfig import DAG_OVERRIDES
from flywheel_airflow.cycle_dag import cycle_chain, cycle_params, default_args

MONTHLY_OVERRIDES = DAG_OVERRIDES["flywheel_monthly"]  # see flywheel.runconfig


@dag(
    dag_id="flywheel_monthly",
    schedule=CronTriggerTimetable("0 6 1 * *", timezone="UTC"),  # the 1st of each month, 06:00 UTC
    start_date=pendulum.datetime(2026, 2, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["flywheel", "monthly", "training"],
    default_args=default_args(MONTHLY_OVERRIDES),
    doc_md=__doc__,
    params=cycle_params(MONTHLY_OVERRIDES),
)
def flywheel_monthly():
    cycle_chain()


flywheel_monthly()
