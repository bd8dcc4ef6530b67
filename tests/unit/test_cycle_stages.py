"""The cycle's data stages end to end on a DuckDB warehouse, without any model:
extract -> validate -> filter -> build_dataset -> record."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest

from flywheel.config import FlywheelConfig
from flywheel.cycle import CycleSpec, InsufficientDataError, make_cycle
from flywheel.cycle.dataset import build_dataset
from flywheel.cycle.extract import extract_window
from flywheel.cycle.filtering import filter_candidates
from flywheel.cycle.record import record_cycle
from flywheel.cycle.validate import validate_rows
from flywheel.data.dataset import load_chat_dataset
from flywheel.errors import FlywheelError, WindowError
from flywheel.model import registry
from flywheel.sim.traffic import simulate_traffic
from flywheel.tables import WINDOW_SNAPSHOT, rows_to_table
from flywheel.warehouse.duckdb import DuckDBWarehouse
from tests.helpers.simulated_product import SIMULATED_PRODUCT

DAG = "flywheel_weekly"
END = datetime(2026, 3, 2, tzinfo=UTC)  # window [2026-02-09, 2026-02-16)
W_START, W_END = datetime(2026, 2, 9, tzinfo=UTC), datetime(2026, 2, 16, tzinfo=UTC)
N_SIM = 80
BASE = "some-base-path"
TABLES = ("quarantine", "decisions", "datasets", "cycles", "metrics")


@dataclass
class World:
    wh: DuckDBWarehouse
    cycle: CycleSpec
    logs: list[dict]  # everything loaded into the warehouse
    in_window: int
    dup_id: str
    expected_quarantine: set[tuple[str, str, str]]


def _config(tmp_path, **overrides) -> FlywheelConfig:
    # Selection keeps everything here, so that these tests see the other rules' decisions alone;
    # selection has its own tests below and in test_filters.
    return FlywheelConfig(home=tmp_path).with_overrides(
        {**SIMULATED_PRODUCT, "training.min_examples": 5, "filters.keep_fraction": 1.0, **overrides}
    )


@pytest.fixture
def world(tmp_path, answer_fns, make_log_row) -> World:
    config = _config(tmp_path)
    cycle = make_cycle(DAG, data_interval_end=END, logical_date=END, config=config)
    assert (cycle.window.start, cycle.window.end) == (W_START, W_END)

    def sim(week, n, seed):
        return simulate_traffic(
            week,
            answer_fns["half"],
            model_version="base:x",
            n_requests=n,
            seed=seed,
            malformed_rate=0.0,
            adversarial_rate=0.1,
        ).to_pylist()

    inside = sim(W_START, N_SIM, 3)
    outside = sim(W_START - timedelta(days=7), 20, 4) + sim(W_END, 20, 5)
    dup = {
        **inside[0],
        "timestamp": inside[0]["timestamp"] + timedelta(seconds=1),
        "response": "a different answer",
    }
    mid = W_START + timedelta(days=3)
    bad = [
        make_log_row("bad-missing-user", mid, user_id=None),
        make_log_row("bad-action", mid, user_action="liked"),
        make_log_row("bad-score", mid, quality_score=1.7),
        make_log_row("bad-null-ts", None, ingested_at=mid),
        dup,
    ]
    edges_in = [make_log_row("edge-start", W_START)]
    edges_out = [
        make_log_row("edge-end", W_END),
        make_log_row("null-ts-outside", None, ingested_at=W_END + timedelta(hours=1)),
    ]
    logs = inside + outside + bad + edges_in + edges_out
    wh = DuckDBWarehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=5)
    wh.ensure_schema()
    wh.merge("production_logs", rows_to_table("production_logs", logs))
    assert wh.count("production_logs") == len(logs)
    return World(
        wh,
        cycle,
        logs,
        in_window=N_SIM + len(bad) + len(edges_in),
        dup_id=dup["request_id"],
        expected_quarantine={
            ("bad-missing-user", "user_id", "required"),
            ("bad-action", "user_action", "allowed_values"),
            ("bad-score", "quality_score", "range"),
            ("bad-null-ts", "timestamp", "required"),
            (dup["request_id"], "request_id", "conflicting_duplicate"),
        },
    )


def _run(w: World, *, record=True) -> dict[str, dict]:
    out = {
        "extract": extract_window(w.cycle, w.wh),
        "validate": validate_rows(w.cycle, w.wh),
        "filter": filter_candidates(w.cycle, w.wh),
        "build_dataset": build_dataset(w.cycle, w.wh),
    }
    if record:
        registry.ensure_bootstrap_champion(w.wh, BASE)
        out["record"] = record_cycle(w.cycle, w.wh)
    return out


def _counts(w: World) -> dict[str, int]:
    return {t: w.wh.count(t) for t in TABLES}


def test_make_cycle():
    c = make_cycle(
        DAG, data_interval_end=END, logical_date=END, config=FlywheelConfig(home="/tmp/x")
    )
    assert c.cycle_id == "flywheel_weekly-20260302T0000"
    assert c.challenger_version == c.cycle_id
    assert c.work_dir.name == c.cycle_id and c.file("a.parquet").parent == c.work_dir
    local = END.astimezone(ZoneInfo("Asia/Kolkata"))
    c2 = make_cycle(
        DAG, data_interval_end=local, logical_date=local, config=FlywheelConfig(home="/tmp/x")
    )
    assert c2.cycle_id == c.cycle_id and c2.window == c.window and c2.logical_date == END
    # logical date alone is enough (manual trigger)
    assert (
        make_cycle(DAG, data_interval_end=None, logical_date=END, config=c.config).window
        == c.window
    )
    # the lag comes from the config
    c3 = make_cycle(
        DAG,
        data_interval_end=END,
        logical_date=END,
        config=c.config.with_overrides({"extract.lag_days": 0}),
    )
    assert c3.window.end == END
    with pytest.raises(WindowError):
        make_cycle(DAG, data_interval_end=None, logical_date=None, config=c.config)


def test_extract_reads_only_the_window(world):
    res = extract_window(world.cycle, world.wh)
    assert res["rows_in_window"] == world.in_window == N_SIM + 6
    assert res["window_start"] == W_START.isoformat() and res["window_end"] == W_END.isoformat()
    snap = pq.read_table(world.cycle.file("extract.parquet"))
    assert snap.schema.equals(WINDOW_SNAPSHOT)
    ids = snap.column("request_id").to_pylist()
    assert "edge-start" in ids and "bad-null-ts" in ids
    assert not {"edge-end", "null-ts-outside"} & set(ids)
    for r in snap.to_pylist():
        assert W_START <= (r["timestamp"] or r["ingested_at"]) < W_END


def test_extract_of_an_empty_window_writes_an_empty_snapshot(tmp_path):
    config = _config(tmp_path)
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    c = make_cycle(DAG, data_interval_end=END, logical_date=END, config=config)
    assert extract_window(c, wh)["rows_in_window"] == 0
    assert pq.read_table(c.file("extract.parquet")).schema.equals(WINDOW_SNAPSHOT)


def test_validate_quarantines_malformed_rows_with_reasons(world):
    extract_window(world.cycle, world.wh)
    res = validate_rows(world.cycle, world.wh)
    assert res["quarantined"] == 6
    assert res["valid"] == world.in_window - 6
    assert res["quarantine_reasons"] == {
        "user_id.required": 1, "user_action.allowed_values": 1, "quality_score.range": 1,
        "timestamp.required": 1, "request_id.conflicting_duplicate": 2,
    }  # fmt: skip
    q = world.wh.select("quarantine", {"cycle_id": world.cycle.cycle_id}).to_pylist()
    assert {(r["request_id"], r["field"], r["rule"]) for r in q} == world.expected_quarantine
    by_id = {r["request_id"]: r for r in q}
    raw = json.loads(by_id["bad-action"]["raw_json"])
    assert raw["user_action"] == "liked" and raw["request_id"] == "bad-action"
    assert json.loads(by_id["bad-score"]["raw_json"])["quality_score"] == 1.7
    assert json.loads(by_id["bad-null-ts"]["raw_json"])["timestamp"] is None
    assert (
        "request_id='bad-action'" in by_id["bad-action"]["reason"]
        and "'liked'" in by_id["bad-action"]["reason"]
    )
    # two different rows under one request_id: there is no telling which is true, so both go
    dup_rows = [json.loads(r["raw_json"]) for r in q if r["request_id"] == world.dup_id]
    assert len(dup_rows) == 2 and dup_rows[0]["text_digest"] != dup_rows[1]["text_digest"]
    valid = pq.read_table(world.cycle.file("valid.parquet")).to_pylist()
    assert world.dup_id not in {r["request_id"] for r in valid}
    assert not {"bad-action", "bad-score", "bad-missing-user", "bad-null-ts"} & {
        r["request_id"] for r in valid
    }


def test_identical_redelivery_keeps_the_first_copy(tmp_path, make_log_row):
    config = _config(tmp_path)
    cycle = make_cycle(DAG, data_interval_end=END, logical_date=END, config=config)
    row = make_log_row("twice", W_START + timedelta(days=1))
    again = {**row, "ingested_at": row["ingested_at"] + timedelta(hours=2)}  # same event, later
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", lock_timeout_s=5)
    wh.ensure_schema()
    wh.merge("production_logs", rows_to_table("production_logs", [row, again]))
    extract_window(cycle, wh)
    res = validate_rows(cycle, wh)
    assert (res["valid"], res["quarantined"]) == (1, 1)
    assert res["quarantine_reasons"] == {"request_id.duplicate_delivery": 1}


def test_future_stamped_row_is_read_once_by_ingestion_time_and_quarantined(tmp_path, make_log_row):
    config = _config(tmp_path)
    cycle = make_cycle(DAG, data_interval_end=END, logical_date=END, config=config)
    ingested = W_START + timedelta(days=2)
    future = make_log_row("from-the-future", ingested + timedelta(days=30), ingested_at=ingested)
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", lock_timeout_s=5)
    wh.ensure_schema()
    wh.merge("production_logs", rows_to_table("production_logs", [future]))
    assert extract_window(cycle, wh)["rows_in_window"] == 1
    assert validate_rows(cycle, wh)["quarantine_reasons"] == {"timestamp.future": 1}
    # the window its bogus timestamp falls into does not read it a second time
    later = make_cycle(
        DAG, data_interval_end=END + timedelta(days=28), logical_date=END + timedelta(days=28), config=config
    )
    assert extract_window(later, wh)["rows_in_window"] == 0


CHEAP_RULES = {"user_action", "length", "quality_score"}
TEXT_RULES = {"pii", "toxicity", "grounding", "decontamination"}


def test_filter_records_a_decision_per_rule_met(world):
    extract_window(world.cycle, world.wh)
    valid = validate_rows(world.cycle, world.wh)["valid"]
    res = filter_candidates(world.cycle, world.wh)
    assert res["kept"] + res["rejected"] == valid == res["candidates"]
    assert res["kept"] >= 5 and res["rejected"] >= 1
    decisions = world.wh.select("decisions", {"cycle_id": world.cycle.cycle_id}).to_pylist()
    by_req: dict[str, dict[str, bool]] = {}
    for d in decisions:
        assert d["reason"]
        assert d["rule"] not in by_req.setdefault(d["request_id"], {}), "one decision per row and rule"
        by_req[d["request_id"]][d["rule"]] = d["kept"]
    assert len(by_req) == valid
    kept_ids = {r["request_id"] for r in pq.read_table(world.cycle.file("kept.parquet")).to_pylist()}
    assert kept_ids == {rid for rid, rules in by_req.items() if all(rules.values())}
    pushed = {"user_action", "quality_score"}
    for rid, rules in by_req.items():
        # the rules pushed down into the warehouse query judge every row; the length rule (in
        # Python) every row whose text the query returned, i.e. those both pushed rules kept
        assert pushed <= set(rules)
        if all(rules[r] for r in pushed):
            assert "length" in rules
        else:
            assert "length" not in rules and "(decided in the warehouse query)" in " ".join(
                d["reason"] for d in decisions if d["request_id"] == rid
            )
        if all(rules.get(r) for r in CHEAP_RULES):
            assert TEXT_RULES <= set(rules)  # the text rules judge what the cheap ones kept
        else:
            assert not TEXT_RULES & set(rules)
        if rid in kept_ids:
            assert set(rules) == CHEAP_RULES | TEXT_RULES | {"dedup", "selection"}
    assert sum(res["rejected_by_rule"].values()) == sum(not d["kept"] for d in decisions)
    # every regenerated row was rejected by the action rule
    regenerated = {r["request_id"] for r in world.logs if r["user_action"] == "regenerated"}
    assert regenerated and not regenerated & kept_ids
    # the fixture's rows made by make_log_row share prompt and answer: only the first is kept
    dedup = {d["request_id"]: d for d in decisions if d["rule"] == "dedup"}
    assert dedup["edge-start"]["kept"] is True


def test_selection_keeps_the_top_share_per_task_type(world):
    cycle = make_cycle(
        DAG, data_interval_end=END, logical_date=END,
        config=world.cycle.config.with_overrides({"filters.keep_fraction": 0.2, "filters.min_per_task_type": 1}),
    )  # fmt: skip
    extract_window(cycle, world.wh)
    valid = validate_rows(cycle, world.wh)["valid"]
    res = filter_candidates(cycle, world.wh)
    sel = [d for d in world.wh.select("decisions", {"cycle_id": cycle.cycle_id}).to_pylist() if d["rule"] == "selection"]
    assert sel and res["kept"] == sum(d["kept"] for d in sel) < len(sel)
    assert res["kept"] <= 0.2 * valid + 5  # a quota per task type, rounded up
    by_type: dict[str, list[dict]] = {}
    for d in sel:
        by_type.setdefault(d["reason"].split("task_type '")[1].split("'")[0], []).append(d)
    for rows in by_type.values():
        kept_scores = [d["score"] for d in rows if d["kept"]]
        dropped = [d["score"] for d in rows if not d["kept"]]
        assert kept_scores, "every task type keeps at least its minimum"
        assert not dropped or min(kept_scores) >= max(dropped)


def test_full_stages_counts_add_up_and_corrections_are_targets(world):
    out = _run(world)
    rec = out["record"]
    assert rec["rows_in_window"] == world.in_window
    assert rec["quarantined"] == 6
    assert rec["kept"] == out["filter"]["kept"] and rec["rejected"] == out["filter"]["rejected"]
    assert rec["quarantined"] + rec["kept"] + rec["rejected"] == world.in_window
    assert rec["pass_rate"] == pytest.approx(rec["kept"] / world.in_window)
    assert rec["promoted"] is False and rec["challenger"] is None
    assert rec["champion_before"] == rec["champion_after"] == registry.base_version_name(BASE)
    assert rec["metrics"]["examples_per_day"] == pytest.approx(rec["kept"] / 7)
    assert rec["metrics"]["quarantine_rate"] == pytest.approx(6 / world.in_window)
    # per-rule pass rates, measured from the decisions
    decisions = world.wh.select("decisions", {"cycle_id": world.cycle.cycle_id}).to_pylist()
    for rule in ("user_action", "pii", "dedup", "selection"):
        judged = [d["kept"] for d in decisions if d["rule"] == rule]
        assert rec["metrics"][f"pass_rate.{rule}"] == pytest.approx(sum(judged) / len(judged))
        assert rec["metrics"][f"evaluated.{rule}"] == len(judged)
    assert "quality_delta" not in rec["metrics"]
    (stored,) = world.wh.select("cycles").to_pylist()
    assert (stored["cycle_id"], stored["window_start"], stored["kept"]) == (
        world.cycle.cycle_id,
        W_START,
        rec["kept"],
    )

    ds_info = out["build_dataset"]
    assert ds_info["n_train"] + ds_info["n_val"] == rec["kept"]
    ds = load_chat_dataset(world.cycle.dataset_dir)
    rows = list(ds["train"]) + list(ds["validation"])
    assert len(rows) == rec["kept"]
    logs = {r["request_id"]: r for r in world.logs}
    corrections = [r for r in rows if r["from_correction"]]
    assert corrections, "the half-wrong stand-in model must produce kept corrections"
    assert ds_info["n_corrections"] == len(corrections)
    for r in rows:
        src = logs[r["request_id"]]
        user, assistant = r["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"].endswith(src["prompt"])
        assert (src["context"] is None) or user["content"].startswith(f"Context: {src['context']}")
        if src["user_action"] == "corrected":
            assert assistant["content"] == src["correction"] != src["response"]
        else:
            assert assistant["content"] == src["response"]


def test_rerunning_every_stage_is_idempotent(world):
    first = _run(world)
    counts = _counts(world)
    assert counts["quarantine"] == 6 and counts["datasets"] == 1 and counts["cycles"] == 1
    second = _run(world)
    assert _counts(world) == counts
    assert second["build_dataset"]["content_hash"] == first["build_dataset"]["content_hash"]
    for key in ("rows_in_window", "quarantined", "kept", "rejected", "pass_rate"):
        assert second["record"][key] == first["record"][key]
    assert world.wh.count("promotions") == 1  # bootstrap only


def test_late_logs_outside_the_window_do_not_change_a_rerun(world, make_log_row):
    first = _run(world, record=False)
    world.wh.merge(
        "production_logs",
        rows_to_table("production_logs", [make_log_row("late-outside", W_END + timedelta(days=1))]),
    )
    second = _run(world, record=False)
    assert second["extract"]["rows_in_window"] == first["extract"]["rows_in_window"]
    assert second["build_dataset"]["content_hash"] == first["build_dataset"]["content_hash"]


def test_content_hash_changes_with_the_data(world, make_log_row):
    first = _run(world, record=False)
    world.wh.merge(
        "production_logs",
        rows_to_table(
            "production_logs",
            [
                make_log_row(
                    "new-in-window",
                    W_START + timedelta(days=1),
                    prompt="A brand new request that nobody has sent before: please rewrite the word harbor in capital letters for my sign.",
                    response="HARBOR",
                )
            ],
        ),
    )
    second = _run(world, record=False)
    assert second["filter"]["kept"] == first["filter"]["kept"] + 1
    assert second["build_dataset"]["content_hash"] != first["build_dataset"]["content_hash"]


def test_too_few_examples_raise_insufficient_data(world):
    cycle = make_cycle(
        DAG,
        data_interval_end=END,
        logical_date=END,
        config=world.cycle.config.with_overrides({"training.min_examples": 10_000}),
    )
    extract_window(cycle, world.wh)
    validate_rows(cycle, world.wh)
    kept = filter_candidates(cycle, world.wh)["kept"]
    with pytest.raises(
        InsufficientDataError, match=f"{kept} kept examples < training.min_examples=10000"
    ):
        build_dataset(cycle, world.wh)
    assert world.wh.count("datasets") == 0
    assert issubclass(InsufficientDataError, FlywheelError)
    # the cycle still records itself
    registry.ensure_bootstrap_champion(world.wh, BASE)
    assert record_cycle(cycle, world.wh)["kept"] == kept


def test_record_refuses_counts_that_do_not_add_up(world):
    extract_window(world.cycle, world.wh)
    validate_rows(world.cycle, world.wh)
    filter_candidates(world.cycle, world.wh)
    registry.ensure_bootstrap_champion(world.wh, BASE)
    world.wh.execute(
        "DELETE FROM decisions WHERE request_id = (SELECT MIN(request_id) FROM decisions)"
    )
    with pytest.raises(FlywheelError, match="counts do not add up"):
        record_cycle(world.cycle, world.wh)


def test_record_without_champion_raises(world):
    extract_window(world.cycle, world.wh)
    validate_rows(world.cycle, world.wh)
    filter_candidates(world.cycle, world.wh)
    with pytest.raises(registry.RegistryError):
        record_cycle(world.cycle, world.wh)


def test_cycles_are_partitioned_by_cycle_id(world):
    _run(world)
    other = make_cycle(
        DAG,
        data_interval_end=END + timedelta(days=7),
        logical_date=END + timedelta(days=7),
        config=world.cycle.config,
    )
    extract_window(other, world.wh)
    validate_rows(other, world.wh)
    filter_candidates(other, world.wh)
    rec = record_cycle(other, world.wh)
    # the next window: the 20 simulated rows of the following week, the edge row at W_END and
    # the row with no timestamp ingested just after W_END (quarantined there, and only there)
    assert rec["rows_in_window"] == 22
    assert world.wh.count("cycles") == 2
    assert world.wh.count("quarantine", {"cycle_id": world.cycle.cycle_id}) == 6
    (q,) = world.wh.select("quarantine", {"cycle_id": other.cycle_id}).to_pylist()
    assert (q["request_id"], q["field"], q["rule"]) == ("null-ts-outside", "timestamp", "required")


def test_quarantined_rows_keep_no_pii(tmp_path, make_log_row):
    config = _config(tmp_path)
    cycle = make_cycle(DAG, data_interval_end=END, logical_date=END, config=config)
    bad = make_log_row("bad-user", W_START + timedelta(days=1), user_id=None,
                       prompt="Call me on (212) 555-0198 about the word garden in capitals, please.")  # fmt: skip
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", lock_timeout_s=5)
    wh.ensure_schema()
    wh.merge("production_logs", rows_to_table("production_logs", [bad]))
    extract_window(cycle, wh)
    assert validate_rows(cycle, wh)["quarantined"] == 1
    (q,) = wh.select("quarantine").to_pylist()
    assert "555-0198" not in q["raw_json"] and "<PHONE_NUMBER>" in json.loads(q["raw_json"])["prompt"]


def test_a_megabyte_text_field_is_quarantined_without_crashing_the_stage(tmp_path, make_log_row):
    """1 MiB fields in an ordinary week: each row is quarantined with its reasons (the text is
    over `validation.max_text_chars`), its text redacted past spaCy's 1,000,000-character limit;
    the stage does not stop."""
    config = _config(tmp_path)
    cycle = make_cycle(DAG, data_interval_end=END, logical_date=END, config=config)
    huge = ("Call me on (212) 555-0198. " + "lorem ipsum " * 90_000)[: 1 << 20]
    rows = [
        make_log_row("huge-no-user", W_START + timedelta(days=1), user_id=None, prompt=huge),
        make_log_row("huge-response", W_START + timedelta(days=1), response=huge),
    ]
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", lock_timeout_s=5)
    wh.ensure_schema()
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    extract_window(cycle, wh)
    assert validate_rows(cycle, wh)["quarantined"] == 2
    quarantined = wh.select("quarantine").to_pylist()
    reasons = {(q["request_id"], f"{q['field']}.{q['rule']}") for q in quarantined}
    assert {("huge-no-user", "user_id.required"), ("huge-no-user", "prompt.max_length"),
            ("huge-response", "response.max_length")} <= reasons  # fmt: skip
    assert not any("555-0198" in q["raw_json"] for q in quarantined)
    kept = json.loads(next(q["raw_json"] for q in quarantined if q["request_id"] == "huge-response"))["response"]
    assert len(kept) < config.validation.max_text_chars + 100 and kept.endswith("more characters not kept]")


def test_rows_trained_on_in_an_earlier_cycle_are_duplicates_later(tmp_path, make_log_row):
    """Dedup against history: the next week's copy of an interaction already trained on is
    rejected, naming the cycle; a rerun of the earlier cycle does not see its own set."""
    config = _config(tmp_path)
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", lock_timeout_s=5)
    wh.ensure_schema()
    first = make_cycle(DAG, data_interval_end=END, logical_date=END, config=config)
    second = make_cycle(DAG, data_interval_end=END + timedelta(days=7), logical_date=END + timedelta(days=7), config=config)
    prompts = [f"Please rewrite the word {w} in capital letters for the heading of my school poster, I want it to stand out."
               for w in ("garden", "harbor", "island", "jungle", "kettle", "ladder")]  # fmt: skip
    rows = [make_log_row(f"w1-{i}", W_START + timedelta(days=1), prompt=p, response=p.split()[4].upper()) for i, p in enumerate(prompts)]
    rows += [make_log_row(f"w2-{i}", W_START + timedelta(days=8), prompt=p.replace("Please", "please,"), response=p.split()[4].upper())
             for i, p in enumerate(prompts[:3])]  # fmt: skip
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    for cycle in (first, second):
        extract_window(cycle, wh)
        validate_rows(cycle, wh)
        filter_candidates(cycle, wh)
        if cycle is first:
            built = build_dataset(cycle, wh)
            assert built["n_train"] + built["n_val"] == 6
    dedup = {d["request_id"]: d for d in wh.select("decisions", {"cycle_id": second.cycle_id}).to_pylist() if d["rule"] == "dedup"}
    assert set(dedup) == {"w2-0", "w2-1", "w2-2"}
    assert all(not d["kept"] and f"trained in {first.cycle_id}" in d["reason"] for d in dedup.values())
    # the earlier cycle, rerun, keeps what it kept: its own training set is not its history
    filter_candidates(first, wh)
    assert all(d["kept"] for d in wh.select("decisions", {"cycle_id": first.cycle_id, "rule": "dedup"}).to_pylist())


def test_a_cycle_carries_over_the_examples_its_champion_has_not_learnt(tmp_path, make_log_row):
    """`training.carry_over_cycles`: week 3's dataset holds week 1's examples again (its
    challenger gained, but was not promoted), not week 2's (its challenger lost offline, as a
    poisoned week's does); once a model trained in week 3 is champion, week 4 carries nothing
    older than it."""
    from flywheel.cycle.dataset import pending_datasets

    config = _config(tmp_path, **{"training.carry_over_cycles": 3})
    wh = DuckDBWarehouse(tmp_path / "w.duckdb", lock_timeout_s=5)
    wh.ensure_schema()
    registry.ensure_bootstrap_champion(wh, "tiny")
    words = ("garden", "harbor", "island", "jungle", "kettle", "ladder", "marble", "needle")
    asks = ("Please rewrite the word {w} in capital letters for the heading of my school poster, I want it to stand out.",
            "My shift key is broken since this morning and I need the word {w} written in all capital letters today.",
            "Could you spell {w} in upper case for a sign at the village fair this weekend? Thanks a lot in advance!",
            "For a crossword grid I am drawing by hand tonight, what is the word {w} in block capitals, letter for letter, please?")  # fmt: skip
    cycles = [make_cycle(DAG, data_interval_end=END + timedelta(days=7 * k), logical_date=END + timedelta(days=7 * k),
                         config=config) for k in range(4)]  # fmt: skip
    rows = [make_log_row(f"w{k}-{w}", W_START + timedelta(days=7 * k + 1), response=w.upper(), prompt=asks[k].format(w=w))
            for k in range(4) for w in words]  # fmt: skip
    wh.merge("production_logs", rows_to_table("production_logs", rows))
    built = {}
    for k, cycle in enumerate(cycles):
        if k == 3:  # a model trained in week 3 (cycles[2]) becomes champion before week 4
            registry.register_model(wh, registry.ModelVersion(version="v3", base_model="tiny", adapter_path=None,
                                                              cycle_id=cycles[2].cycle_id))  # fmt: skip
            registry.record_decision(wh, cycle_id=cycles[2].cycle_id, logical_date=cycles[2].logical_date,
                                     champion_before="base:tiny", challenger="v3", promoted=True, reason="test")  # fmt: skip
        extract_window(cycle, wh)
        validate_rows(cycle, wh)
        filter_candidates(cycle, wh)
        built[k] = build_dataset(cycle, wh)
        wh.merge("cycles", rows_to_table("cycles", [{"cycle_id": cycle.cycle_id, "logical_date": cycle.logical_date}]))
        wh.merge("offline_comparisons", rows_to_table("offline_comparisons", [
            {"cycle_id": cycle.cycle_id, "delta": -0.2 if k == 1 else 0.02, "passed": k != 1}]))  # fmt: skip

    def ids(k):
        data = load_chat_dataset(cycles[k].dataset_dir)
        return {r["request_id"].split("-")[0] for split in data.values() for r in split}

    assert ids(0) == {"w0"} and built[0]["carried_from"] == []
    assert ids(1) == {"w0", "w1"} and built[1]["carried_from"] == [cycles[0].cycle_id]
    assert ids(2) == {"w0", "w2"} and built[2]["carried_from"] == [cycles[0].cycle_id]  # week 2 made it worse
    assert built[2]["n_train"] + built[2]["n_val"] == 2 * len(words) and built[2]["n_kept"] == len(words)
    assert ids(3) == {"w3"} and pending_datasets(wh, cycles[3]) == []  # the champion learnt weeks 1-3
    off = cycles[0].config.with_overrides({"training.carry_over_cycles": 0})
    assert pending_datasets(wh, dataclasses.replace(cycles[2], config=off)) == []


def test_dataset_without_a_validation_split(tmp_path, make_log_row):
    from flywheel.data.dataset import build_chat_dataset
    from flywheel.records import candidate_from_row

    rows = [candidate_from_row(make_log_row(f"r{i}", W_START)) for i in range(3)]
    info = build_chat_dataset(rows, tmp_path / "ds", val_fraction=0.0)
    ds = load_chat_dataset(tmp_path / "ds")
    assert (info.n_train, info.n_val, len(ds["validation"])) == (3, 0, 0)
    assert ds["validation"].column_names == ds["train"].column_names


def test_record_diagnoses_a_starved_flywheel(world):
    """Three cycles in a row with no challenger: starved (not stagnant: no challenger was judged),
    with the volume named as a cause."""
    registry.ensure_bootstrap_champion(world.wh, BASE)
    results = []
    for week in range(3):
        end = END + timedelta(days=7 * week)
        cycle = make_cycle(DAG, data_interval_end=end, logical_date=end, config=world.cycle.config)
        extract_window(cycle, world.wh)
        validate_rows(cycle, world.wh)
        filter_candidates(cycle, world.wh)
        results.append(record_cycle(cycle, world.wh))
    assert [r["stagnation"]["starved"] for r in results] == [False, False, True]
    assert not any(r["stagnation"]["stagnant"] for r in results)
    assert (results[-1]["stagnation"]["cycles_without_challenger"], results[-1]["stagnation"]["cycles_without_gain"]) == (3, 0)
    assert any("too little volume" in c for c in results[-1]["stagnation"]["causes"])
    last = {r["name"]: r["value"] for r in world.wh.select("metrics", {"cycle_id": results[-1]["cycle_id"]}).to_pylist()}
    assert last["starved"] == 1.0 and last["cycles_without_challenger"] == 3.0 and last["stagnant"] == 0.0
    first = {r["name"]: r["value"] for r in world.wh.select("metrics", {"cycle_id": results[0]["cycle_id"]}).to_pylist()}
    assert abs(sum(v for k, v in first.items() if k.startswith("mix.")) - 1.0) < 1e-9  # the window's task mix
