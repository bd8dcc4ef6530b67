"""The flywheel learns: a test that fails when learning breaks.

The demo's simulated product on a fixed seed, run in process (`flywheel.sim.loop`: the DAGs'
stages without Airflow, the A/B leg off so that the offline gate decides), through the bootstrap
and one weekly cycle. Measured in two runs of the code that added this test (seed 7; training
on CPU threads is not bit-for-bit repeatable): the base model answers 0.454-0.479 of the golden
set, the bootstrap's model 0.629-0.646 (+0.167 to +0.175), and the weekly challenger, continued
from the bootstrap's adapter on the next window, 0.679-0.700 (+0.033 to +0.071). The
bounds below sit well inside those figures, so noise does not fail the test, while a training
path that stops learning (no gain from the bootstrap) or a weekly cycle that throws away what
the bootstrap learnt (a challenger trained from the bare base: about the base's score) does.

Broken on purpose once, to see it fail: with the correction target replaced by the logged
response (`flywheel.data.dataset.to_messages` training on the answer the user corrected), the
bootstrap reached 0.463 from 0.454 (+0.008) and the test failed on MIN_BOOTSTRAP_GAIN. With the
loss masking removed (`flywheel.model.training.tokenize_chat` labelling the prompt's tokens too),
the bootstrap reached 0.508 from 0.454 (+0.054) and the test failed on MIN_BOOTSTRAP_GAIN. With
the adapter chaining removed (`train_lora` ignoring ``parent_adapter``), this test still passed
(bootstrap 0.629, weekly challenger 0.696 from the bare base: one week of data lifts the tiny
base as far as the bootstrap did), so the chaining has its own test, which did fail:
`tests/unit/test_training.py::test_a_child_adapter_starts_from_its_parents_weights`.
"""

from __future__ import annotations

import pytest

from flywheel.config import load_config
from flywheel.sim.demo import demo_config
from flywheel.sim.loop import run_flywheel

pytestmark = pytest.mark.slow

MIN_BOOTSTRAP_GAIN = 0.08  # measured +0.167, +0.175
MAX_WEEKLY_LOSS = 0.05  # measured +0.033, +0.071: the weekly challenger keeps what the bootstrap learnt


def test_golden_accuracy_rises_at_the_bootstrap_and_a_weekly_cycle_keeps_it(tmp_path):
    config = load_config(demo_config(tmp_path)).model_copy(update={"home": tmp_path})
    config = config.with_overrides({"experiment.enabled": False, "simulate.seed": 7})
    run = run_flywheel(config, cycles=1)
    boot, weekly = run.cycles
    print([(r["cycle_id"], r["champion_accuracy"], r["challenger_accuracy"], r["promoted"]) for r in run.cycles])
    assert boot["promoted"], boot
    assert boot["challenger_accuracy"] - boot["champion_accuracy"] >= MIN_BOOTSTRAP_GAIN, boot
    assert weekly["champion_before"] == boot["challenger"], weekly
    assert weekly["challenger_accuracy"] >= boot["challenger_accuracy"] - MAX_WEEKLY_LOSS, weekly
    # The weekly challenger continued from the bootstrap's adapter (the adapters chain).
    parent = run.wh.query("SELECT parent_version FROM models WHERE version = $v", {"v": weekly["challenger"]}).to_pylist()
    assert parent == [{"parent_version": boot["challenger"]}], parent
