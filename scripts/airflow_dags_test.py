"""`airflow dags test DAG_ID LOGICAL_DATE [-c CONF]`, with one upstream fix backported.

Airflow 3.1's ``dag.test()`` builds a new in-process Execution API for every task it runs: a
FastAPI app whose Cadwyn versioned routers are generated anew, and an event-loop thread. Sampled
with py-spy during the integration tests, that was about half of a ``dags test`` run's time on
these 2 cores, a few seconds per task. Airflow caches the app for the length of a ``dag.test()``
call since apache/airflow#65235 (merged after the 3.1 release this project pins); this wrapper
applies the same cache (`functools.lru_cache` on ``in_process_api_server``), then hands over to
Airflow's own CLI unchanged. The demo (`flywheel.sim.demo`) and the integration tests run their
cycles through it. Nothing else is touched: production runs tasks through the scheduler and its
executors, and ``airflow dags test`` itself still works without the wrapper, only slower.

    python scripts/airflow_dags_test.py DAG_ID LOGICAL_DATE [-c CONF]
"""

from __future__ import annotations

import functools
import sys

from airflow.__main__ import main as airflow_main
from airflow.sdk.execution_time import supervisor

if not hasattr(supervisor.in_process_api_server, "cache_info"):  # already cached upstream: leave it
    supervisor.in_process_api_server = functools.lru_cache(maxsize=1)(supervisor.in_process_api_server)


def main(argv: list[str]) -> int:
    sys.argv = ["airflow", "dags", "test", *argv]
    airflow_main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
