"""Cycle reports and the dashboard's content: velocity over cycles, phases, the learning curve
(`flywheel.ops.curve`), the champion and its lineage, gate failures and alerts, read from the
warehouse and drawn with matplotlib.

The same functions feed the Markdown report each cycle writes next to its artefacts
(``reports/<cycle_id>/``) and the Airflow dashboard plugin, so the two always agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flywheel.config import PHASES, PhasesConfig
from flywheel.filters import RULE_NAMES
from flywheel.model import registry
from flywheel.ops.curve import CURVE_FILE, write_learning_curve
from flywheel.ops.plotting import PHASE_COLOURS, accuracy_limits, pyplot, save_png
from flywheel.warehouse import Warehouse


@dataclass(frozen=True)
class VelocityRow:
    cycle_id: str
    dag_id: str
    logical_date: datetime
    phase: str | None
    rows_in_window: int
    kept: int
    pass_rate: float
    champion_accuracy: float | None
    challenger_accuracy: float | None
    promoted: bool
    metrics: dict[str, float]
    challenger: str | None = None  # the model version trained in the cycle (None: none trained)

    def get(self, name: str) -> float | None:
        return self.metrics.get(name)


def velocity_rows(wh: Warehouse, *, until: datetime | None = None) -> list[VelocityRow]:
    """Every recorded cycle of every DAG, oldest first, with its metrics."""
    where = "WHERE logical_date <= $t" if until is not None else ""
    params = {"t": until} if until is not None else {}
    cycles = wh.query(f"SELECT * FROM cycles {where} ORDER BY logical_date, dag_id", params).to_pylist()
    metrics: dict[str, dict[str, float]] = {}
    for r in wh.query("SELECT cycle_id, name, value FROM metrics").to_pylist():
        metrics.setdefault(r["cycle_id"], {})[r["name"]] = r["value"]
    return [
        VelocityRow(c["cycle_id"], c["dag_id"], c["logical_date"], c.get("phase"), c["rows_in_window"], c["kept"],
                    c["pass_rate"], c["champion_accuracy"], c["challenger_accuracy"], bool(c["promoted"]),
                    metrics.get(c["cycle_id"], {}), c.get("challenger"))
        for c in cycles
    ]  # fmt: skip


def format_velocity_table(rows: list[VelocityRow]) -> str:
    """The velocity table the demo prints: a line per cycle with its phase."""
    header = (
        f"{'cycle':<32} {'phase':<10} {'ex/day':>7} {'pass':>6} {'volume':>6} {'collected':>9} "
        f"{'champ':>6} {'delta':>7} {'days to gain':>12} {'stalled':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        delta = r.get("quality_delta")
        ttg = r.get("time_to_improvement_days")
        acc = r.challenger_accuracy if r.promoted else r.champion_accuracy
        lines.append(
            f"{r.cycle_id:<32} {r.phase or '-':<10} {r.get('examples_per_day') or 0:>7.1f} {r.pass_rate:>6.1%} "
            f"{r.kept:>6} {int(r.get('examples_collected') or 0):>9} {_num(acc, '.3f'):>6} {_num(delta, '+.3f'):>7} "
            f"{_num(ttg, '.0f'):>12} {int(r.get('cycles_without_gain') or 0):>7}"
        )
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound at 0 and 1 and for small n)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def task_slices(wh: Warehouse, cycle_id: str) -> list[dict[str, Any]]:
    """Champion and challenger per task type on the golden set, with 95% Wilson intervals."""
    out = []
    for e in wh.select("evaluations", {"cycle_id": cycle_id}).to_pylist():
        for task, s in sorted(json.loads(e["per_task_json"] or "{}").items()):
            lo, hi = wilson_interval(int(s["correct"]), int(s["n"]))
            out.append({"role": e["role"], "model_version": e["model_version"], "task_type": task, "n": int(s["n"]),
                        "accuracy": s["accuracy"], "low": lo, "high": hi})  # fmt: skip
    return out


# --- Plots ---------------------------------------------------------------------------------


def plot_velocity(rows: list[VelocityRow], path: Any) -> Any:
    """Four panels over cycles: examples per day, pass rate, quality delta (with the 2-5%
    healthy band), and the champion's golden accuracy on the phases' background."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True)
    x = list(range(len(rows)))
    labels = [f"{r.logical_date:%m-%d}\n{r.dag_id.removeprefix('flywheel_')}" for r in rows]
    ax = axes[0][0]
    ax.plot(x, [r.get("examples_per_day") or 0 for r in rows], marker="o")
    ax.set_title("examples kept per day")
    ax = axes[0][1]
    ax.plot(x, [r.pass_rate for r in rows], marker="o", label="overall")
    ax.set_ylim(0, 1)
    ax.set_title("filter pass rate")
    ax = axes[1][0]
    deltas = [r.get("quality_delta") for r in rows]
    ax.bar(x, [d or 0 for d in deltas], color=["#4c9a4c" if (d or 0) > 0 else "#c05050" for d in deltas])
    ax.axhspan(0.02, 0.05, color="#4c9a4c", alpha=0.12, label="healthy 2-5%")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title("quality delta (challenger - champion)")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1][1]
    for i, r in enumerate(rows):
        ax.axvspan(i - 0.5, i + 0.5, color=PHASE_COLOURS.get(r.phase or "", "#eeeeee"), linewidth=0)
    acc = [(r.challenger_accuracy if r.promoted else r.champion_accuracy) for r in rows]
    ax.plot(x, [a if a is not None else math.nan for a in acc], marker="o", color="#1f4e8c")
    ax.set_ylim(*accuracy_limits([a for a in acc if a is not None]))
    ax.set_title("champion golden accuracy (background: phase)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=PHASE_COLOURS[p]) for p in PHASES]
    ax.legend(handles, PHASES, loc="upper left", fontsize=8)
    for a in axes[1]:
        a.set_xticks(x, labels, fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def plot_rule_pass_rates(rows: list[VelocityRow], path: Any) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.8))
    x = list(range(len(rows)))
    for rule in RULE_NAMES:
        values = [r.get(f"pass_rate.{rule}") for r in rows]
        if any(v is not None for v in values):
            ax.plot(x, [v if v is not None else math.nan for v in values], marker=".", label=rule)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(x, [r.cycle_id.removeprefix("flywheel_") for r in rows], fontsize=7, rotation=20)
    ax.set_title("pass rate per filter rule (share kept of the rows each rule judged)")
    ax.legend(ncol=5, fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_png(fig, path)


def plot_task_slices(slices: list[dict[str, Any]], path: Any) -> Any:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    tasks = sorted({s["task_type"] for s in slices})
    for k, role in enumerate(("champion", "challenger")):
        got = {s["task_type"]: s for s in slices if s["role"] == role}
        xs = [i + (k - 0.5) * 0.35 for i in range(len(tasks)) if tasks[i] in got]
        ss = [got[t] for t in tasks if t in got]
        if ss:
            ax.bar(xs, [s["accuracy"] for s in ss], width=0.35, label=role,
                   yerr=[[s["accuracy"] - s["low"] for s in ss], [s["high"] - s["accuracy"] for s in ss]], capsize=3)  # fmt: skip
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 1)
    ax.set_title("golden accuracy per task type (95% Wilson intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


# --- Reports -------------------------------------------------------------------------------


def champion_lineage(wh: Warehouse, version: str | None = None) -> list[dict[str, Any]]:
    """A champion (the current one by default) and its ancestors, newest first, each with its
    data window."""
    out = []
    version = version or registry.current_champion(wh)
    seen: set[str] = set()
    while version and version not in seen:
        seen.add(version)
        mv = registry.get_model(wh, version)
        out.append({"version": mv.version, "cycle_id": mv.cycle_id, "dataset_hash": mv.dataset_hash,
                    "window_start": mv.window_start, "window_end": mv.window_end})  # fmt: skip
        version = mv.parent_version
    return out


def recent_alerts(wh: Warehouse, limit: int = 20) -> list[dict[str, Any]]:
    return wh.query(
        "SELECT dag_id, task_id, kind, message, link, raised_at FROM alerts ORDER BY raised_at DESC LIMIT $n", {"n": limit}
    ).to_pylist()


def recent_gate_failures(wh: Warehouse, limit: int = 20) -> list[dict[str, Any]]:
    return wh.query(
        "SELECT cycle_id, gate, n_failed, failed_json, docs_url, evaluated_at FROM gate_results "
        "WHERE NOT success ORDER BY evaluated_at DESC LIMIT $n",
        {"n": limit},
    ).to_pylist()


def rollbacks(wh: Warehouse) -> list[dict[str, Any]]:
    return wh.query(
        "SELECT cycle_id, champion_before, champion_after, reason, decided_at FROM promotions "
        "WHERE lower(reason) LIKE 'rollback%' ORDER BY decided_at DESC"
    ).to_pylist()


def new_data_section(wh: Warehouse, cycle_id: str) -> list[str]:
    """The report's "New data vs old data" lines: the challenger against its twin trained without
    the newest window, and the windows flagged so far (empty when this cycle trained no twin)."""
    found = wh.select("new_data_comparisons", {"cycle_id": cycle_id}).to_pylist()
    if not found:
        return []
    c = found[0]
    lines = ["## New data vs old data", "",
             f"Newest window {c['newest_start']:%Y-%m-%d} .. {c['newest_end']:%Y-%m-%d} ({c['n_newest']} examples):",
             "", "| model | trained on | golden accuracy |", "|---|---|---|",
             f"| `{c['challenger']}` | the whole window | {c['challenger_accuracy']:.3f} |",
             f"| `{c['twin']}` | without the newest window | {c['twin_accuracy']:.3f} |", "",
             f"What the newest window added: **{c['delta']:+.3f}** (95% interval {c['delta_low']:+.3f} .. {c['delta_high']:+.3f}): "
             + {"helped": "the new data helped.", "no_gain": "no gain from the new data.",
                "hurt": "the new data made the model worse."}[c["verdict"]]]  # fmt: skip
    if c["flagged"]:
        lines.append(f"**Flagged:** {c['reason']}")
    flagged = wh.query("SELECT cycle_id, newest_start, newest_end, delta FROM new_data_comparisons WHERE flagged "
                       "AND logical_date <= $t ORDER BY newest_start", {"t": c["logical_date"]}).to_pylist()  # fmt: skip
    if flagged:
        lines += ["", "Windows flagged and kept out of training so far: " + ", ".join(
            f"{f['newest_start']:%Y-%m-%d} .. {f['newest_end']:%Y-%m-%d} ({f['delta']:+.3f}, by {f['cycle_id']})" for f in flagged)]  # fmt: skip
    return lines + [""]


def format_new_data_table(rows: list[dict[str, Any]]) -> str:
    """Rows of `new_data_comparisons` as the demo prints them."""
    header = f"{'cycle':<32} {'newest window':<24} {'n':>5} {'twin':>6} {'chall':>6} {'added [95% CI]':>24}  verdict"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['cycle_id']:<32} {r['newest_start']:%Y-%m-%d}..{r['newest_end']:%Y-%m-%d}{'':<2} {r['n_newest']:>5} "
                     f"{r['twin_accuracy']:>6.3f} {r['challenger_accuracy']:>6.3f} {r['delta']:>+7.3f} "
                     f"[{r['delta_low']:+.3f}, {r['delta_high']:+.3f}]  {r['verdict']}"
                     + (" (FLAGGED: kept out; the twin went to the gate)" if r["flagged"] else ""))  # fmt: skip
    return "\n".join(lines)


def write_cycle_report(
    wh: Warehouse, cycle_id: str, out_dir: Path, *, broad: bool = False, phases: PhasesConfig | None = None
) -> Path:
    """``report.md`` and its PNG plots for one cycle, over every cycle up to it: the latest
    report always holds the learning curve so far, on the bands of ``phases`` (the defaults'
    when not given).

    ``broad`` adds the monthly evaluation: per task type, champion and challenger with 95%
    intervals, so a gain that rests on one slice (or a slice that regressed) is visible."""
    (cycle,) = wh.select("cycles", {"cycle_id": cycle_id}).to_pylist()
    rows = velocity_rows(wh, until=cycle["logical_date"])
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_velocity(rows, out_dir / "velocity.png")
    plot_rule_pass_rates(rows, out_dir / "pass_rates.png")
    write_learning_curve(wh, phases or PhasesConfig(), out_dir / CURVE_FILE, until=cycle["logical_date"])
    metrics = rows[-1].metrics if rows and rows[-1].cycle_id == cycle_id else {}
    lines = [
        f"# Flywheel report: {cycle_id}",
        "",
        f"- DAG `{cycle['dag_id']}`, logical date {cycle['logical_date']:%Y-%m-%d}, window "
        f"{cycle['window_start']:%Y-%m-%d} .. {cycle['window_end']:%Y-%m-%d}",
        f"- Phase at the end of the cycle: **{cycle.get('phase') or '-'}**",
        f"- Rows {cycle['rows_in_window']}: {cycle['quarantined']} quarantined, {cycle['kept']} kept, "
        f"{cycle['rejected']} rejected (pass rate {cycle['pass_rate']:.1%})",
        f"- Champion before: `{cycle['champion_before']}` ({_num(cycle['champion_accuracy'], '.3f')}); challenger "
        f"`{cycle['challenger'] or '-'}` ({_num(cycle['challenger_accuracy'], '.3f')}); "
        f"{'**promoted**' if cycle['promoted'] else 'not promoted'}; champion after: `{cycle['champion_after']}`",
    ]
    promo = wh.select("promotions", {"cycle_id": cycle_id}).to_pylist()
    if promo:
        lines.append(f"- Decision: {promo[0]['reason']}")
    for flag, kind, label, count in (("stagnant", "stagnation", "Stagnant", "cycles_without_gain"),
                                     ("starved", "starved", "Starved", "cycles_without_challenger")):  # fmt: skip
        if metrics.get(flag):
            alert = wh.query(f"SELECT message FROM alerts WHERE kind = '{kind}' AND run_id IS NOT NULL ORDER BY raised_at DESC LIMIT 1").to_pylist()
            unit = "evaluated cycles without a gain" if flag == "stagnant" else "cycles in a row without a challenger"
            lines.append(f"- **{label}**: {int(metrics.get(count, 0))} {unit}" + (f": {alert[0]['message']}" if alert else ""))
    lines += ["", "## Learning curve", "", f"![learning curve]({CURVE_FILE})", "",
              "## Velocity", "", "![velocity](velocity.png)", "", "```", format_velocity_table(rows), "```", "",
              "## Filters", "", "![pass rates](pass_rates.png)", ""]  # fmt: skip
    if broad:
        slices = task_slices(wh, cycle_id)
        if slices:
            plot_task_slices(slices, out_dir / "task_slices.png")
            lines += ["## Evaluation per task type", "", "![task slices](task_slices.png)", "",
                      "| model | role | task type | n | accuracy | 95% interval |", "|---|---|---|---|---|---|"]  # fmt: skip
            lines += [f"| `{s['model_version']}` | {s['role']} | {s['task_type']} | {s['n']} | {s['accuracy']:.3f} | "
                      f"{s['low']:.3f} - {s['high']:.3f} |" for s in slices]  # fmt: skip
            lines.append("")
    lines += new_data_section(wh, cycle_id)
    gates = wh.select("gate_results", {"cycle_id": cycle_id}).to_pylist()
    lines += ["## Gates", ""] + [
        f"- {g['gate']}: {'passed' if g['success'] else 'FAILED'} ({g['n_expectations']} expectations, "
        f"{g['n_failed']} failed) - Data Docs: {g['docs_url']}" for g in gates
    ] + ["", "## Champion lineage", ""] + [
        f"- `{m['version']}`" + (f" (cycle {m['cycle_id']}, data {m['window_start']:%Y-%m-%d} .. {m['window_end']:%Y-%m-%d})"
                                 if m["window_start"] else " (base model)")
        for m in champion_lineage(wh, cycle['champion_after'])
    ]  # fmt: skip
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
