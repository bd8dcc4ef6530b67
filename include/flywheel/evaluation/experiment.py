"""Online A/B tests: deterministic user bucketing, a traffic ramp, online metrics per arm from
the production logs, a sample size from a power calculation, a two-proportion test, guardrails,
and the decision: promote, keep running, or stop (and roll back).

A challenger that passed the offline gate starts an experiment (`start_experiment`); from then
on the product serves each user by bucket (`route`), and every log row names the version that
answered it, so the online metrics are measurements of the two models, not estimates. The
`ab_monitor` DAG calls `monitor` often: it judges every running experiment and the newly
promoted champion, and moves the champion pointer (the `promotions` table, one row written in
one transaction) only on a significant win or a guardrail breach.

State as of a date is a pure function of the tables: an experiment's traffic share and status
at ``t`` are those of its latest decision strictly before ``t`` (the monitor's view) or at
``t`` (the product's view: a decision is in force from its instant). So a rerun of the monitor
for the same date sees the same state and the same logs, and writes the same decision.
Only one experiment runs at a time: a newer one (a newer challenger that passed the gate)
supersedes a running one from its start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel.config import USER_ACTIONS, ExperimentConfig, FlywheelConfig
from flywheel.errors import FlywheelError
from flywheel.filters.scorers import make_toxicity_scorer
from flywheel.model import registry
from flywheel.ops.metrics import ab_promotion_metrics
from flywheel.schema import rows_to_table
from flywheel.warehouse import Warehouse

# statsmodels is imported inside the functions that use it: it takes seconds to
# import, and DAG parsing and the light stages import this module without needing it.

log = logging.getLogger(__name__)

POSITIVE_ACTIONS = ("accepted", "copied")
TERMINAL = ("promoted", "rolled_back", "stopped")


class ExperimentError(FlywheelError):
    """An experiment cannot be started or judged as asked."""


def experiment_id_for(cycle_id: str) -> str:
    return f"ab-{cycle_id}"


def bucket(user_id: str, experiment_id: str, salt: str) -> float:
    """The user's place in [0, 1) for this experiment: a hash, so the same user always gets the
    same arm, a ramp only ever adds users to the challenger's arm (those below the new share),
    and two experiments split users independently."""
    digest = hashlib.sha256(f"{salt}:{experiment_id}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    cycle_id: str
    champion: str
    challenger: str
    ramp: tuple[float, ...]
    started_at: datetime
    traffic_share: float
    status: str
    # When the current ramp step began (the start, or the last ramp decision).
    step_started_at: datetime

    def serves_challenger(self, user_id: str, salt: str) -> bool:
        return self.status == "running" and bucket(user_id, self.experiment_id, salt) < self.traffic_share


def start_experiment(
    wh: Warehouse, *, cycle_id: str, logical_date: datetime, champion: str, challenger: str, config: ExperimentConfig
) -> Experiment:
    """Put ``challenger`` on the ramp's first step from ``logical_date``; a running experiment
    is superseded (recorded as stopped). Idempotent for the cycle."""
    now = datetime.now(UTC)
    experiment_id = experiment_id_for(cycle_id)
    for old in _latest_started(wh, logical_date, exclude=experiment_id):
        state = experiment_as_of(wh, old["experiment_id"], logical_date, inclusive=False)
        if state is not None and state.status == "running":
            wh.merge("experiments", rows_to_table("experiments", [{
                **old, "status": "stopped", "traffic_share": 0.0, "updated_at": now,
                "reason": f"superseded by {experiment_id} (a newer challenger passed the offline gate)"}]))  # fmt: skip
    row = {
        "experiment_id": experiment_id, "cycle_id": cycle_id, "champion": champion, "challenger": challenger,
        "traffic_share": config.ramp[0], "ramp_json": json.dumps(config.ramp), "status": "running",
        "started_at": logical_date, "updated_at": now, "reason": "offline gate passed",
    }  # fmt: skip
    wh.replace_partition("experiment_decisions", {"experiment_id": experiment_id}, rows_to_table("experiment_decisions", []))
    wh.merge("experiments", rows_to_table("experiments", [row]))
    return _experiment(row, config.ramp[0], "running", logical_date)


def cancel_experiment(wh: Warehouse, cycle_id: str) -> None:
    """A rerun of a cycle whose gate now fails leaves no experiment behind (as a first run would)."""
    experiment_id = experiment_id_for(cycle_id)
    for table in ("experiments", "experiment_decisions"):
        wh.replace_partition(table, {"experiment_id": experiment_id}, rows_to_table(table, []))
    wh.replace_partition("promotions", {"cycle_id": experiment_id}, rows_to_table("promotions", []))


def _latest_started(wh: Warehouse, t: datetime, exclude: str | None = None) -> list[dict[str, Any]]:
    return wh.query(
        "SELECT * FROM experiments WHERE started_at <= $t AND experiment_id <> $x ORDER BY started_at DESC, experiment_id DESC",
        {"t": t, "x": exclude or ""},
    ).to_pylist()


def _experiment(row: dict[str, Any], share: float, status: str, step_started: datetime) -> Experiment:
    return Experiment(row["experiment_id"], row["cycle_id"], row["champion"], row["challenger"],
                      tuple(json.loads(row["ramp_json"])), row["started_at"], share, status, step_started)  # fmt: skip


def experiment_as_of(wh: Warehouse, experiment_id: str, t: datetime, *, inclusive: bool) -> Experiment | None:
    """The experiment's state at ``t`` from its decisions before ``t`` (or at ``t`` when
    ``inclusive``); None before it started. A newer experiment started by ``t`` supersedes it."""
    rows = wh.select("experiments", {"experiment_id": experiment_id}).to_pylist()
    if not rows or rows[0]["started_at"] > t:
        return None
    row = rows[0]
    op = "<=" if inclusive else "<"
    decisions = wh.query(
        f"SELECT * FROM experiment_decisions WHERE experiment_id = $e AND as_of {op} $t ORDER BY as_of",
        {"e": experiment_id, "t": t},
    ).to_pylist()
    share, status, step = json.loads(row["ramp_json"])[0], "running", row["started_at"]
    for d in decisions:
        if d["action"] == "ramp":
            step = d["as_of"]
        share, status = d["traffic_share"], d["status"]
    newer = wh.query(
        f"SELECT COUNT(*) AS n FROM experiments WHERE started_at {op} $t "
        "AND (started_at > $s OR (started_at = $s AND experiment_id > $e))",
        {"t": t, "s": row["started_at"], "e": experiment_id},
    ).to_pylist()[0]["n"]
    if status == "running" and newer:
        share, status = 0.0, "stopped"
    return _experiment(row, share, status, step)


def running_experiment(wh: Warehouse, t: datetime, *, inclusive: bool) -> Experiment | None:
    """The experiment running at ``t``, if any (at most one: the latest started)."""
    latest = _latest_started(wh, t)
    if not latest:
        return None
    state = experiment_as_of(wh, latest[0]["experiment_id"], t, inclusive=inclusive)
    return state if state is not None and state.status == "running" else None


def route(wh: Warehouse, t: datetime, salt: str) -> tuple[Experiment, Any] | None:
    """What the product serves from ``t``: the running experiment and its user-to-arm rule
    (``True``: the challenger answers), or None when only the champion serves."""
    exp = running_experiment(wh, t, inclusive=True)
    if exp is None:
        return None
    return exp, lambda user_id: exp.serves_challenger(user_id, salt)


# --- Online metrics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmMetrics:
    """One model's traffic in a period: how users reacted to its answers."""

    model_version: str
    n: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    toxic: int = 0
    errors: int = 0

    @property
    def positive(self) -> int:
        return sum(self.actions.get(a, 0) for a in POSITIVE_ACTIONS)

    def rate(self, what: str) -> float:
        """``acceptance`` (accepted + copied), ``toxic``, ``error`` or a user action's share."""
        if not self.n:
            return math.nan
        count = {"acceptance": self.positive, "toxic": self.toxic, "error": self.errors}.get(what)
        return (count if count is not None else self.actions.get(what, 0)) / self.n

    def as_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "n": self.n, "acceptance": _r(self.rate("acceptance")),
                **{f"{a}_rate": _r(self.rate(a)) for a in USER_ACTIONS},
                "toxic_share": _r(self.rate("toxic")), "error_share": _r(self.rate("error"))}  # fmt: skip


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def arm_metrics(wh: Warehouse, version: str, start: datetime, end: datetime, *, toxicity: Any, max_toxicity: float) -> ArmMetrics:
    """Rows ``version`` answered in ``[start, end)`` with a known user action. Malformed rows (no
    action, an unknown one) are left out rather than counted as anything: a broken logger must
    not look like unhappy users."""
    rows = wh.query(
        'SELECT user_action, response FROM production_logs WHERE model_version = $v AND "timestamp" >= $s '
        'AND "timestamp" < $e AND user_action IN (SELECT unnest($actions))',
        {"v": version, "s": start, "e": end, "actions": list(USER_ACTIONS)},
    ).to_pylist()
    actions: dict[str, int] = {}
    for r in rows:
        actions[r["user_action"]] = actions.get(r["user_action"], 0) + 1
    answers = [r["response"] or "" for r in rows]
    errors = sum(not a.strip() for a in answers)
    scores = toxicity.score([a for a in answers if a.strip()]) if answers else []
    return ArmMetrics(version, len(rows), actions, sum(s > max_toxicity for s in scores), errors)


def required_sample_size(baseline_rate: float, config: ExperimentConfig) -> int:
    """Rows per arm for a one-sided two-proportion test to detect a lift of
    ``min_detectable_effect`` over ``baseline_rate`` with ``power`` at ``alpha``."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    p0 = min(max(baseline_rate if not math.isnan(baseline_rate) else 0.5, 0.01), 0.99 - config.min_detectable_effect)
    effect = proportion_effectsize(p0 + config.min_detectable_effect, p0)
    n = NormalIndPower().solve_power(effect_size=effect, alpha=config.alpha, power=config.power, ratio=1.0, alternative="larger")
    return int(math.ceil(n))


def proportion_p_value(a: ArmMetrics, b: ArmMetrics, *, alternative: str) -> float:
    """Two-proportion z-test of b's acceptance against a's (``larger``: b is better)."""
    from statsmodels.stats.proportion import proportions_ztest

    if not a.n or not b.n:
        return math.nan
    if a.positive in (0, a.n) and b.positive in (0, b.n) and a.positive / a.n == b.positive / b.n:
        return 1.0  # no variance at all: nothing to tell apart
    _, p = proportions_ztest([b.positive, a.positive], [b.n, a.n], alternative=alternative)
    return float(p)


def guardrail_breaches(baseline: ArmMetrics, candidate: ArmMetrics, config: ExperimentConfig) -> list[str]:
    """Why ``candidate`` must come off live traffic now (empty: no breach). Judged only on
    ``guardrail_min_rows`` rows each; an acceptance drop must also be significant, so that noise
    on a small arm cannot roll back a good model."""
    out: list[str] = []
    if candidate.n < config.guardrail_min_rows:
        return out
    if candidate.rate("toxic") > config.max_toxic_share:
        out.append(f"toxic answers {candidate.rate('toxic'):.1%} > {config.max_toxic_share:.1%}")
    if candidate.rate("error") > config.max_error_share:
        out.append(f"error (empty answer) rate {candidate.rate('error'):.1%} > {config.max_error_share:.1%}")
    if baseline.n >= config.guardrail_min_rows:
        drop = baseline.rate("acceptance") - candidate.rate("acceptance")
        p = proportion_p_value(baseline, candidate, alternative="smaller")
        if drop > config.max_acceptance_drop and p < config.alpha:
            out.append(f"acceptance {candidate.rate('acceptance'):.1%} vs {baseline.rate('acceptance'):.1%} "
                       f"(drop {drop:.1%} > {config.max_acceptance_drop:.0%}, p={p:.3g})")  # fmt: skip
    return out


# --- Decisions ---------------------------------------------------------------------------------


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
