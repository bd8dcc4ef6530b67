"""Assets the flywheel DAGs produce, so that other DAGs can be scheduled on them.

`MODEL_DECISION` is updated every time a cycle decides on a challenger (promoted, kept, or a
dry run): a DAG that watches models in production (the A/B monitor) runs on it instead of on
a clock.
"""

from __future__ import annotations

from airflow.sdk import Asset

MODEL_DECISION = Asset("flywheel://registry/model-decision", group="flywheel")
