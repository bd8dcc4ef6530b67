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
from datetime import UTC, datetime
from typing import Any

from flywheel.config import USER_ACTIONS, ExperimentConfig
from flywheel.errors import FlywheelError
from flywheel.tables import rows_to_table
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
    rows = wh.query_logs(
        'SELECT user_action, response FROM production_logs WHERE model_version = $v AND "timestamp" >= $s '
        'AND "timestamp" < $e AND list_contains($actions, user_action)',
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
