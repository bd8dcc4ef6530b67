"""The simulated product's calendar and its weeks of traffic, shared by the demo (each cycle
through Airflow, `flywheel.sim.demo`) and the in-process story (`flywheel.sim.loop`): when the
beta and the first product week are, who serves a week (the champion, and the challenger's arm
while an A/B test runs), and the operator's manual labels for the bootstrap."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flywheel.artefacts import ArtefactStore
from flywheel.config import FlywheelConfig
from flywheel.data.bootstrap import write_labels_file
from flywheel.evaluation import experiment
from flywheel.model import registry
from flywheel.model.inference import answer_fn, load_model
from flywheel.sim.traffic import AnswerFn, Arm, sample_task, simulate_traffic
from flywheel.warehouse import Warehouse

FIRST_WEEK = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: the bootstrap runs on it
BETA_WEEKS = 2
# The beta is a small group of early users: this share of the product's weekly volume.
BETA_SHARE = 0.15


# The demo's A/B monitor runs every two days of product time while there is something to judge
# (hourly in production); the week's last day is served after the last run.
MONITOR_DAYS = (2, 2, 2, 1)


def serve_week(
    config: FlywheelConfig,
    wh: Warehouse,
    week_start: datetime,
    *,
    days: float = 7,
    answer_for: Callable[[str], AnswerFn] | None = None,
    poison_rate: float | None = None,
    truth: dict[str, str] | None = None,
    volume: float = 1.0,
) -> dict[str, object]:
    """The product's week (or ``days`` of it): the champion in force answers, simulated users
    react, logs land. While an A/B experiment runs, the users its hash buckets put in the
    challenger's arm are served by the challenger, and each row names the version that answered.
    ``answer_for`` maps a version to its answer function (default: load the model); ``truth``
    collects each request's right answer, for the simulated reviewers; ``volume`` scales the
    week's traffic (the beta's few users)."""
    answer_for = answer_for or _model_answers(config, wh)
    champion = registry.champion_as_of(wh, week_start + timedelta(microseconds=1))
    routing = experiment.route(wh, week_start, config.experiment.bucket_salt)
    arm = Arm(routing[0].challenger, answer_for(routing[0].challenger), routing[1]) if routing else None
    logs = simulate_traffic(
        week_start,
        answer_for(champion),
        model_version=champion,
        n_requests=round(config.simulate.requests_per_week * volume * days / 7),
        seed=config.simulate.seed,
        malformed_rate=config.simulate.malformed_rate,
        adversarial_rate=config.simulate.adversarial_rate,
        pii_rate=config.simulate.pii_rate,
        toxic_rate=config.simulate.toxic_rate,
        truth=truth,
        poison_rate=config.simulate.poison_rate if poison_rate is None else poison_rate,
        days=days,
        challenger=arm,
    )
    wh.merge("production_logs", logs)
    served = {"week": f"{week_start:%Y-%m-%d %H:%M}", "requests": logs.num_rows, "served_by": champion}
    if routing:
        served["ab"] = f"{routing[0].experiment_id}: {routing[0].challenger} on {routing[0].traffic_share:.0%} of users"
    return served


def _model_answers(config: FlywheelConfig, wh: Warehouse) -> Callable[[str], AnswerFn]:
    """Answer functions of registered versions, each model loaded once."""
    loaded: dict[str, AnswerFn] = {}
    store = ArtefactStore(config)  # adapters kept in a bucket are fetched once, then cached

    def answers(version: str) -> AnswerFn:
        if version not in loaded:
            mv = registry.get_model(wh, version)
            model = load_model(mv.base_model, mv.adapter_path, version=mv.version, store=store)
            loaded[version] = answer_fn(model, max_new_tokens=config.evaluation.max_new_tokens)
        return loaded[version]

    return answers


def write_demo_labels(path: Path, *, n: int = 60, seed: int = 5) -> Path:
    """An operator's manual labels: right answers to product-like requests, plus two broken
    lines (not JSON; no prompt) that the bootstrap must quarantine, not drop or crash on."""
    rng = random.Random(f"labels:{seed}")
    tasks = [sample_task(rng) for _ in range(n)]
    rows = [{"prompt": t.prompt, "response": t.answer, "task_type": t.task_type, "context": t.context,
             "labeler": f"annotator-{i % 3}"} for i, t in enumerate(tasks)]  # fmt: skip
    rows.append({"response": "42", "task_type": "arithmetic", "labeler": "annotator-0"})
    write_labels_file(path, rows)
    with path.open("a") as f:
        f.write('{"prompt": "What is 2 + 2?", "response": "4", \n')
    return path
