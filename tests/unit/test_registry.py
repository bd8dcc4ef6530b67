"""Model registry: bootstrap champion, the promotion rule, and the champion as of a date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.errors import RegistryError
from flywheel.model import registry
from flywheel.model.registry import (
    BOOTSTRAP_CYCLE,
    ModelVersion,
    base_version_name,
    champion_as_of,
    current_champion,
    decide_promotion,
    ensure_bootstrap_champion,
    get_model,
    record_decision,
    register_model,
)

D1 = datetime(2026, 1, 5, tzinfo=UTC)
WEEK = timedelta(days=7)
US = timedelta(microseconds=1)


def test_base_version_name():
    assert base_version_name("/models/tiny-llama/") == "base:tiny-llama"
    assert base_version_name("org/Model-1B") == "base:Model-1B"


def test_bootstrap_registers_base_as_champion(wh):
    version = ensure_bootstrap_champion(wh, "/models/tiny-llama")
    assert version == "base:tiny-llama"
    mv = get_model(wh, version)
    assert (mv.base_model, mv.adapter_path, mv.cycle_id) == (
        "/models/tiny-llama",
        None,
        BOOTSTRAP_CYCLE,
    )
    assert current_champion(wh) == version
    assert champion_as_of(wh, D1) == version
    (promo,) = wh.select("promotions").to_pylist()
    assert (
        promo["promoted"] is True
        and promo["champion_before"] is None
        and promo["champion_after"] == version
    )


def test_bootstrap_is_idempotent_and_keeps_a_later_champion(wh):
    base = ensure_bootstrap_champion(wh, "/models/tiny-llama")
    assert ensure_bootstrap_champion(wh, "/models/tiny-llama") == base
    assert wh.count("promotions") == 1 and wh.count("models") == 1
    record_decision(
        wh,
        cycle_id="c1",
        logical_date=D1,
        champion_before=base,
        challenger="v1",
        promoted=True,
        reason="r",
    )
    # a champion exists: no second bootstrap, the current champion is returned
    assert ensure_bootstrap_champion(wh, "/models/other") == "v1"
    assert wh.count("promotions") == 2


def test_no_champion_raises(wh):
    with pytest.raises(RegistryError, match="bootstrap"):
        champion_as_of(wh, D1)


def test_unknown_model_raises(wh):
    with pytest.raises(RegistryError, match="unknown model version"):
        get_model(wh, "nope")


def test_register_model_round_trip_and_replace(wh):
    mv = ModelVersion(
        "v1",
        "base",
        "/a/v1",
        parent_version="base:x",
        cycle_id="c1",
        dataset_hash="h",
        window_start=D1,
        window_end=D1 + WEEK,
        train_loss=0.5,
    )
    register_model(wh, mv)
    got = get_model(wh, "v1")
    assert (got.adapter_path, got.parent_version, got.window_start, got.train_loss) == (
        "/a/v1",
        "base:x",
        D1,
        0.5,
    )
    assert got.created_at is not None
    register_model(wh, ModelVersion("v1", "base", "/a/v1b"))
    assert wh.count("models") == 1 and get_model(wh, "v1").adapter_path == "/a/v1b"


@pytest.mark.parametrize(
    ("champ", "chall", "margin", "promoted"),
    [
        (0.5, 0.5, 0.0, False),  # equal is not better
        (0.5, 0.51, 0.0, True),
        (0.5, 0.4, 0.0, False),
        (0.5, 0.55, 0.1, False),  # better, but not by the margin
        (0.5, 0.65, 0.1, True),
        (0.0, 1.0, 0.0, True),
    ],
)
def test_decide_promotion(champ, chall, margin, promoted):
    d = decide_promotion(champ, chall, min_improvement=margin)
    assert d.promoted is promoted
    assert f"{chall:.4f}" in d.reason and f"{champ:.4f}" in d.reason


@given(
    n=st.integers(1, 500),
    data=st.data(),
)
def test_property_promotion_needs_strictly_more_than_margin(n, data):
    # accuracies as the evaluator computes them: n_correct / n_items
    a = data.draw(st.integers(0, n))
    b = data.draw(st.integers(0, n))
    k = data.draw(st.integers(0, n))
    d = decide_promotion(a / n, b / n, min_improvement=k / n if k else 0.0)
    # (the exactly-equal case has its own test below)
    if b - a > k:
        assert d.promoted
    elif b - a < k or b == a:
        assert not d.promoted


def test_improvement_exactly_equal_to_margin_is_not_promoted():
    assert not decide_promotion(168 / 240, 192 / 240, min_improvement=0.1).promoted


def _history(wh):
    base = ensure_bootstrap_champion(wh, "/models/tiny-llama")
    record_decision(
        wh,
        cycle_id="c1",
        logical_date=D1,
        champion_before=base,
        challenger="v1",
        promoted=True,
        reason="better",
    )
    record_decision(
        wh,
        cycle_id="c2",
        logical_date=D1 + WEEK,
        champion_before="v1",
        challenger="v2",
        promoted=False,
        reason="worse",
    )
    record_decision(
        wh,
        cycle_id="c3",
        logical_date=D1 + 2 * WEEK,
        champion_before="v1",
        challenger="v3",
        promoted=True,
        reason="better",
    )
    return base


def test_champion_as_of_is_strictly_before(wh):
    base = _history(wh)
    assert champion_as_of(wh, D1) == base  # its own decision does not count
    assert champion_as_of(wh, D1 + US) == "v1"
    assert champion_as_of(wh, D1 + WEEK) == "v1"
    assert champion_as_of(wh, D1 + WEEK + US) == "v1"  # c2 kept v1
    assert champion_as_of(wh, D1 + 2 * WEEK) == "v1"
    assert champion_as_of(wh, D1 + 2 * WEEK + US) == "v3"
    assert current_champion(wh) == "v3"


def test_champion_as_of_accepts_other_zones(wh):
    from zoneinfo import ZoneInfo

    _history(wh)
    ny = ZoneInfo("America/New_York")
    assert champion_as_of(wh, (D1 + US).astimezone(ny)) == "v1"
    assert champion_as_of(wh, D1.astimezone(ny)) == "base:tiny-llama"


def test_record_decision_row(wh):
    row = record_decision(
        wh,
        cycle_id="c",
        logical_date=D1,
        champion_before="a",
        challenger="b",
        promoted=False,
        reason="meh",
    )
    assert row["champion_after"] == "a"
    (stored,) = wh.select("promotions").to_pylist()
    assert (
        stored["cycle_id"],
        stored["logical_date"],
        stored["champion_after"],
        stored["reason"],
    ) == ("c", D1, "a", "meh")


def test_rerecording_a_cycle_replaces_it(wh):
    base = _history(wh)
    record_decision(
        wh,
        cycle_id="c1",
        logical_date=D1,
        champion_before=base,
        challenger="v1",
        promoted=False,
        reason="rerun",
    )
    assert wh.count("promotions", {"cycle_id": "c1"}) == 1
    assert wh.count("promotions") == 4
    assert champion_as_of(wh, D1 + US) == base
    assert wh.select("promotions", {"cycle_id": "c1"}).to_pylist()[0]["reason"] == "rerun"


def test_module_exposes_registry_error():
    # train_challenger raises registry.RegistryError; it must be the project's error type
    assert registry.RegistryError is RegistryError


# --- statuses and lineage ------------------------------------------------------------------


def _chain_of_versions(wh):
    """base -> v1 (promoted) -> v2 (not promoted) -> v3 (promoted, parent v1), with data."""
    from flywheel.tables import rows_to_table

    base = ensure_bootstrap_champion(wh, "/models/tiny-llama")
    for i, (version, parent) in enumerate((("v1", base), ("v2", "v1"), ("v3", "v1")), start=1):
        register_model(wh, ModelVersion(version=version, base_model="/models/tiny-llama", adapter_path=f"/a/{version}",
                                        parent_version=parent, cycle_id=f"c{i}", dataset_id=f"c{i}", dataset_hash=f"h{i}",
                                        window_start=D1 + (i - 1) * WEEK, window_end=D1 + i * WEEK))  # fmt: skip
        wh.merge("training_fingerprints", rows_to_table("training_fingerprints", [
            {"cycle_id": f"c{i}", "logical_date": D1 + i * WEEK, "request_id": f"r{i}-{k}", "exact_key": k,
             "signature": b"\0", "fingerprint_spec": "s"} for k in range(i + 1)
        ]))  # fmt: skip
    record_decision(wh, cycle_id="c1", logical_date=D1 + WEEK, champion_before=base, challenger="v1", promoted=True, reason="better")
    record_decision(wh, cycle_id="c2", logical_date=D1 + 2 * WEEK, champion_before="v1", challenger="v2", promoted=False, reason="worse")
    record_decision(wh, cycle_id="c3", logical_date=D1 + 3 * WEEK, champion_before="v1", challenger="v3", promoted=True, reason="better")
    return base


def test_statuses_follow_the_promotion_history(wh):
    base = _chain_of_versions(wh)
    assert registry.model_statuses(wh) == {base: "retired", "v1": "retired", "v2": "candidate", "v3": "champion"}
    record_decision(wh, cycle_id="rb", logical_date=D1 + 4 * WEEK, champion_before="v3", challenger="v1", promoted=True,
                    reason="rollback: acceptance dropped")  # fmt: skip
    statuses = registry.model_statuses(wh)
    assert statuses["v3"] == "rolled_back" and statuses["v1"] == "champion"
    assert set(statuses.values()) <= set(registry.STATUSES)


def test_which_data_trained_the_champion(wh):
    _chain_of_versions(wh)
    data = registry.training_data(wh, current_champion(wh))
    # v3 continued from v1's adapter, which continued from the base: both datasets trained it
    assert [d.version for d in data] == ["v3", "v1"]
    assert [d.dataset_hash for d in data] == ["h3", "h1"]
    assert data[0].request_ids == ["r3-0", "r3-1", "r3-2", "r3-3"] and data[1].n_examples == 2
    assert data[0].window_start == D1 + 2 * WEEK
    assert registry.training_data(wh, "v2")[1].version == "v1"


def test_old_tables_are_migrated(tmp_path):
    """A warehouse made before a column existed gains it, and writes land by column name."""
    from flywheel.warehouse.duckdb import DuckDBWarehouse

    wh = DuckDBWarehouse(tmp_path / "old.duckdb", lock_timeout_s=5)
    wh.execute("CREATE TABLE models (version VARCHAR, base_model VARCHAR, adapter_path VARCHAR, parent_version VARCHAR, "
               "cycle_id VARCHAR, dataset_id VARCHAR, dataset_hash VARCHAR, window_start TIMESTAMPTZ, "
               "window_end TIMESTAMPTZ, train_loss DOUBLE, created_at TIMESTAMPTZ)")  # fmt: skip
    wh.ensure_schema()
    register_model(wh, ModelVersion(version="v", base_model="b", adapter_path=None, config_json='{"r": 8}'))
    assert get_model(wh, "v").config_json == '{"r": 8}'
