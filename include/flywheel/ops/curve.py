"""The flywheel's learning curve: the champion's golden-set accuracy after every cycle (bootstrap,
weekly and monthly, in logical-date order) on the bands of the method's phases, and each
challenger's score, so one picture says where the flywheel stands and how fast it climbs.

The bands are the phases' accuracy bars (`phases.growth_min_accuracy`,
`phases.maturity_min_accuracy`); a phase also needs its examples collected, so a cycle can sit
in the growth band and still be recorded in cold start (the cycles table says which).

A challenger that passed the offline gate goes to an A/B test: its cycle keeps the champion, and
the monitor promotes it later (a `promotions` row whose reason starts "A/B win"). Its marker
says so, with the date; the curve rises at the next cycle, whose champion it is.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from flywheel.config import PhasesConfig
from flywheel.ops.metrics import cycles_report
from flywheel.ops.plotting import PHASE_COLOURS, accuracy_limits, pyplot, save_png
from flywheel.warehouse import Warehouse

CURVE_FILE = "flywheel_curve.png"
FIGSIZE = (10.0, 5.0)  # inches; at plotting.DPI, 900 x 450 pixels
MAX_TICK_LABELS = 16  # more cycles than this: every k-th tick is labelled


def curve_rows(wh: Warehouse, *, until: datetime | None = None) -> list[dict[str, Any]]:
    """`cycles_report` rows up to ``until`` (all by default), each with ``ab_promoted_at``: when
    an A/B test promoted the cycle's challenger, if one had by ``until`` (None otherwise)."""
    rows = [r for r in cycles_report(wh) if until is None or r["logical_date"] <= until]
    wins = wh.query(
        "SELECT e.cycle_id, MIN(p.logical_date) AS promoted_at FROM promotions p "
        "JOIN experiments e ON p.cycle_id = e.experiment_id WHERE p.promoted AND p.reason LIKE 'A/B win%'"
        + (" AND p.logical_date <= $t" if until is not None else "")
        + " GROUP BY e.cycle_id",
        {"t": until} if until is not None else {},
    ).to_pylist()
    promoted_at = {w["cycle_id"]: w["promoted_at"] for w in wins}
    return [r | {"ab_promoted_at": promoted_at.get(r["cycle_id"])} for r in rows]


def champion_after(row: dict[str, Any]) -> float | None:
    """The golden accuracy of the champion a cycle left: its challenger's if it promoted it."""
    return row.get("challenger_accuracy") if row.get("promoted") else row.get("champion_accuracy")


def plot_learning_curve(rows: list[dict[str, Any]], phases: PhasesConfig, path: Any) -> Any:
    """Golden-set accuracy per cycle as a PNG at ``path`` (a file path, or a binary file object).

    ``rows`` are cycles rows (`curve_rows`; ``ab_promoted_at`` is optional); a missing accuracy
    leaves its point out rather than drawing it at zero."""
    plt = pyplot()
    rows = sorted(rows, key=lambda r: r["logical_date"])  # stable: ties keep the given order
    fig, ax = plt.subplots(figsize=FIGSIZE)
    champion = [(i, a) for i, r in enumerate(rows) if (a := champion_after(r)) is not None]
    limits = accuracy_limits([a for _, a in champion] + [a for r in rows if (a := r.get("challenger_accuracy")) is not None])
    _phase_bands(ax, phases, limits)
    if champion:
        # Joined across a cycle without a measurement: the champion did not change by being unmeasured.
        ax.plot(*zip(*champion, strict=True), marker="o", color="#1f4e8c", linewidth=2, zorder=3,
                label="champion after the cycle")  # fmt: skip
    _challenger_markers(ax, rows)
    n = len(rows)
    ax.set_xlim(-0.5, max(n - 1, 0) + 0.5)
    ax.set_ylim(*limits)
    every = max(1, math.ceil(n / MAX_TICK_LABELS))
    ax.set_xticks(range(n), [_tick_label(r) if i % every == 0 or i == n - 1 else "" for i, r in enumerate(rows)],
                  fontsize=7)  # fmt: skip
    if not rows:
        ax.text(0.5, 0.5, "no cycle recorded yet", transform=ax.transAxes, ha="center", va="center", color="#6b7785")
    ax.set_ylabel("golden-set accuracy")
    ax.set_title("Flywheel learning curve: golden-set accuracy per cycle\n"
                 "(bands: the phases' accuracy bars; a phase also needs its examples collected)", fontsize=10)  # fmt: skip
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return save_png(fig, path)


def write_learning_curve(wh: Warehouse, phases: PhasesConfig, path: Any, *, until: datetime | None = None) -> Any:
    """The curve of every cycle up to ``until`` (all by default), read from the warehouse."""
    return plot_learning_curve(curve_rows(wh, until=until), phases, path)


def _phase_bands(ax: Any, phases: PhasesConfig, limits: tuple[float, float] = (0.0, 1.0)) -> None:
    """The phases' accuracy bands, each labelled in the middle of the part of it in view."""
    growth, maturity = phases.growth_min_accuracy, phases.maturity_min_accuracy
    bands = (("cold_start", 0.0, growth, f"cold start  < {growth:.0%}"),
             ("growth", growth, maturity, f"growth  {growth:.0%} - {maturity:.0%}"),
             ("maturity", maturity, 1.0, f"maturity  ≥ {maturity:.0%}"))  # fmt: skip
    for phase, low, high, label in bands:
        if high <= low:
            continue  # equal thresholds: the band between them is empty
        ax.axhspan(low, high, color=PHASE_COLOURS[phase], linewidth=0, zorder=0)
        shown_low, shown_high = max(low, limits[0]), min(high, limits[1])
        if shown_high - shown_low < 0.02:
            continue  # the band is out of view (or a sliver of it): no label
        # x in axes coordinates, y in data: the label stays at the right edge however many cycles.
        ax.text(0.995, (shown_low + shown_high) / 2, label, transform=ax.get_yaxis_transform(), ha="right", va="center",
                fontsize=8, color="#4a5563", zorder=1)  # fmt: skip
    for threshold in (growth, maturity):
        ax.axhline(threshold, linestyle="--", color="#6b7785", linewidth=0.9, zorder=1)


def _challenger_markers(ax: Any, rows: list[dict[str, Any]]) -> None:
    """A marker per challenger scored: promoted by its cycle, promoted later by an A/B test, or
    not promoted."""
    groups: dict[str, list[tuple[int, float]]] = {"promoted": [], "ab": [], "kept": []}
    for i, r in enumerate(rows):
        acc = r.get("challenger_accuracy")
        if acc is None:
            continue
        kind = "promoted" if r.get("promoted") else "ab" if r.get("ab_promoted_at") else "kept"
        groups[kind].append((i, acc))
        if kind == "ab":
            ax.annotate(f"A/B {r['ab_promoted_at']:%m-%d}", (i, acc), textcoords="offset points", xytext=(0, 9),
                        ha="center", fontsize=7, color="#2e7d32", zorder=5)  # fmt: skip
    style = {
        "promoted": dict(marker="^", s=70, color="#2e7d32", label="challenger, promoted by its cycle"),
        "ab": dict(marker="*", s=140, color="#2e7d32", label="challenger, promoted later by its A/B test"),
        "kept": dict(marker="o", s=45, facecolors="none", edgecolors="#c05050", label="challenger, not promoted"),
    }
    for kind, points in groups.items():
        if points:
            ax.scatter(*zip(*points, strict=True), zorder=4, **style[kind])


def _tick_label(row: dict[str, Any]) -> str:
    return f"{row['logical_date']:%Y-%m-%d}\n{row['dag_id'].removeprefix('flywheel_')}"
