"""Golden-set evaluation: champion and challenger answer the same fixed tasks, scored the same way.

Unless a curated file is set (`flywheel.evaluation.golden`), the golden set is drawn from the
product's task templates (`flywheel.tasks`; the simulator's by default) from a fixed seed and frozen to a JSONL file in the
artefact store on first use; its hash is recorded with every evaluation, so two accuracies are
only ever compared on the same items. It must cover every task type (a slice that is missing
cannot be gated), it never changes once registered (`check_golden_unchanged`), and no training
set may hold a copy of one of its inputs (`check_decontaminated`, run on every cycle).

Offline gate (`compare_offline`): the challenger must improve overall and must not regress any
task-type slice beyond a tolerance. Intervals are paired bootstrap intervals over golden items
(seeded, so a rerun prints the same interval): both models answered the same items, so the
spread of the difference is much narrower than that of either accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from flywheel.errors import GateError
from flywheel.model.registry import decide_promotion
from flywheel.tasks import Task, TaskTemplates, is_correct


class GoldenSetError(GateError):
    """The golden set is unusable: a task type is missing, or a registered version changed."""


@dataclass(frozen=True)
class GoldenSet:
    tasks: list[Task]
    path: Path
    content_hash: str


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    n_items: int
    n_correct: int
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    # One score in [0, 1] per golden item, in the golden set's order: what the bootstrap resamples.
    item_scores: tuple[float, ...] = ()
    scorer: str = "exact_match"


def load_golden_set(
    root: Path, *, templates: TaskTemplates, n: int, seed: int, required_task_types: Sequence[str] | None = None
) -> GoldenSet:
    """The templates' golden set of ``n`` tasks from ``seed``, frozen to a file on first use; it must
    cover ``required_task_types`` (default: every task type of the templates)."""
    path = root / "golden" / f"golden-{seed}-{n}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(t.__dict__, sort_keys=True) + "\n" for t in templates.golden_set(n, seed)))
        tmp.replace(path)
    raw = path.read_bytes()
    tasks = [Task(**json.loads(line)) for line in raw.decode().splitlines() if line.strip()]
    required = templates.TASK_TYPES if required_task_types is None else required_task_types
    missing = sorted(set(required) - {t.task_type for t in tasks})
    if missing:
        raise GoldenSetError(
            f"golden set {path} has no item of task type(s) {missing}: every slice must be covered to be gated; "
            "raise evaluation.golden_set_size or change evaluation.golden_seed"
        )
    return GoldenSet(tasks, path, hashlib.sha256(raw).hexdigest())


def check_golden_unchanged(golden: GoldenSet, registered_hash: str | None) -> None:
    """A golden set is immutable once registered: a new version gets a new file (a new size or
    seed), never an edit in place, or two cycles' accuracies would not be comparable."""
    if registered_hash is not None and registered_hash != golden.content_hash:
        raise GoldenSetError(
            f"golden set {golden.path} changed since it was registered: hash {golden.content_hash[:12]} != "
            f"{registered_hash[:12]}; restore it or register a new version under a new seed or size"
        )


def check_decontaminated(user_messages: Sequence[str], request_ids: Sequence[str], golden_index: Any) -> None:
    """No training example may be an exact or near copy of a golden input. The filters and the
    training-set gate enforce it before training; this re-checks the set the challenger was
    actually trained on, on every cycle, so a gap upstream cannot inflate a golden score."""
    hasher = golden_index.hasher
    matches = golden_index.check(hasher.fingerprint(list(user_messages)), list(request_ids), add_unique=False)
    leaks = [(rid, m) for rid, m in zip(request_ids, matches, strict=True) if m is not None]
    if leaks:
        shown = ", ".join(f"{rid} ({m.kind} copy of {m.label}, similarity {m.similarity:.2f})" for rid, m in leaks[:5])
        raise GateError(f"{len(leaks)} training example(s) duplicate golden-set inputs: {shown}")


# --- Scorers ---------------------------------------------------------------------------------


class Scorer(Protocol):
    """Scores one answer against a golden item, in [0, 1]. Exact match for the simulator's
    checkable tasks; a reference-based or LLM-as-judge scorer for open-ended ones."""

    name: str

    def score(self, task: Task, answer: str) -> float: ...


class ExactMatchScorer:
    """The simulator's checker: right or wrong, after whitespace normalisation."""

    name = "exact_match"

    def score(self, task: Task, answer: str) -> float:
        return 1.0 if is_correct(answer, task.answer) else 0.0


class TokenF1Scorer:
    """Reference-based: token-level F1 between the answer and the reference (SQuAD-style), for
    tasks whose right answers may be phrased differently."""

    name = "token_f1"

    def score(self, task: Task, answer: str) -> float:
        pred, ref = answer.lower().split(), task.answer.lower().split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref or not common:
            return float(pred == ref)
        precision, recall = common / len(pred), common / len(ref)
        return 2 * precision * recall / (precision + recall)


class JudgeScorer:
    """LLM-as-judge: ``judge(prompt, reference, answer)`` returns a grade in [0, 1] (e.g. a
    model asked to grade the answer against the reference). Grades outside [0, 1] or not
    numbers are an error, not a silent clamp: a broken judge must not pass a challenger."""

    def __init__(self, judge: Callable[[str, str, str], float], *, name: str = "llm_judge") -> None:
        self.judge = judge
        self.name = name

    def score(self, task: Task, answer: str) -> float:
        grade = self.judge(task.prompt, task.answer, answer)
        if not isinstance(grade, int | float) or isinstance(grade, bool) or not 0.0 <= float(grade) <= 1.0:
            raise ValueError(f"judge {self.name} graded {grade!r} for prompt {task.prompt[:60]!r}: grades must be in [0, 1]")
        return float(grade)


def score_answers(tasks: Sequence[Task], answers: Sequence[str], scorer: Scorer | None = None) -> EvalResult:
    if len(tasks) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(tasks)} golden tasks")
    scorer = scorer or ExactMatchScorer()
    scores = tuple(scorer.score(t, a) for t, a in zip(tasks, answers, strict=True))
    total, right = Counter[str](), Counter[str]()
    summed: dict[str, float] = {}
    for task, s in zip(tasks, scores, strict=True):
        total[task.task_type] += 1
        right[task.task_type] += s >= 0.5
        summed[task.task_type] = summed.get(task.task_type, 0.0) + s
    per_task = {t: {"n": total[t], "correct": right[t], "accuracy": summed[t] / total[t]} for t in sorted(total)}
    return EvalResult(sum(scores) / len(tasks) if tasks else 0.0, len(tasks), sum(right.values()), per_task, scores, scorer.name)


def evaluate_answer_fn(
    answer: Callable[[Sequence[tuple[str, str | None]]], list[str]], golden: GoldenSet, scorer: Scorer | None = None
) -> EvalResult:
    return score_answers(golden.tasks, answer([(t.prompt, t.context) for t in golden.tasks]), scorer)


# --- Bootstrap intervals and the offline gate --------------------------------------------------


def bootstrap_interval(
    scores: Sequence[float], baseline: Sequence[float] | None = None, *, samples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score, or, with ``baseline`` (the other model's
    scores on the same items), of the paired mean difference. Items are resampled, not models."""
    x = np.asarray(scores, dtype=float)
    if baseline is not None:
        x = x - np.asarray(baseline, dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return (float(lo), float(hi))


@dataclass(frozen=True)
class SliceComparison:
    task_type: str
    n: int
    champion: float
    challenger: float
    delta: float
    delta_low: float
    delta_high: float
    regressed: bool


@dataclass(frozen=True)
class OfflineComparison:
    champion_version: str
    challenger_version: str
    champion_accuracy: float
    challenger_accuracy: float
    champion_interval: tuple[float, float]
    challenger_interval: tuple[float, float]
    delta: float
    delta_interval: tuple[float, float]
    slices: list[SliceComparison]
    passed: bool
    reason: str

    def slices_json(self) -> str:
        return json.dumps([s.__dict__ for s in self.slices], sort_keys=True)


def compare_offline(
    tasks: Sequence[Task],
    champion: EvalResult,
    challenger: EvalResult,
    *,
    champion_version: str,
    challenger_version: str,
    config: Any,  # EvaluationConfig
) -> OfflineComparison:
    """The offline gate. Overall: the challenger beats the champion by more than
    ``min_improvement`` (and, with ``require_significant``, the paired interval of the difference
    lies above zero). Slices: no task type loses more than ``max_slice_regression``; on a slice
    so small that one item weighs more than that, one item's loss is tolerated, since a gate on
    a single item's noise would block every challenger."""
    if len(champion.item_scores) != len(tasks) or len(challenger.item_scores) != len(tasks):
        raise ValueError("both results need one score per golden item to be compared")
    boot = {"samples": config.bootstrap_samples, "confidence": config.confidence, "seed": config.bootstrap_seed}
    a, b = champion.item_scores, challenger.item_scores
    delta = challenger.accuracy - champion.accuracy
    delta_ci = bootstrap_interval(b, a, **boot)
    slices = []
    for task_type in sorted({t.task_type for t in tasks}):
        idx = [i for i, t in enumerate(tasks) if t.task_type == task_type]
        sa, sb = [a[i] for i in idx], [b[i] for i in idx]
        ca, cb = sum(sa) / len(idx), sum(sb) / len(idx)
        tolerance = max(config.max_slice_regression, 1 / len(idx))
        lo, hi = bootstrap_interval(sb, sa, **boot)
        regressed = cb - ca < -tolerance and not math.isclose(cb - ca, -tolerance, abs_tol=1e-12)
        slices.append(SliceComparison(task_type, len(idx), ca, cb, cb - ca, lo, hi, regressed))
    overall = decide_promotion(champion.accuracy, challenger.accuracy, min_improvement=config.min_improvement)
    problems = [] if overall.promoted else [overall.reason]
    if config.require_significant and delta_ci[0] <= 0:
        problems.append(f"the {config.confidence:.0%} interval of the gain [{delta_ci[0]:+.3f}, {delta_ci[1]:+.3f}] includes 0")
    regressed = [s for s in slices if s.regressed]
    if regressed:
        problems.append("slice regression: " + ", ".join(
            f"{s.task_type} {s.champion:.3f} -> {s.challenger:.3f} ({s.delta:+.3f}, n={s.n})" for s in regressed
        ) + f" beyond the tolerance {config.max_slice_regression}")  # fmt: skip
    ci = f"[{delta_ci[0]:+.3f}, {delta_ci[1]:+.3f}]"
    reason = (
        f"offline gate passed: {overall.reason}, gain {ci}, no slice regressed"
        if not problems
        else "offline gate failed: " + "; ".join(problems) + f" (gain {delta:+.3f} {ci})"
    )
    return OfflineComparison(
        champion_version, challenger_version, champion.accuracy, challenger.accuracy,
        bootstrap_interval(a, **boot), bootstrap_interval(b, **boot), delta, delta_ci, slices, not problems, reason,
    )  # fmt: skip


def format_offline_table(rows: Sequence[dict[str, Any]]) -> str:
    """Offline comparisons (rows of the ``offline_comparisons`` table) as the demo prints them."""
    header = f"{'cycle':<32} {'champion [95% CI]':>22} {'challenger [95% CI]':>22} {'gain [95% CI]':>24}  gate"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['cycle_id']:<32} {r['champion_accuracy']:>6.3f} [{r['champion_low']:.3f}, {r['champion_high']:.3f}] "
            f"{r['challenger_accuracy']:>6.3f} [{r['challenger_low']:.3f}, {r['challenger_high']:.3f}] "
            f"{r['delta']:>+7.3f} [{r['delta_low']:+.3f}, {r['delta_high']:+.3f}]  "
            + gate_summary(r)
        )  # fmt: skip
    return "\n".join(lines)


def gate_summary(row: dict[str, Any]) -> str:
    """An `offline_comparisons` row's verdict in a few words: passed, or what failed it."""
    if row["passed"]:
        return "passed"
    regressed = [f"{s['task_type']} {s['delta']:+.2f}" for s in json.loads(row["slices_json"]) if s["regressed"]]
    return "failed: " + ("slice regression " + ", ".join(regressed) if regressed else "no gain")
