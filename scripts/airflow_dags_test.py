"""`airflow dags test DAG_ID LOGICAL_DATE [-c CONF]`, with two upstream fixes backported.

Airflow 3.1's ``dag.test()`` builds a new in-process Execution API for every task it runs: a
FastAPI app whose Cadwyn versioned routers are generated anew, and an event-loop thread. Sampled
with py-spy during the integration tests, that was about half of a ``dags test`` run's time on
these 2 cores, a few seconds per task. Airflow caches the app for the length of a ``dag.test()``
call since apache/airflow#65235 (merged after the 3.1 release this project pins); this wrapper
applies the same cache (`functools.lru_cache` on ``in_process_api_server``), then hands over to
Airflow's own CLI unchanged.

``dag.test()`` also records the run as started at its logical date (apache/airflow#66127, open;
fix proposed in apache/airflow#68837), so a demo cycle for a week in the past reads as running
for weeks in the grid ("18d13:33:20"). The wrapper has the run start when it starts
(``get_or_create_dagrun`` given the wall clock's time as ``start_date``); the logical date, the
data interval and the run id are untouched. The demo (`flywheel.sim.demo`) and the integration tests run their
cycles through it. Nothing else is touched: production runs tasks through the scheduler and its
executors, and ``airflow dags test`` itself still works without the wrapper, only slower.

    python scripts/airflow_dags_test.py DAG_ID LOGICAL_DATE [-c CONF]
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from airflow.__main__ import main as airflow_main
from airflow.models import dagrun
from airflow.sdk.execution_time import supervisor
from airflow.utils import timezone

if not hasattr(supervisor.in_process_api_server, "cache_info"):  # already cached upstream: leave it
    supervisor.in_process_api_server = functools.lru_cache(maxsize=1)(supervisor.in_process_api_server)

_create_dagrun = dagrun.get_or_create_dagrun


@functools.wraps(_create_dagrun)
def _started_now(*args: Any, **kwargs: Any) -> Any:
    """The run starts now, not at its logical date (``dag.test()`` imports this at call time)."""
    kwargs["start_date"] = timezone.utcnow()
    return _create_dagrun(*args, **kwargs)


dagrun.get_or_create_dagrun = _started_now


def main(argv: list[str]) -> int:
    sys.argv = ["airflow", "dags", "test", *argv]
    airflow_main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
