"""Assets the flywheel DAGs produce, so that other DAGs can be scheduled on them.

`MODEL_DECISION` is updated every time a cycle decides on a challenger (promoted, kept, or a
dry run): a DAG that watches models in production (the A/B monitor) runs on it instead of on
a clock.

`CHAMPION` is updated only when the champion pointer moves outside a cycle: `ab_monitor`
promoting a challenger after a significant A/B win, or rolling a champion back. Serving
deployments follow it to load the new champion.
"""

from __future__ import annotations

from airflow.sdk import Asset

MODEL_DECISION = Asset("flywheel://registry/model-decision", group="flywheel")
CHAMPION = Asset("flywheel://registry/champion", group="flywheel")
