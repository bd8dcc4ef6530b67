"""Stagnation diagnosis: a flywheel without real gains for N cycles is named stagnant, with the
causes the metrics point to."""

from __future__ import annotations

from flywheel.config import VelocityConfig
from flywheel.metrics import diagnose_stagnation

CFG = VelocityConfig(stagnation_min_delta=0.02, stagnation_cycles=3, min_examples_per_day=20, min_pass_rate=0.1)
MIX = {"arithmetic": 0.3, "uppercase": 0.2, "reverse": 0.2, "extraction": 0.25, "letter_count": 0.05}


def cycle(delta=0.0, per_day=40.0, pass_rate=0.2, mix=None, per_task=None):
    return {"quality_delta": delta, "examples_per_day": per_day, "filter_pass_rate": pass_rate,
            "task_mix": mix or MIX, "champion_per_task": per_task or {"arithmetic": 0.5}}  # fmt: skip


def test_healthy_gains_are_not_stagnation():
    d = diagnose_stagnation([cycle(0.01), cycle(0.0), cycle(0.03)], CFG)
    assert not d.stagnant and d.cycles_without_gain == 0


def test_stagnant_after_n_cycles_without_a_real_gain():
    history = [cycle(0.05), cycle(0.01), cycle(None), cycle(-0.02)]
    d = diagnose_stagnation(history, CFG)
    assert d.stagnant and d.cycles_without_gain == 3
    assert d.causes == ["no cause visible in the metrics: volume, pass rate and mix look healthy; check the model and recipe"]
    assert not diagnose_stagnation(history[:-1], CFG).stagnant  # only two cycles without a gain


def test_causes_are_named_from_the_metrics():
    shifted = {"arithmetic": 0.9, "uppercase": 0.1}
    history = [cycle(0.0), cycle(0.0, per_day=5, pass_rate=0.05), cycle(0.0, per_day=5, pass_rate=0.05, mix=shifted,
               per_task={"reverse": 0.97, "arithmetic": 0.4})]  # fmt: skip
    d = diagnose_stagnation(history, CFG)
    text = d.describe()
    assert d.stagnant and len(d.causes) == 4, d.causes
    assert "too little volume: 5.0 examples/day" in text
    assert "low filter pass rate: 5.0%" in text
    assert "saturated task types (champion >= 95%): reverse" in text
    assert "drift in the traffic mix" in text
