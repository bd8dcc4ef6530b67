"""Flywheel velocity: how much usable data each cycle yields and how much better the model gets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from statistics import median
from typing import Any

from flywheel.config import VelocityConfig
from flywheel.filters import RULE_NAMES
from flywheel.model.registry import BOOTSTRAP_CYCLE
from flywheel.warehouse import Warehouse


def cycle_metrics(cycle_row: dict[str, Any], *, window_days: float) -> dict[str, float]:
    """The per-cycle figures; a metric that cannot be measured this cycle is left out, not zeroed."""
    out: dict[str, float] = {
        "rows_in_window": float(cycle_row["rows_in_window"]),
        "examples_kept": float(cycle_row["kept"]),
        "examples_per_day": cycle_row["kept"] / window_days if window_days else 0.0,
        "filter_pass_rate": float(cycle_row["pass_rate"]),
        "quarantine_rate": cycle_row["quarantined"] / cycle_row["rows_in_window"] if cycle_row["rows_in_window"] else 0.0,
        "promoted": 1.0 if cycle_row["promoted"] else 0.0,
    }
    champ, chall = cycle_row.get("champion_accuracy"), cycle_row.get("challenger_accuracy")
    if champ is not None:
        out["champion_accuracy"] = float(champ)
    if chall is not None:
        out["challenger_accuracy"] = float(chall)
    if champ is not None and chall is not None:
        out["quality_delta"] = float(chall) - float(champ)
    return out


def days_since_last_gain(wh: Warehouse, when: datetime, dag_id: str) -> float:
    """Days from the previous gain (a promotion by a cycle or an A/B test; not the cold-start
    pointer, and not a rollback, which moves the pointer back), or from the DAG's first cycle,
    to a promotion at ``when``."""
    rows = wh.query(
        "SELECT MAX(logical_date) AS t FROM promotions WHERE promoted AND logical_date < $before AND cycle_id <> $boot "
        "AND COALESCE(lower(reason), '') NOT LIKE 'rollback%'",
        {"before": when, "boot": BOOTSTRAP_CYCLE},
    ).to_pylist()
    since = rows[0]["t"] if rows and rows[0]["t"] else None
    if since is None:
        first = wh.query("SELECT MIN(logical_date) AS t FROM cycles WHERE dag_id = $d", {"d": dag_id}).to_pylist()
        since = first[0]["t"] or when
    return (when - since).total_seconds() / 86400


def ab_promotion_metrics(wh: Warehouse, cycle_id: str, dag_id: str) -> dict[str, float]:
    """For a cycle whose challenger won its A/B test: the time to improvement, measured to the
    monitor's promotion (the cycle itself kept the champion while the test ran). Empty otherwise."""
    rows = wh.query("SELECT p.logical_date FROM promotions p JOIN experiments e ON p.cycle_id = e.experiment_id "
                    "WHERE e.cycle_id = $c AND p.promoted AND p.reason LIKE 'A/B win%'", {"c": cycle_id}).to_pylist()  # fmt: skip
    if not rows:
        return {}
    return {"time_to_improvement_days": days_since_last_gain(wh, rows[0]["logical_date"], dag_id), "promoted_by_ab": 1.0}


def cycles_report(wh: Warehouse, dag_id: str | None = None) -> list[dict[str, Any]]:
    """Every recorded cycle in logical-date order, for the demo's table and the dashboard."""
    where = {"dag_id": dag_id} if dag_id else None
    rows = wh.select("cycles", where, order_by="logical_date").to_pylist()
    # A challenger that passed the offline gate goes to an A/B test: the outcome comes later,
    # from ab_monitor (the cycle's own row says what held at its end).
    ab = {e["cycle_id"]: e["status"] for e in wh.select("experiments").to_pylist()}
    return [r | {"ab_status": ab.get(r["cycle_id"])} for r in rows]


def format_cycles_table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'cycle':<30} {'window':<23} {'rows':>5} {'quar':>5} {'kept':>5} {'pass':>6} "
        f"{'champ acc':>9} {'chall acc':>9} {'decision':>15}  champion at cycle end"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        acc = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        window = f"{r['window_start']:%Y-%m-%d}..{r['window_end']:%Y-%m-%d}"
        lines.append(
            f"{r['cycle_id']:<30} {window:<23} {r['rows_in_window']:>5} {r['quarantined']:>5} {r['kept']:>5} "
            f"{r['pass_rate']:>6.1%} {acc(r['champion_accuracy']):>9} {acc(r['challenger_accuracy']):>9} "
            f"{_decision(r):>15}  {r['champion_after']}"
        )
    return "\n".join(lines)


def _decision(row: dict[str, Any]) -> str:
    return challenger_decision(row["promoted"], row["challenger"], row.get("ab_status"))


def challenger_decision(promoted: bool, challenger: str | None, ab_status: str | None) -> str:
    """What became of a cycle's challenger, in a few words (the demo's table, the dashboard)."""
    if ab_status:
        return f"A/B {ab_status.replace('_', ' ')}"
    return "promoted" if promoted else "kept champion" if challenger else "no challenger"


def rule_pass_rates(wh: Warehouse, dag_id: str | None = None) -> dict[str, dict[str, tuple[float, int]]]:
    """Per cycle and rule: (share kept, rows judged), read back from the metrics table."""
    rows = wh.query(
        "SELECT m.cycle_id, m.name, m.value FROM metrics m JOIN cycles c ON c.cycle_id = m.cycle_id "
        "WHERE (m.name LIKE 'pass_rate.%' OR m.name LIKE 'evaluated.%')"
        + (" AND c.dag_id = $dag_id" if dag_id else "")
        + " ORDER BY c.logical_date",
        {"dag_id": dag_id} if dag_id else {},
    ).to_pylist()
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        kind, rule = r["name"].split(".", 1)
        slot = out.setdefault(r["cycle_id"], {}).setdefault(rule, [0.0, 0.0])
        slot[0 if kind == "pass_rate" else 1] = r["value"]
    return {c: {rule: (v[0], int(v[1])) for rule, v in rules.items()} for c, rules in out.items()}


def format_rule_table(rates: dict[str, dict[str, tuple[float, int]]]) -> str:
    """Pass rate of each rule per cycle (of the rows it judged; the count judged below it), in
    the chain's order."""
    rules = [r for r in RULE_NAMES if any(r in v for v in rates.values())]
    header = f"{'cycle':<30} " + " ".join(f"{r[:11]:>11}" for r in rules)
    lines = [header, "-" * len(header)]
    for cycle_id, by_rule in rates.items():
        cells = [f"{by_rule[r][0]:>6.1%} {by_rule[r][1]:>4}" if r in by_rule else f"{'-':>11}" for r in rules]
        lines.append(f"{cycle_id:<30} " + " ".join(cells))
    return "\n".join(lines)


@dataclass(frozen=True)
class StagnationDiagnosis:
    """``stagnant``: the last ``cycles_without_gain`` cycles that evaluated a challenger gained too
    little. ``starved``: the last ``cycles_without_challenger`` cycles trained none at all (too few
    examples survived, a gate failed): no evidence about the model, but the flywheel is not turning."""

    stagnant: bool
    cycles_without_gain: int
    causes: list[str]
    starved: bool = False
    cycles_without_challenger: int = 0

    def describe(self) -> str:
        if not (self.stagnant or self.starved):
            return f"not stagnant ({self.cycles_without_gain} evaluated cycles without a gain)"
        said = []
        if self.stagnant:
            said.append(f"stagnant for {self.cycles_without_gain} evaluated cycles")
        if self.starved:
            said.append(f"starved: {self.cycles_without_challenger} cycles in a row trained no challenger")
        return " and ".join(said) + "; likely causes: " + "; ".join(self.causes)


def _mix_shift(latest: dict[str, float], earlier: list[dict[str, float]]) -> float:
    """Total variation distance between the latest task mix and the mean of the earlier ones."""
    if not earlier:
        return 0.0
    types = set(latest) | {t for m in earlier for t in m}
    mean = {t: sum(m.get(t, 0.0) for m in earlier) / len(earlier) for t in types}
    return 0.5 * sum(abs(latest.get(t, 0.0) - mean[t]) for t in types)


def diagnose_stagnation(history: list[dict[str, Any]], config: VelocityConfig) -> StagnationDiagnosis:
    """Is the flywheel stuck, and why? ``history`` is one dict per cycle, oldest first, with
    ``quality_delta`` (None when no challenger was trained), ``examples_per_day``,
    ``filter_pass_rate``, ``task_mix`` ({task_type: share}) and ``champion_per_task``
    ({task_type: golden accuracy}).

    Stagnation is judged only on the cycles that evaluated a challenger: a cycle that trained
    nothing says nothing about whether the model still learns. A run of such cycles is named
    apart, as starved, since its causes (volume, filters, gates) are upstream of the model."""
    n = config.stagnation_cycles
    evaluated = [h for h in history if h.get("quality_delta") is not None]
    without_gain = next((i for i, h in enumerate(reversed(evaluated)) if h["quality_delta"] >= config.stagnation_min_delta),
                        len(evaluated))  # fmt: skip
    without_challenger = next((i for i, h in enumerate(reversed(history)) if h.get("quality_delta") is not None), len(history))
    stagnant, starved = without_gain >= n, without_challenger >= n
    if not (stagnant or starved):
        return StagnationDiagnosis(False, without_gain, [], False, without_challenger)
    recent = history[-n:] if starved else evaluated[-n:]
    causes: list[str] = []
    volume = median(h.get("examples_per_day") or 0.0 for h in recent)
    if volume < config.min_examples_per_day:
        causes.append(f"too little volume: {volume:.1f} examples/day < {config.min_examples_per_day:g}")
    pass_rate = median(h.get("filter_pass_rate") or 0.0 for h in recent)
    if pass_rate < config.min_pass_rate:
        causes.append(f"low filter pass rate: {pass_rate:.1%} < {config.min_pass_rate:.0%}")
    per_task = history[-1].get("champion_per_task") or {}
    saturated = sorted(t for t, acc in per_task.items() if acc >= config.saturation_accuracy)
    if saturated:
        causes.append(f"saturated task types (champion >= {config.saturation_accuracy:.0%}): {', '.join(saturated)}")
    shift = _mix_shift(history[-1].get("task_mix") or {}, [h.get("task_mix") or {} for h in history[:-1]])
    if shift > config.max_mix_shift:
        causes.append(f"drift in the traffic mix: total variation {shift:.2f} > {config.max_mix_shift:g} vs earlier cycles")
    if not causes and starved:
        causes.append("no cause visible in the metrics: check why build_dataset or a gate stopped each cycle (its log and alerts)")
    elif not causes:
        causes.append("no cause visible in the metrics: volume, pass rate and mix look healthy; check the model and recipe")
    return StagnationDiagnosis(stagnant, without_gain, causes, starved, without_challenger)
