"""New data vs old data: the twin trained without the window's newest days, the comparison on
the golden set, and a window that hurt flagged and kept out of this and later cycles.

The stages run on a DuckDB warehouse with no model: training is the one step replaced here (the
twin's registration is what `train_twin` hands on), and the golden-set scores are set item
by item, so that each verdict is known in advance. The real twin, trained and evaluated through
Airflow, is in tests/integration/test_weekly_cycle.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from flywheel.config import FlywheelConfig
from flywheel.cycle import CycleSpec, InsufficientDataError, make_cycle
from flywheel.cycle import train as cycle_train
from flywheel.cycle.dataset import build_dataset, flagged_windows
from flywheel.cycle.extract import extract_window
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.promote import promote_if_better
from flywheel.cycle.record import record_cycle
from flywheel.cycle.train import train_twin
from flywheel.cycle.validate import validate_rows
from flywheel.data.dataset import build_chat_dataset, load_chat_dataset, subset_chat_dataset
from flywheel.evaluation.offline import load_golden_set, score_answers
from flywheel.model import registry
from flywheel.ops.report import format_new_data_table, new_data_section
from flywheel.sim import traffic
from flywheel.sim.traffic import simulate_traffic
from flywheel.tables import rows_to_table
from tests.helpers.simulated_product import SIMULATED_PRODUCT

BASE = "some-base-path"
END = datetime(2026, 3, 2, tzinfo=UTC)  # 14-day window [2026-02-02, 2026-02-16), newest week from 02-09
W_START, NEWEST, W_END = datetime(2026, 2, 2, tzinfo=UTC), datetime(2026, 2, 9, tzinfo=UTC), datetime(2026, 2, 16, tzinfo=UTC)


def _config(tmp_path, **overrides) -> FlywheelConfig:
    return FlywheelConfig(home=tmp_path).with_overrides({
        **SIMULATED_PRODUCT, "training.min_examples": 5, "filters.keep_fraction": 1.0, "review.enabled": False, "experiment.enabled": False,
        "extract.window_days": 14, "evaluation.compare_new_data": True, "evaluation.golden_set_size": 60, **overrides})  # fmt: skip


@pytest.fixture
def world(tmp_path, wh, answer_fns):
    for start, seed in ((W_START, 1), (NEWEST, 2), (W_END, 3)):  # the window's two weeks, and the week after
        wh.merge("production_logs", simulate_traffic(start, answer_fns["half"], model_version="base:x", n_requests=60,
                                                     seed=seed, malformed_rate=0.0))  # fmt: skip
    registry.ensure_bootstrap_champion(wh, BASE)
    return tmp_path, wh


def _cycle(tmp_path, end: datetime = END, **overrides) -> CycleSpec:
    return make_cycle("flywheel_weekly", data_interval_end=end, logical_date=end, config=_config(tmp_path, **overrides))


def _data_stages(cycle, wh) -> dict:
    for stage in (extract_window, validate_rows, filter_candidates):
        stage(cycle, wh)
    return build_dataset(cycle, wh)


def _fake_training(monkeypatch) -> list[dict]:
    """`_train_version` without the LoRA run: it registers the version on the dataset it was
    given, as the real one does (the real one is exercised through Airflow)."""
    calls: list[dict] = []

    def train(cycle, wh, *, version, dataset, output_dir, window_end=None):
        calls.append({"version": version, "dataset": dataset, "output_dir": output_dir, "window_end": window_end})
        registry.register_model(wh, registry.ModelVersion(
            version=version, base_model=BASE, adapter_path=str(output_dir), parent_version=registry.base_version_name(BASE),
            cycle_id=cycle.cycle_id, dataset_id=dataset["dataset_id"], dataset_hash=dataset["content_hash"]))  # fmt: skip
        return {"version": version}

    monkeypatch.setattr(cycle_train, "_train_version", train)
    return calls


def _evaluations(cycle, wh, right_every: dict[str, int]) -> None:
    """Evaluation rows as `evaluate_golden_set` writes them: role -> right on every k-th golden item."""
    ev = cycle.config.evaluation
    golden = load_golden_set(cycle.config.artefacts_root, templates=traffic, n=ev.golden_set_size, seed=ev.golden_seed)
    versions = {"champion": registry.base_version_name(BASE), "challenger": cycle.challenger_version, "twin": cycle.twin_version}
    for role, every in right_every.items():
        r = score_answers(golden.tasks, [t.answer if i % every == 0 else "?" for i, t in enumerate(golden.tasks)])
        wh.merge("evaluations", rows_to_table("evaluations", [{
            "cycle_id": cycle.cycle_id, "model_version": versions[role], "role": role, "accuracy": r.accuracy,
            "n_items": r.n_items, "n_correct": r.n_correct, "per_task_json": json.dumps(r.per_task),
            "golden_hash": golden.content_hash, "evaluated_at": END, "item_scores_json": json.dumps(r.item_scores)}]))  # fmt: skip


def _newest_in_dataset(cycle, wh) -> set[str]:
    data = load_chat_dataset(cycle.dataset_dir)
    ids = {r["request_id"] for split in ("train", "validation") for r in data[split]}
    ts = {r["request_id"]: r["timestamp"] for r in wh.select("production_logs").to_pylist()}
    return {i for i in ids if NEWEST <= ts[i] < W_END}


def test_subset_keeps_splits_weights_and_hashes_like_a_fresh_build(tmp_path, make_log_row):
    from flywheel.records import candidate_from_row

    rows = [make_log_row(f"r{i:02d}", W_START + timedelta(hours=i), prompt=f"Please rewrite the word garden number {i} "
                         "in capital letters for the heading of my school poster, I want it to stand out.")
            for i in range(30)]  # fmt: skip
    cands = [candidate_from_row(r) for r in rows]
    gold = {"r03": "GARDEN!", "r04": None}
    full = build_chat_dataset(cands, tmp_path / "full", val_fraction=0.2, gold=gold, gold_weight=3.0, curriculum=True)
    drop = {f"r{i:02d}" for i in range(0, 30, 3)}
    twin = subset_chat_dataset(full.path, tmp_path / "twin", drop=drop)
    kept = [c for c in cands if c.request_id not in drop]
    fresh = build_chat_dataset(kept, tmp_path / "fresh", val_fraction=0.2, gold=gold, gold_weight=3.0, curriculum=True)
    assert twin.content_hash == fresh.content_hash != full.content_hash
    assert twin.n_train + twin.n_val == len(kept) and twin.n_train + twin.n_val + len(drop) == full.n_train + full.n_val
    src, sub = load_chat_dataset(full.path), load_chat_dataset(twin.path)
    for split in ("train", "validation"):  # same split and order, less the dropped rows
        assert [r["request_id"] for r in sub[split]] == [r["request_id"] for r in src[split] if r["request_id"] not in drop]
    weights = {r["request_id"]: (r["weight"], r["messages"][-1]["content"]) for r in sub["train"]}
    assert weights.get("r04", (3.0,))[0] == 3.0 and all(w == 1.0 for k, (w, _) in weights.items() if k != "r04")
    assert json.loads((twin.path / "flywheel_manifest.json").read_text())["curriculum"] is True


def test_twin_is_trained_without_the_newest_window(world, monkeypatch):
    tmp_path, wh = world
    calls = _fake_training(monkeypatch)
    cycle = _cycle(tmp_path)
    assert (cycle.newest_window.start, cycle.newest_window.end) == (NEWEST, W_END)
    full = _data_stages(cycle, wh)
    out = train_twin(cycle, wh)
    (call,) = calls
    newest = _newest_in_dataset(cycle, wh)
    assert newest and out["n_newest"] == len(newest)
    assert call["version"] == out["version"] == cycle.twin_version and call["window_end"] == NEWEST
    twin_rows = load_chat_dataset(call["dataset"]["path"])
    twin_ids = {r["request_id"] for split in ("train", "validation") for r in twin_rows[split]}
    assert not twin_ids & newest and len(twin_ids) == full["n_train"] + full["n_val"] - len(newest)
    (ds,) = wh.select("datasets", {"dataset_id": cycle.twin_version}).to_pylist()
    assert ds["cycle_id"] == cycle.cycle_id and ds["window_end"] == NEWEST
    # The challenger's own dataset row is untouched, and a rerun replaces the twin's.
    assert wh.select("datasets", {"dataset_id": cycle.cycle_id}).to_pylist()[0]["content_hash"] == full["content_hash"]
    train_twin(cycle, wh)
    assert wh.count("datasets", {"dataset_id": cycle.twin_version}) == 1


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"evaluation.compare_new_data": False}, "compare_new_data is off"),
        ({"extract.window_days": 7}, "no longer than evaluation.newest_window_days"),
        ({"training.min_examples": 1000}, None),  # build_dataset itself refuses: no challenger, no twin
    ],
)
def test_no_twin_where_there_is_nothing_to_compare(world, monkeypatch, overrides, why):
    tmp_path, wh = world
    calls = _fake_training(monkeypatch)
    cycle = _cycle(tmp_path, **overrides)
    if why is None:
        with pytest.raises(InsufficientDataError):
            _data_stages(cycle, wh)
        return
    _data_stages(cycle, wh)
    out = train_twin(cycle, wh)
    assert why in out["skipped"] and not calls and wh.count("datasets", {"dataset_id": cycle.twin_version}) == 0


def _compared(world, monkeypatch, right_every: dict[str, int]):
    """Data stages, the twin (training replaced) and the promotion, with the scores given."""
    tmp_path, wh = world
    _fake_training(monkeypatch)
    cycle = _cycle(tmp_path)
    _data_stages(cycle, wh)
    cycle_train.train_challenger(cycle, wh)  # both registered, as the DAG's training tasks leave them
    train_twin(cycle, wh)
    _evaluations(cycle, wh, right_every)
    return cycle, wh, promote_if_better(cycle, wh)


def test_newest_window_that_helped_is_kept(world, monkeypatch):
    cycle, wh, out = _compared(world, monkeypatch, {"champion": 5, "challenger": 2, "twin": 3})
    (c,) = wh.select("new_data_comparisons", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert c["verdict"] == "helped" and not c["flagged"] and c["delta"] == pytest.approx(c["challenger_accuracy"] - c["twin_accuracy"])
    assert c["delta_low"] <= c["delta"] <= c["delta_high"] and "the new data helped" in c["reason"]
    assert out["promoted"] and out["champion_after"] == cycle.challenger_version
    assert wh.count("decisions", {"cycle_id": cycle.cycle_id, "rule": "new_data_check"}) == 0
    assert any("the new data helped" in line for line in new_data_section(wh, cycle.cycle_id))


def test_newest_window_that_hurt_is_flagged_and_kept_out(world, monkeypatch):
    tmp_path = world[0]
    # The whole window is worse than the twin without its newest week, and both beat the champion.
    cycle, wh, out = _compared(world, monkeypatch, {"champion": 7, "challenger": 3, "twin": 2})
    newest = _newest_in_dataset(cycle, wh)
    (c,) = wh.select("new_data_comparisons", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert c["verdict"] == "hurt" and c["flagged"] and c["n_newest"] == len(newest)
    assert (c["newest_start"], c["newest_end"]) == (NEWEST, W_END)
    # The twin went to the gate in the challenger's place, and won.
    (gate,) = wh.select("offline_comparisons", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert gate["challenger"] == cycle.twin_version and gate["passed"]
    assert out["promoted"] and out["champion_after"] == cycle.twin_version == registry.current_champion(wh)
    # Its examples are no longer counted as kept, and the cycle's counts still add up.
    dropped = {d["request_id"] for d in wh.select("decisions", {"cycle_id": cycle.cycle_id, "rule": "new_data_check"}).to_pylist()}
    assert dropped == newest
    rec = record_cycle(cycle, wh)
    assert rec["challenger"] == cycle.twin_version and rec["challenger_accuracy"] == pytest.approx(c["twin_accuracy"])
    section = "\n".join(new_data_section(wh, cycle.cycle_id))
    assert "**Flagged:**" in section and "made the model worse" in section
    table = format_new_data_table([c]).splitlines()
    assert len(table) == 3 and table[2].startswith(cycle.cycle_id) and "2026-02-09..2026-02-16" in table[2]
    assert f"{c['delta']:+.3f}" in table[2] and "hurt (FLAGGED" in table[2]

    # A later cycle over the flagged week keeps its rows out, each with a decision saying why.
    # (As the monthly cycle reads it: no dedup against earlier training sets, which would reject
    # the week's rows as already trained on before the flag is even consulted.)
    later = _cycle(tmp_path, end=END + timedelta(days=7), **{"filters.dedup_against_history": False})  # [02-09, 02-23)
    built = _data_stages(later, wh)
    out_rows = wh.select("decisions", {"cycle_id": later.cycle_id, "rule": "flagged_window"}).to_pylist()
    assert out_rows and all(not d["kept"] and cycle.cycle_id in d["reason"] for d in out_rows)
    ts = {r["request_id"]: r["timestamp"] for r in wh.select("production_logs").to_pylist()}
    assert all(NEWEST <= ts[d["request_id"]] < W_END for d in out_rows)
    data = load_chat_dataset(later.dataset_dir)
    ids = {r["request_id"] for split in ("train", "validation") for r in data[split]}
    assert ids and not any(NEWEST <= ts[i] < W_END for i in ids)
    assert built["n_train"] + built["n_val"] == len(ids)
    rec = record_cycle(later, wh)  # raises if the counts do not add up
    assert rec["kept"] == len(ids)
    # The flagging cycle itself does not keep out its own window on a rerun of build_dataset.
    assert flagged_windows(wh, cycle.logical_date) == []


def test_rerun_without_a_twin_forgets_the_comparison(world, monkeypatch):
    tmp_path = world[0]
    cycle, wh, _ = _compared(world, monkeypatch, {"champion": 7, "challenger": 3, "twin": 2})
    assert wh.count("decisions", {"cycle_id": cycle.cycle_id, "rule": "new_data_check"}) > 0
    off = _cycle(tmp_path, **{"evaluation.compare_new_data": False})
    assert "skipped" in train_twin(off, wh)
    wh.execute("DELETE FROM evaluations WHERE role = 'twin'")  # what evaluate_golden_set's rerun leaves
    out = promote_if_better(off, wh)
    assert wh.count("new_data_comparisons", {"cycle_id": cycle.cycle_id}) == 0
    assert wh.count("decisions", {"cycle_id": cycle.cycle_id, "rule": "new_data_check"}) == 0
    assert wh.select("offline_comparisons", {"cycle_id": cycle.cycle_id}).to_pylist()[0]["challenger"] == cycle.challenger_version
    assert out["champion_after"] == cycle.challenger_version


def test_gold_examples_are_old_data_whatever_their_timestamp(world, monkeypatch):
    """Gold accepted by earlier cycles is old data: the twin keeps it, and a flag never drops it
    (the monthly cycle re-reads gold stamped with the accepting cycle's date)."""
    tmp_path, wh = world
    calls = _fake_training(monkeypatch)
    cycle = _cycle(tmp_path)
    _data_stages(cycle, wh)
    newest = sorted(_newest_in_dataset(cycle, wh))
    gold_id = newest[0]
    wh.merge("gold_examples", rows_to_table("gold_examples", [{
        "request_id": gold_id, "source": "review", "cycle_id": "earlier", "logical_date": END - timedelta(days=1),
        "task_type": "uppercase", "prompt": "p", "response": "r", "created_at": END}]))  # fmt: skip
    out = train_twin(cycle, wh)
    assert out["n_newest"] == len(newest) - 1
    twin_rows = load_chat_dataset(calls[0]["dataset"]["path"])
    assert gold_id in {r["request_id"] for split in ("train", "validation") for r in twin_rows[split]}
    _evaluations(cycle, wh, {"champion": 7, "challenger": 3, "twin": 2})
    promote_if_better(cycle, wh)
    dropped = {d["request_id"] for d in wh.select("decisions", {"cycle_id": cycle.cycle_id, "rule": "new_data_check"}).to_pylist()}
    assert dropped == set(newest) - {gold_id}
    later = _cycle(tmp_path, end=END + timedelta(days=7), **{"filters.dedup_against_history": False})
    _data_stages(later, wh)
    kept_out = {d["request_id"] for d in wh.select("decisions", {"cycle_id": later.cycle_id, "rule": "flagged_window"}).to_pylist()}
    assert kept_out and gold_id not in kept_out


def test_a_dry_run_flags_nothing(world, monkeypatch):
    tmp_path, wh = world
    _fake_training(monkeypatch)
    cycle = make_cycle("flywheel_weekly", data_interval_end=END, logical_date=END, config=_config(tmp_path), dry_run=True)
    _data_stages(cycle, wh)
    train_twin(cycle, wh)
    _evaluations(cycle, wh, {"champion": 7, "challenger": 3, "twin": 2})
    out = promote_if_better(cycle, wh)
    (c,) = wh.select("new_data_comparisons", {"cycle_id": cycle.cycle_id}).to_pylist()
    assert c["verdict"] == "hurt" and not c["flagged"] and "a dry run, so nothing is flagged" in c["reason"]
    assert wh.count("decisions", {"cycle_id": cycle.cycle_id, "rule": "new_data_check"}) == 0
    assert flagged_windows(wh, END + timedelta(days=30)) == []
    assert not out["promoted"] and registry.current_champion(wh) == registry.base_version_name(BASE)


def test_a_twin_that_cannot_be_trained_leaves_the_cycle_to_its_challenger(world, monkeypatch):
    from flywheel.errors import TrainingError

    tmp_path, wh = world

    def broken(*args, **kwargs):
        raise TrainingError("training of the twin failed (exit 137): killed")

    monkeypatch.setattr(cycle_train, "_train_version", broken)
    cycle = _cycle(tmp_path)
    _data_stages(cycle, wh)
    out = train_twin(cycle, wh)
    assert out["failed"] and "exit 137" in out["skipped"]
    assert wh.count("datasets", {"dataset_id": cycle.twin_version}) == 0  # evaluate will not look for a twin


def test_the_twin_task_alerts_when_the_twin_failed_and_succeeds(tmp_path, wh, monkeypatch):
    """`TrainTwinOperator` turns a failed twin into an alert (warehouse, log, channels) and lets
    the run go on to evaluation."""
    from types import SimpleNamespace

    from flywheel_airflow import operators

    config = FlywheelConfig(home=wh.path.parent)
    op = operators.TrainTwinOperator(task_id="train_twin_without_newest_window")

    def stage_ran(self, context):
        self._config = config
        return {"skipped": "the twin could not be trained: exit 137", "failed": True}

    monkeypatch.setattr(operators.FlywheelStageOperator, "execute", stage_ran)
    ti = SimpleNamespace(dag_id="flywheel_monthly", task_id=op.task_id, run_id="scheduled__2026-03-01")
    out = op.execute({"ti": ti, "logical_date": END})
    assert out["failed"]
    (alert,) = wh.select("alerts").to_pylist()
    assert alert["kind"] == "twin_failed" and "exit 137" in alert["message"] and alert["dag_id"] == "flywheel_monthly"
