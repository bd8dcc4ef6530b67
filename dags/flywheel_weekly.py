"""
### Weekly flywheel cycle

Turns last-but-two week's production traffic into a challenger model, and promotes it only if
it beats the champion on the golden set.

**Window.** A run whose data interval ends at `T` reads the logs of `[T - lag - 7 days, T - lag)`
(`extract.lag_days` in the config, 14 as shipped; the `lag_days` param for one run): users'
corrections and regenerations settle before their rows are used. The window comes from the run,
never from the wall clock, so a backfill of any past Monday reads exactly that week.

**Tasks.** `extract_window` (the user-action and quality-score rules run inside the warehouse
query: rejected rows' text stays there) → `gate_raw_window` (Great Expectations: schema, nulls, enums,
ranges, unique ids, volume against recent cycles) → `validate_and_quarantine` (malformed rows go
to the `quarantine` table with their reason) → `filter_candidates` (user action, length, quality
score, PII, toxicity, grounding, golden-set decontamination, dedup, top-share selection per task
type; a decision per row and rule; with `scale.filter_shards` above 1, a plan, one shard per
mapped task on any worker and a merge) → `sample_for_review` (8% of the candidates: a prioritised,
stratified slice of the kept ones and a uniform random slice for calibration) →
`wait_for_review` (deferred to the triggerer until 90% are reviewed or the deadline passes; no
worker slot held) → `calibrate_filters` (thresholds refitted to the reviews; adopted for later
cycles when agreement improves) → `build_dataset` (reviewer-rejected rows left out, approved
ones gold, with the reviewer's edit; chat format; corrections become the
target; skipped with a reason when too few examples survive) → `gate_training_set` (no PII, no
golden overlap, class balance, lengths) → `train_lora` (continues from the champion's adapter)
→ `evaluate_golden_set` → `promote_if_better` (updates the `flywheel://registry/model-decision`
asset) → `record_cycle_metrics` (velocity, phase, stagnation alert) → `write_report` (Markdown
and PNG plots under `reports/<cycle_id>/` in the artefact store).

**Phases.** Each cycle is tagged cold start, growth or maturity from the champion's golden
accuracy and the examples collected so far; the next cycle runs under that phase's capture
policy (`phases.policy` in the config).

**Gates fail closed.** A failed gate fails its task with the failed expectations and a link to
its Data Docs page (`data_docs/` in the artefact store); nothing downstream runs, the champion
stays, and the failure is recorded in the `alerts` table by the failure notifier.

**Idempotent.** Every task rewrites its own outputs for the logical date: clear any task, or
rerun or backfill the run, and nothing is duplicated.

**Params** override the YAML config (`include/config/flywheel.yaml`) for one run; leave a param
empty to keep the configured value. `window_start` reads a window of your choosing instead of
the lagged one, `dry_run` runs everything but never moves the champion, `skip_training` stops
after the training-set gate.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag
from airflow.timetables.trigger import CronTriggerTimetable

from flywheel_airflow.cycle_dag import cycle_chain, cycle_params, default_args


@dag(
    dag_id="flywheel_weekly",
    schedule=CronTriggerTimetable("0 0 * * 1", timezone="UTC"),  # Mondays 00:00 UTC
    start_date=pendulum.datetime(2026, 1, 5, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # each cycle starts from the champion the previous one left
    tags=["flywheel", "weekly", "training"],
    default_args=default_args(),
    doc_md=__doc__,
    params=cycle_params(),
)
def flywheel_weekly():
    cycle_chain()


flywheel_weekly()
