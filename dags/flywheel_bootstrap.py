"""
### Cold start: model v1

Run by hand once, before the weekly cycles (or again after a reset). It builds model v1 from
what a product has before it has traffic:

- **synthetic examples** from the product's task templates (`bootstrap.synthetic_per_task_type`
  per task type, with checked answers);
- **manual labels** imported from a CSV or JSONL file or folder (`bootstrap.labels_path`, or the
  `labels_path` param; columns `prompt, response, task_type`, optional `context, labeler,
  quality_score`). They are validated like production logs: a malformed row, or a line that is
  not even a row, is quarantined with its reason. Those that pass every filter become the first
  **gold examples**;
- **beta-user traffic**: the production logs of the 14 days before the run (`window_days`
  param), with no lag.

Then the weekly cycle's stages: gates, validation, filters (PII, toxicity, golden-set
decontamination, dedup), dataset, training from the base model, evaluation on the golden set
(whose first version this run registers by content hash), promotion, record and report. The
cycle is tagged with its phase (cold start until the champion is good enough on enough
examples), and while in cold start the weekly cycles run under the cold-start capture policy
(keep more, corrections and rare task types first: `phases.policy.cold_start`).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag

from flywheel.runconfig import DAG_OVERRIDES
from flywheel_airflow.cycle_dag import cycle_chain, cycle_params, default_args
from flywheel_airflow.operators import ExtractBootstrapOperator

BOOTSTRAP_OVERRIDES = DAG_OVERRIDES["flywheel_bootstrap"]  # see flywheel.runconfig


@dag(
    dag_id="flywheel_bootstrap",
    schedule=None,  # by hand: a cold start is an operator's decision
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["flywheel", "bootstrap", "training"],
    default_args=default_args(BOOTSTRAP_OVERRIDES),
    doc_md=__doc__,
    params=cycle_params(BOOTSTRAP_OVERRIDES, bootstrap=True),  # their lag 0 and 14-day window
)
def flywheel_bootstrap():
    cycle_chain(ExtractBootstrapOperator(task_id="extract_bootstrap"))


flywheel_bootstrap()
