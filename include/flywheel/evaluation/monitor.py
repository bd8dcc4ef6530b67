"""The A/B monitor's decisions: for every running experiment, ramp, keep running, promote on a
significant win, or stop and roll back on a loss or a guardrail breach; and the same watch over a
newly promoted champion. The `ab_monitor` DAG calls `monitor` often; the experiment's state and
its logs as of the run's date decide, so a rerun for the same date writes the same decision
(`flywheel.evaluation.experiment` holds the experiments, routing and the statistics)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.config import ExperimentConfig, FlywheelConfig
from flywheel.evaluation.experiment import (
    TERMINAL,
    ArmMetrics,
    Experiment,
    arm_metrics,
    guardrail_breaches,
    proportion_p_value,
    required_sample_size,
    running_experiment,
)
from flywheel.evaluation.serving import publish_manifest
from flywheel.filters.scorers import make_toxicity_scorer
from flywheel.model import registry
from flywheel.ops.metrics import ab_promotion_metrics
from flywheel.tables import rows_to_table
from flywheel.warehouse import Warehouse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorDecision:
    """One judgement of ``ab_monitor``: on an experiment, or on the live champion."""

    subject: str  # the experiment id, or "champion"
    action: str  # keep_running | ramp | promote | rollback | stop | ok
    reason: str
    champion_before: str
    champion_after: str
    traffic_share: float | None = None
    p_value: float | None = None
    required_per_arm: int | None = None
    arms: list[dict[str, Any]] = field(default_factory=list)

    @property
    def champion_changed(self) -> bool:
        return self.champion_before != self.champion_after

    @property
    def alert(self) -> bool:
        return self.action == "rollback"


def decide(exp: Experiment, champ: ArmMetrics, chall: ArmMetrics, step_rows: int, config: ExperimentConfig) -> tuple[str, float, str, str, float, int]:
    """(action, traffic share, status, reason, p-value, required rows per arm) for a running
    experiment: guardrails first; then up the ramp once a step has its rows; at the last step, a
    decision once both arms hold the planned sample."""
    required = required_sample_size(champ.rate("acceptance"), config)
    p_better = proportion_p_value(champ, chall, alternative="larger")
    summary = (f"challenger {chall.rate('acceptance'):.1%} (n={chall.n}) vs champion {champ.rate('acceptance'):.1%} "
               f"(n={champ.n})")  # fmt: skip
    breaches = guardrail_breaches(champ, chall, config)
    if breaches:
        return "rollback", 0.0, "rolled_back", "rollback: A/B guardrail breached: " + "; ".join(breaches), p_better, required
    share = exp.traffic_share
    if share < exp.ramp[-1]:
        if step_rows >= config.min_rows_per_step:
            nxt = next(s for s in exp.ramp if s > share)
            return "ramp", nxt, "running", f"ramp {share:.0%} -> {nxt:.0%}: {step_rows} challenger rows at this step, no breach; {summary}", p_better, required
        return "keep_running", share, "running", f"step {share:.0%}: {step_rows}/{config.min_rows_per_step} challenger rows; {summary}", p_better, required
    if min(champ.n, chall.n) < required:
        return "keep_running", share, "running", f"{min(champ.n, chall.n)}/{required} rows per arm for the test; {summary}", p_better, required
    if p_better < config.alpha:
        return "promote", share, "promoted", f"A/B win: {summary}, one-sided p={p_better:.3g} < {config.alpha}", p_better, required
    p_worse = proportion_p_value(champ, chall, alternative="smaller")
    if p_worse < config.alpha:
        return "rollback", 0.0, "rolled_back", f"rollback: A/B loss: {summary}, p={p_worse:.3g}", p_better, required
    if min(champ.n, chall.n) >= config.max_sample_factor * required:
        return "stop", 0.0, "stopped", f"A/B stopped, champion kept: no significant difference after {min(champ.n, chall.n)} rows per arm ({summary}, p={p_better:.3g})", p_better, required
    return "keep_running", share, "running", f"not significant yet: {summary}, p={p_better:.3g}", p_better, required


def monitor(wh: Warehouse, config: FlywheelConfig, as_of: datetime, *, toxicity: Any = None) -> list[MonitorDecision]:
    """Judge the running experiment and the live champion as of ``as_of``, and apply what is
    decided: the experiment's new state, and any move of the champion pointer."""
    toxicity = toxicity or make_toxicity_scorer(config.filters.toxicity_scorer)
    measure = lambda v, s, e: arm_metrics(wh, v, s, e, toxicity=toxicity, max_toxicity=config.filters.max_toxicity)  # noqa: E731
    out: list[MonitorDecision] = []
    exp = running_experiment(wh, as_of, inclusive=False)
    if exp is not None:
        out.append(_judge_experiment(wh, config.experiment, exp, as_of, measure))
    watch = _watch_champion(wh, config.experiment, as_of, measure)
    if watch is not None:
        out.append(watch)
    if out:  # an A/B step or a rollback: what serves may have changed
        publish_manifest(wh, config, reason="; ".join(f"{d.action}: {d.reason}" for d in out))
    return out


def _judge_experiment(wh: Warehouse, cfg: ExperimentConfig, exp: Experiment, as_of: datetime, measure: Any) -> MonitorDecision:
    champion_now = registry.champion_as_of(wh, as_of)
    champ, chall = measure(exp.champion, exp.started_at, as_of), measure(exp.challenger, exp.started_at, as_of)
    step_rows = measure(exp.challenger, exp.step_started_at, as_of).n
    action, share, status, reason, p, required = decide(exp, champ, chall, step_rows, cfg)
    if champion_now != exp.champion and status == "running":
        action, share, status = "stop", 0.0, "stopped"
        reason = f"A/B stopped: the champion changed to {champion_now} since the experiment started against {exp.champion}"
    now = datetime.now(UTC)
    arms = [{"arm": "champion", **champ.as_dict()}, {"arm": "challenger", **chall.as_dict()}]
    if status in TERMINAL:
        # The pointer first: it is the decision that matters, one row in one transaction.
        registry.record_decision(wh, cycle_id=exp.experiment_id, logical_date=as_of, champion_before=champion_now,
                                 challenger=exp.challenger, promoted=status == "promoted", reason=reason)  # fmt: skip
    wh.merge("experiment_decisions", rows_to_table("experiment_decisions", [{
        "experiment_id": exp.experiment_id, "as_of": as_of, "action": action, "traffic_share": share, "status": status,
        "reason": reason, "n_champion": champ.n, "n_challenger": chall.n, "rate_champion": _nan_none(champ.rate("acceptance")),
        "rate_challenger": _nan_none(chall.rate("acceptance")), "p_value": _nan_none(p), "required_per_arm": required,
        "metrics_json": json.dumps(arms), "decided_at": now}]))  # fmt: skip
    _materialise(wh, exp.experiment_id, now)
    if status == "promoted":
        _credit_cycle(wh, exp.cycle_id, now)
    after = exp.challenger if status == "promoted" else champion_now
    log.info("%s as of %s: %s (%s)", exp.experiment_id, as_of.isoformat(), action, reason)
    return MonitorDecision(exp.experiment_id, action, reason, champion_now, after, share, _nan_none(p), required, arms)


def _credit_cycle(wh: Warehouse, cycle_id: str, now: datetime) -> None:
    """The velocity metrics credit the cycle whose challenger won: its time to improvement runs
    to this promotion (the cycle itself ended with the champion kept while the test ran)."""
    cycle = wh.select("cycles", {"cycle_id": cycle_id}).to_pylist()
    credit = ab_promotion_metrics(wh, cycle_id, cycle[0]["dag_id"]) if cycle else {}
    if credit:
        wh.merge("metrics", rows_to_table("metrics", [{"cycle_id": cycle_id, "name": k, "value": v, "recorded_at": now}
                                                      for k, v in credit.items()]))  # fmt: skip


def _nan_none(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x


def _materialise(wh: Warehouse, experiment_id: str, now: datetime) -> None:
    """The `experiments` row (what the dashboard shows) from the latest decision."""
    (row,) = wh.select("experiments", {"experiment_id": experiment_id}).to_pylist()
    latest = wh.query(
        "SELECT * FROM experiment_decisions WHERE experiment_id = $e ORDER BY as_of DESC LIMIT 1", {"e": experiment_id}
    ).to_pylist()
    if latest:
        d = latest[0]
        row.update(traffic_share=d["traffic_share"], status=d["status"], reason=d["reason"], updated_at=now)
    wh.merge("experiments", rows_to_table("experiments", [row]))


def _watch_champion(wh: Warehouse, cfg: ExperimentConfig, as_of: datetime, measure: Any) -> MonitorDecision | None:
    """A champion promoted less than ``watch_days`` ago, against its predecessor's last
    ``watch_days`` of traffic: on a guardrail breach, the pointer goes back at once."""
    current = registry.champion_as_of(wh, as_of)
    rows = wh.query(
        "SELECT * FROM promotions WHERE champion_after = $v AND promoted AND logical_date < $t AND champion_before IS NOT NULL "
        "AND champion_before <> $v ORDER BY logical_date DESC, decided_at DESC LIMIT 1",
        {"v": current, "t": as_of},
    ).to_pylist()
    if not rows or (rows[0]["reason"] or "").lower().startswith("rollback"):
        return None  # the bootstrap champion, or a known-good champion restored by a rollback
    promoted_at, previous = rows[0]["logical_date"], rows[0]["champion_before"]
    if as_of - promoted_at > timedelta(days=cfg.watch_days):
        return None
    baseline = measure(previous, promoted_at - timedelta(days=cfg.watch_days), promoted_at)
    live = measure(current, promoted_at, as_of)
    arms = [{"arm": "previous champion", **baseline.as_dict()}, {"arm": "champion", **live.as_dict()}]
    breaches = guardrail_breaches(baseline, live, cfg)
    if not breaches:
        reason = (f"champion {current} live for {(as_of - promoted_at).total_seconds() / 3600:.0f}h: acceptance "
                  f"{live.rate('acceptance'):.1%} (n={live.n}) vs {previous} {baseline.rate('acceptance'):.1%} (n={baseline.n}), no breach")  # fmt: skip
        return MonitorDecision("champion", "ok", reason, current, current, arms=arms)
    reason = f"rollback: champion {current} breached guardrails against {previous}: " + "; ".join(breaches)
    registry.record_decision(wh, cycle_id=f"rollback-{current}", logical_date=as_of, champion_before=current,
                             challenger=previous, promoted=True, reason=reason)  # fmt: skip
    log.error("%s", reason)
    return MonitorDecision("champion", "rollback", reason, current, previous, arms=arms)


def needs_monitoring(wh: Warehouse, t: datetime, config: ExperimentConfig) -> bool:
    """Is there anything for `ab_monitor` to judge at ``t``: a running experiment, or a champion
    promoted less than ``watch_days`` ago? (The demo runs the monitor only then.)"""
    if running_experiment(wh, t, inclusive=False) is not None:
        return True
    recent = wh.query(
        "SELECT COUNT(*) AS n FROM promotions WHERE promoted AND champion_before IS NOT NULL AND champion_before <> champion_after "
        "AND logical_date < $t AND logical_date >= $since",
        {"t": t, "since": t - timedelta(days=config.watch_days)},
    ).to_pylist()
    return bool(recent[0]["n"])


def format_experiments_table(wh: Warehouse) -> str:
    """Every experiment with its last decision, as the demo prints it."""
    rows = wh.query(
        "SELECT e.experiment_id, e.challenger, e.champion, e.status, e.traffic_share, e.reason, d.n_champion, "
        "d.n_challenger, d.rate_champion, d.rate_challenger, d.p_value, d.required_per_arm FROM experiments e "
        "LEFT JOIN (SELECT *, row_number() OVER (PARTITION BY experiment_id ORDER BY as_of DESC) AS k "
        "FROM experiment_decisions) d ON d.experiment_id = e.experiment_id AND d.k = 1 ORDER BY e.started_at"
    ).to_pylist()
    header = (f"{'experiment':<36} {'status':<11} {'share':>5} {'n champ/chall':>14} {'accept champ/chall':>19} "
              f"{'p':>7} {'needed':>6}  decision")  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in rows:
        n = f"{r['n_champion'] or 0}/{r['n_challenger'] or 0}"
        acc = (f"{r['rate_champion']:.1%}/{r['rate_challenger']:.1%}"
               if r["rate_champion"] is not None and r["rate_challenger"] is not None else "-")  # fmt: skip
        p = f"{r['p_value']:.3f}" if r["p_value"] is not None else "-"
        lines.append(f"{r['experiment_id']:<36} {r['status']:<11} {r['traffic_share']:>5.0%} {n:>14} {acc:>19} {p:>7} "
                     f"{r['required_per_arm'] or '-':>6}  {r['reason']}")  # fmt: skip
    return "\n".join(lines)
