"""The learning curve: golden-set accuracy per cycle on the phase bands, as a PNG, and the rows it
reads from the warehouse (A/B promotions known by the report's date only)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.config import PhasesConfig
from flywheel.model import registry
from flywheel.ops.curve import (
    CURVE_FILE,
    champion_after,
    curve_rows,
    plot_learning_curve,
    write_learning_curve,
)
from flywheel.tables import rows_to_table

PNG = b"\x89PNG\r\n\x1a\n"
SIZE = (450, 900)  # height, width: FIGSIZE (10 x 5 inches) at 90 dpi
T0 = datetime(2026, 3, 2, tzinfo=UTC)


def cycle_row(i: int, dag: str, champ: float | None, chall: float | None, promoted: bool, **extra) -> dict:
    return {"cycle_id": f"{dag}-{i}", "dag_id": dag, "logical_date": T0 + timedelta(weeks=i),
            "champion_accuracy": champ, "challenger_accuracy": chall, "promoted": promoted} | extra  # fmt: skip


def read_png(path) -> tuple[bytes, tuple[int, ...]]:
    import matplotlib.image

    return path.read_bytes()[:8], matplotlib.image.imread(path).shape


def test_curve_spanning_the_three_phases_is_a_png(tmp_path):
    rows = [
        cycle_row(0, "flywheel_bootstrap", 0.30, 0.55, True),
        cycle_row(1, "flywheel_weekly", 0.55, 0.50, False),
        cycle_row(2, "flywheel_weekly", 0.55, 0.72, True),
        cycle_row(3, "flywheel_weekly", 0.72, 0.80, False, ab_promoted_at=T0 + timedelta(weeks=3, days=4)),
        cycle_row(4, "flywheel_monthly", 0.80, 0.93, True),
    ]
    out = tmp_path / "nested" / CURVE_FILE  # its folder is made
    assert plot_learning_curve(list(reversed(rows)), PhasesConfig(), out) == out
    signature, shape = read_png(out)
    assert signature == PNG and shape[:2] == SIZE


@pytest.mark.parametrize(
    "rows",
    [
        [cycle_row(0, "flywheel_bootstrap", 0.3, 0.62, True)],
        [cycle_row(0, "flywheel_bootstrap", None, None, True), cycle_row(1, "flywheel_weekly", 0.4, None, False),
         cycle_row(2, "flywheel_weekly", None, 0.5, False), cycle_row(3, "flywheel_weekly", None, None, False)],
        [],
    ],
    ids=["single-cycle", "none-accuracies", "no-cycle"],
)  # fmt: skip
def test_curve_of_one_cycle_missing_accuracies_or_none_is_still_a_png(tmp_path, rows):
    out = plot_learning_curve(rows, PhasesConfig(growth_min_accuracy=0.5, maturity_min_accuracy=0.5), tmp_path / "c.png")
    signature, shape = read_png(out)
    assert signature == PNG and shape[:2] == SIZE


def test_curve_draws_into_a_file_object():
    buf = io.BytesIO()
    assert plot_learning_curve([cycle_row(0, "flywheel_weekly", 0.7, 0.9, True)], PhasesConfig(), buf) is buf
    assert buf.getvalue().startswith(PNG)


def test_the_champion_after_a_cycle_is_its_challenger_if_promoted():
    assert champion_after(cycle_row(0, "w", 0.5, 0.7, True)) == 0.7
    assert champion_after(cycle_row(0, "w", 0.5, 0.7, False)) == 0.5
    assert champion_after(cycle_row(0, "w", 0.5, None, True)) is None


def test_curve_rows_mark_a_b_promotions_known_by_the_date(wh, tmp_path):
    base = {"window_start": T0, "window_end": T0, "rows_in_window": 10, "quarantined": 0, "kept": 5, "rejected": 5,
            "pass_rate": 0.5, "champion_before": "v0", "champion_after": "v0", "finished_at": T0}  # fmt: skip
    wh.merge("cycles", rows_to_table("cycles", [
        base | cycle_row(1, "flywheel_weekly", 0.6, 0.7, False, challenger="flywheel_weekly-1"),
        base | cycle_row(0, "flywheel_bootstrap", 0.3, 0.6, True, challenger="flywheel_bootstrap-0"),
        base | cycle_row(2, "flywheel_weekly", 0.7, 0.72, False, challenger="flywheel_weekly-2"),
    ]))  # fmt: skip
    wh.merge("experiments", rows_to_table("experiments", [
        {"experiment_id": "ab-1", "cycle_id": "flywheel_weekly-1", "champion": "v0", "challenger": "flywheel_weekly-1",
         "traffic_share": 0.5, "status": "promoted", "started_at": T0, "updated_at": T0}]))  # fmt: skip
    won = T0 + timedelta(weeks=1, days=4)
    registry.record_decision(wh, cycle_id="ab-1", logical_date=won, champion_before="v0", challenger="flywheel_weekly-1",
                             promoted=True, reason="A/B win: acceptance 0.7 vs 0.6")  # fmt: skip
    rows = curve_rows(wh)
    assert [r["cycle_id"] for r in rows] == ["flywheel_bootstrap-0", "flywheel_weekly-1", "flywheel_weekly-2"]
    assert [r["ab_promoted_at"] for r in rows] == [None, won, None]
    # The report of the A/B cycle itself was written before the test was won.
    early = curve_rows(wh, until=T0 + timedelta(weeks=1))
    assert [r["cycle_id"] for r in early] == ["flywheel_bootstrap-0", "flywheel_weekly-1"]
    assert [r["ab_promoted_at"] for r in early] == [None, None]
    out = write_learning_curve(wh, PhasesConfig(), tmp_path / CURVE_FILE)
    assert out.read_bytes().startswith(PNG)


def test_accuracy_plots_zoom_to_the_measured_range_so_a_gain_shows():
    from flywheel.ops.plotting import accuracy_limits

    assert accuracy_limits([]) == (0.0, 1.0)
    assert accuracy_limits([0.45, 0.63, 0.72, 0.78]) == (0.4, 0.85)
    lo, hi = accuracy_limits([0.72, 0.74])  # two points of gain: a quarter of the scale at least, not all of it
    assert lo <= 0.67 and hi >= 0.79 and 0.25 <= hi - lo <= 0.3 + 1e-9
    assert accuracy_limits([0.0, 0.03]) == (0.0, 0.25) and accuracy_limits([0.98, 0.99]) == (0.75, 1.0)


def test_the_curve_is_drawn_on_the_zoomed_scale(monkeypatch, tmp_path):
    """The drawn axis is the zoomed one (read back from the figure the plot made)."""
    import flywheel.ops.curve as curve

    seen = {}
    monkeypatch.setattr(curve, "save_png", lambda fig, path: seen.setdefault("ylim", fig.axes[0].get_ylim()))
    rows = [cycle_row(0, "flywheel_weekly", 0.70, 0.72, True), cycle_row(1, "flywheel_weekly", 0.72, 0.745, True)]
    plot_learning_curve(rows, PhasesConfig(), tmp_path / "c.png")
    from flywheel.ops.plotting import accuracy_limits

    assert seen["ylim"] == pytest.approx(accuracy_limits([0.72, 0.745])) and seen["ylim"][1] - seen["ylim"][0] <= 0.35
