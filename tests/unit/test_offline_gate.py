"""The offline gate: scorers, paired bootstrap intervals, the slice rule, golden-set checks."""

from __future__ import annotations

import pytest

from flywheel.config import EvaluationConfig
from flywheel.errors import GateError
from flywheel.evaluation.offline import (
    ExactMatchScorer,
    GoldenSetError,
    JudgeScorer,
    TokenF1Scorer,
    bootstrap_interval,
    check_decontaminated,
    check_golden_unchanged,
    compare_offline,
    load_golden_set,
    score_answers,
)
from flywheel.sim import traffic
from flywheel.sim.traffic import TASK_TYPES, golden_set
from flywheel.tasks import Task


def _answers(tasks, right_types=(), right_every=0, oracle=None):
    """Right answers on the named task types (and on every k-th item), wrong elsewhere."""
    out = []
    for i, t in enumerate(tasks):
        right = t.task_type in right_types or (right_every and i % right_every == 0)
        out.append(t.answer if right else "no idea, sorry")
    return out


TASKS = golden_set(240, 20260101)


def test_scorers():
    t = Task("extraction", "who?", "Dana Smith")
    assert ExactMatchScorer().score(t, " Dana   Smith ") == 1.0 and ExactMatchScorer().score(t, "Dana") == 0.0
    assert TokenF1Scorer().score(t, "Dana") == pytest.approx(2 / 3)
    assert TokenF1Scorer().score(t, "dana smith") == 1.0 and TokenF1Scorer().score(t, "") == 0.0
    judge = JudgeScorer(lambda prompt, ref, answer: 0.5 if ref.split()[0] in answer else 0.0)
    assert judge.score(t, "Dana?") == 0.5
    with pytest.raises(ValueError, match="grades must be in"):
        JudgeScorer(lambda *a: 7).score(t, "x")


def test_score_answers_keeps_one_score_per_item_and_slices():
    result = score_answers(TASKS, _answers(TASKS, right_types=("arithmetic",)))
    assert len(result.item_scores) == len(TASKS)
    assert result.per_task["arithmetic"]["accuracy"] == 1.0 and result.per_task["reverse"]["accuracy"] == 0.0
    assert result.accuracy == pytest.approx(result.per_task["arithmetic"]["n"] / len(TASKS))
    f1 = score_answers([Task("x", "p", "a b")], ["a"], TokenF1Scorer())
    assert f1.scorer == "token_f1" and f1.accuracy == pytest.approx(2 / 3)


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    scores = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_interval(scores, samples=2000, confidence=0.95, seed=1)
    assert lo < 0.3 < hi and 0.18 < lo and hi < 0.42
    assert bootstrap_interval(scores, samples=2000, confidence=0.95, seed=1) == (lo, hi)
    # Paired: the same items answered the same way give a zero-width interval of the difference.
    assert bootstrap_interval(scores, scores, samples=500, confidence=0.95, seed=1) == (0.0, 0.0)


def _compare(champ_answers, chall_answers, tasks=TASKS, **cfg):
    config = EvaluationConfig(**cfg)
    return compare_offline(tasks, score_answers(tasks, champ_answers), score_answers(tasks, chall_answers),
                           champion_version="a", challenger_version="b", config=config)  # fmt: skip


def test_a_better_challenger_passes_with_an_interval_above_zero():
    gate = _compare(_answers(TASKS, right_every=5), _answers(TASKS, right_types=("arithmetic",), right_every=5))
    assert gate.passed and gate.delta > 0.1
    assert 0 < gate.delta_interval[0] < gate.delta < gate.delta_interval[1]
    assert gate.challenger_interval[0] < gate.challenger_accuracy < gate.challenger_interval[1]
    assert {s.task_type for s in gate.slices} == set(TASK_TYPES) and not any(s.regressed for s in gate.slices)
    assert gate.reason.startswith("offline gate passed")


def test_a_worse_challenger_fails():
    gate = _compare(_answers(TASKS, right_types=("arithmetic",)), _answers(TASKS, right_every=7))
    assert not gate.passed and gate.delta < 0 and gate.delta_interval[1] < 0
    assert "offline gate failed" in gate.reason


def test_a_gain_that_regresses_one_slice_fails_on_the_slice():
    # Much better overall (reverse, uppercase, extraction learnt) but arithmetic forgotten.
    gate = _compare(_answers(TASKS, right_types=("arithmetic",)),
                    _answers(TASKS, right_types=("reverse", "uppercase", "extraction")))  # fmt: skip
    assert gate.delta > 0 and not gate.passed
    (regressed,) = [s for s in gate.slices if s.regressed]
    assert regressed.task_type == "arithmetic" and regressed.delta == -1.0
    assert "slice regression: arithmetic" in gate.reason


def test_one_item_of_noise_on_a_small_slice_is_tolerated():
    tasks = golden_set(120, 20260101)  # the rare slice gets its floor, an eighth: 15 items
    champ = _answers(tasks, right_types=("letter_count",))
    first_letter = next(i for i, t in enumerate(tasks) if t.task_type == "letter_count")
    chall = _answers(tasks, right_types=("letter_count", "arithmetic"))
    chall[first_letter] = "wrong"
    gate = _compare(champ, chall, tasks)
    small = next(s for s in gate.slices if s.task_type == "letter_count")
    assert small.n < 20 and small.delta == pytest.approx(-1 / small.n) and not small.regressed
    assert gate.passed


def test_require_significant_blocks_a_gain_whose_interval_includes_zero():
    champ = _answers(TASKS, right_every=5)
    chall = list(champ)
    k = next(i for i, a in enumerate(champ) if a == "no idea, sorry")
    chall[k] = TASKS[k].answer  # one more item right
    assert _compare(champ, chall).passed
    gate = _compare(champ, chall, require_significant=True)
    assert not gate.passed and "includes 0" in gate.reason


def test_golden_set_must_cover_every_task_type_and_stay_unchanged(tmp_path):
    with pytest.raises(GoldenSetError, match="letter_count"):
        load_golden_set(tmp_path, templates=traffic, n=3, seed=1)
    golden = load_golden_set(tmp_path, templates=traffic, n=240, seed=20260101)
    check_golden_unchanged(golden, golden.content_hash)
    check_golden_unchanged(golden, None)
    with pytest.raises(GoldenSetError, match="changed since it was registered"):
        check_golden_unchanged(golden, "0" * 64)


def test_decontamination_is_verified_on_the_trained_set():
    from flywheel.config import FiltersConfig
    from flywheel.data.dataset import user_message
    from flywheel.filters import golden_index

    inputs = [user_message(t.prompt, t.context) for t in TASKS]
    index = golden_index(FiltersConfig(), inputs)
    check_decontaminated(["What is the capital of a country that does not exist?"], ["r1"], index)
    with pytest.raises(GateError, match="r2 \\(exact copy of golden item 3"):
        check_decontaminated(["fine text here", inputs[3]], ["r1", "r2"], index)
