"""Backfilling three past weeks twice leaves the warehouse exactly as the first pass left it.

Each past Monday runs through real Airflow (`airflow dags test`, in logical-date order, as a
backfill with ``max_active_runs=1`` runs them) with the ``skip_training`` param: three weeks
are enough for each later week to meet the earlier weeks' training sets (history dedup), and
each run costs about a minute of Airflow and the light stages. Training's own rerun behaviour is covered in test_weekly_cycle (and the
scheduler-driven backfill through the REST API by the deployment test on Postgres). Every row
of every per-cycle table is compared, bar the wall-clock stamps, and so are the datasets' hashes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers.flywheel_env import dags_test, flywheel_env

# In the slow suite (`make test-slow`, run by CI after `make test`): rerunning a logical date is
# proven idempotent by test_weekly_cycle (through Airflow) and test_cycle_stages (every stage),
# and the scheduler-driven backfill by the deployment test on Postgres; this test adds three
# weeks in order and costs about six minutes.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "flywheel_weekly"
MONDAYS = [datetime(2026, 3, 2, tzinfo=UTC) + timedelta(weeks=k) for k in range(3)]
# Stamps of when a row was written, and the Data Docs page of each gate run (GX names it by the
# run's time): the only values a rerun may change.
WALL_CLOCK = {"decided_at", "quarantined_at", "recorded_at", "finished_at", "created_at", "evaluated_at", "raised_at", "docs_url"}
CYCLE_TABLES = ("quarantine", "decisions", "datasets", "training_fingerprints", "gate_results", "cycles", "metrics")


def _answers(pairs):
    """A stand-in model that answers everything with the same wrong text: users correct it,
    which is the traffic a backfill has to treat the same way twice."""
    return ["I am not sure." for _ in pairs]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from flywheel.model import registry
    from flywheel.sim.traffic import simulate_traffic

    def edit(cfg):
        cfg["simulate"]["requests_per_week"] = 200
        cfg["evaluation"]["golden_set_size"] = 60
        cfg["review"]["enabled"] = False  # the review stage has its own test (tests/browser/test_operator_path.py)

    with flywheel_env(tmp_path_factory.mktemp("backfill"), edit) as env:
        wh = env["wh"]
        registry.ensure_bootstrap_champion(wh, "tiny-llama-stand-in")
        first_window = MONDAYS[0] - timedelta(days=21)
        for k in range(len(MONDAYS)):
            wh.merge("production_logs", simulate_traffic(first_window + timedelta(weeks=k), _answers, model_version="stand-in",
                                                         n_requests=200, seed=11, malformed_rate=0.02, pii_rate=0.05))  # fmt: skip
        yield env


def _backfill(env) -> None:
    for monday in MONDAYS:
        dags_test(env, DAG_ID, monday, {"skip_training": True})


def _snapshot(wh) -> dict[str, list[tuple]]:
    out = {}
    for table in CYCLE_TABLES:
        rows = wh.select(table).to_pylist()
        out[table] = sorted(tuple(sorted((k, repr(v)) for k, v in r.items() if k not in WALL_CLOCK)) for r in rows)
    return out


def test_a_backfill_run_twice_leaves_the_same_rows_and_dataset_hashes(env):
    wh = env["wh"]
    _backfill(env)
    first = _snapshot(wh)
    hashes = {r["cycle_id"]: r["content_hash"] for r in wh.select("datasets").to_pylist()}
    cycles = {r["cycle_id"]: r for r in wh.select("cycles").to_pylist()}
    assert sorted(cycles) == [f"{DAG_ID}-{m:%Y%m%dT%H%M}" for m in MONDAYS]
    assert len(hashes) == len(MONDAYS), "every week built a dataset"
    assert all(c["kept"] > 0 and c["quarantined"] > 0 and c["challenger"] is None for c in cycles.values())
    # Later weeks saw the earlier weeks' training sets: history dedup ran across the backfill.
    dedup = wh.query("SELECT COUNT(*) AS n FROM decisions WHERE rule = 'dedup' AND NOT kept AND reason LIKE '%trained in%'").to_pylist()
    assert dedup[0]["n"] > 0

    _backfill(env)
    second = _snapshot(wh)
    for table in CYCLE_TABLES:
        assert second[table] == first[table], f"{table} changed on the second backfill"
    assert {r["cycle_id"]: r["content_hash"] for r in wh.select("datasets").to_pylist()} == hashes
