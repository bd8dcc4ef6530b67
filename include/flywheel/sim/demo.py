"""The demo: a simulated product taken from cold start through weekly and monthly cycles, every
cycle run by real Airflow (`airflow dags test`).

Timeline (weeks are Mondays, UTC):

1. two weeks of beta users served by the base model; an operator's file of manual labels
   (with a few broken lines, which end in quarantine);
2. ``flywheel_bootstrap`` on the first Monday ``B``: synthetic examples + manual labels + the
   beta traffic ``[B - 14 d, B)`` give model v1 and the golden set's first version;
3. the product serves three weeks; then each Monday ``T`` Airflow runs ``flywheel_weekly``
   (reading ``[T - 21 d, T - 14 d)``) and the product serves week ``T`` with whatever champion
   that cycle left;
4. ``flywheel_monthly`` on the following Monday consolidates four weeks plus the gold set.

Every accuracy printed is measured on the golden set, and every user action in the logs is a
simulated user's reaction to a real answer of the model that served it.

Run: ``python -m flywheel.sim.demo [--cycles N] [--keep]``.

Why this module is long: it is the whole story in order (serve, review, run each DAG, monitor,
print the tables), which reads best in one place; each step calls the core.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from flywheel.config import (
    DEFAULT_CONFIG_PATH,
    PROJECT_ROOT,
    FlywheelConfig,
    flywheel_home,
    load_config,
)
from flywheel.evaluation.monitor import format_experiments_table, needs_monitoring
from flywheel.evaluation.offline import format_offline_table, gate_summary
from flywheel.model import registry
from flywheel.ops.curve import CURVE_FILE, write_learning_curve
from flywheel.ops.metrics import (
    cycles_report,
    format_cycles_table,
    format_rule_table,
    rule_pass_rates,
)
from flywheel.ops.report import format_new_data_table, format_velocity_table, velocity_rows
from flywheel.review.items import agreement
from flywheel.runconfig import build_run_config
from flywheel.sim.localenv import airflow_env, dags_test_command
from flywheel.sim.product import (
    BETA_SHARE,
    BETA_WEEKS,
    FIRST_WEEK,
    MONITOR_DAYS,
    serve_week,
    write_demo_labels,
)
from flywheel.sim.reviewers import run_simulated_reviewers
from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model
from flywheel.warehouse import Warehouse, warehouse_from_config

log = logging.getLogger("flywheel.sim.demo")

DAG_ID = "flywheel_weekly"
# A coordinated poisoning campaign (a third of users approve wrong answers, "fix" right ones and
# fool the quality estimate) during the product week this weekly cycle reads: it must be caught.
POISON_CYCLE = 4
POISON_RATE = 0.3
def run_airflow_cycle(
    logical_date: datetime, env: dict[str, str], log_dir: Path, *, dag_id: str = DAG_ID, conf: dict | None = None
) -> None:
    """``airflow dags test`` for one logical date; its full log is kept, its failure is loud."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{dag_id}-{logical_date:%Y%m%d}.log"
    cmd = dags_test_command(dag_id, logical_date.isoformat(), conf)
    with log_file.open("w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-40:])
        raise SystemExit(f"airflow dags test {dag_id} {logical_date:%Y-%m-%d} failed (exit {proc.returncode}); log: {log_file}\n{tail}")


def serve_week_with_monitor(
    config: FlywheelConfig, wh: Warehouse, monday: datetime, env: dict[str, str], logs: Path, truth: dict[str, str],
    *, poison_rate: float | None = None,
) -> None:
    """Serve the week in slices, running `ab_monitor` through Airflow between them, so that a
    ramp, a promotion or a rollback changes who serves the rest of the week."""
    t = monday
    for k, days in enumerate(MONITOR_DAYS):
        log.info("product days %s", serve_week(config, wh, t, days=days, truth=truth, poison_rate=poison_rate))
        t += timedelta(days=days)
        if k < len(MONITOR_DAYS) - 1 and needs_monitoring(wh, t, config.experiment):
            run_airflow_cycle(t, env, logs, dag_id="ab_monitor")


class SimulatedReviewers:
    """Two simulated reviewers (the simulator's oracle, 2% slips) working in the background, as
    people would: whenever a cycle's review sample is waiting, they review it, while the cycle's
    `wait_for_review` task waits deferred."""

    REVIEWERS = ("sim-reviewer-1", "sim-reviewer-2")

    def __init__(self, wh: Warehouse, truth: dict[str, str], reviewers_per_item: int) -> None:
        self.wh, self.truth, self.per_item = wh, truth, reviewers_per_item
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="simulated-reviewers", daemon=True)
        self.written = 0

    def _run(self) -> None:
        while not self.stop.wait(2.0):
            try:
                self.written += run_simulated_reviewers(self.wh, self.truth, reviewers=self.REVIEWERS,
                                                        reviewers_per_item=self.per_item)  # fmt: skip
            except Exception as exc:  # a locked warehouse, say: people come back later too
                log.warning("simulated reviewers: %s; retrying", exc)

    def __enter__(self) -> SimulatedReviewers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def demo_config(home: Path) -> Path:
    """The project's config with the demo's pace. Review: the wait polls every 2 seconds (5
    minutes in production) and every item gets two reviewers, so agreement is measured.

    A/B: the simulated product serves about 170 requests a day, where production serves
    thousands, so the default test (a 5-point lift: about 1,000 rows per arm, up to 3 times that
    before it gives up) would never finish within the week before the next challenger. The demo
    plans for a 10-point lift (263 rows per arm at a 26% acceptance), starts at 20% of traffic,
    and decides at the planned sample: promote on a significant win, roll back on a significant
    loss or a guardrail breach, otherwise stop and keep the champion."""

    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    # A run triggered by hand in `make airflow` on the demo's data has no simulated reviewers:
    # after 10 minutes it goes on with what people reviewed (`on_deadline: proceed`, logged).
    data["review"].update({"poll_seconds": 2, "reviewers_per_item": 2, "deadline_hours": 1 / 6, "on_deadline": "proceed"})
    # The tiny model is pre-trained from scratch in a minute, not for months: a cycle's few
    # hundred examples teach it only in five passes at a LoRA learning rate a 7B model would not
    # take (the shipped defaults, one pass at 1e-3, are a real model's).
    data["training"].update({"epochs": 5, "learning_rate": 0.003})
    # About 300 requests a day: enough that a week's kept examples move the model and that an
    # A/B test of a few points' lift decides within the week.
    data["simulate"]["requests_per_week"] = 2000
    # The simulated product's answers are one or two words, checkable by exact match, where a
    # real chat product's responses are sentences: counting the response alone would keep none.
    data["filters"]["length_counts"] = "prompt_and_response"
    data["experiment"].update({"ramp": [0.2, 0.5], "min_rows_per_step": 30, "min_detectable_effect": 0.1,
                               "max_sample_factor": 1.0})  # fmt: skip
    path = home / "demo-flywheel.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def print_reviews(wh: Warehouse) -> None:
    """Per cycle: the review sample, how much was reviewed, agreement, and the calibration."""
    cycles = wh.query("SELECT DISTINCT cycle_id FROM review_items ORDER BY cycle_id").column("cycle_id").to_pylist()
    print("\nHuman review (simulated reviewers: the simulator's oracle with 2% slips, two per item):\n")
    for c in cycles:
        items = wh.query("SELECT slice, COUNT(*) AS n FROM review_items WHERE cycle_id = $c GROUP BY slice", {"c": c}).to_pylist()
        n = {r["slice"]: r["n"] for r in items}
        verdicts = wh.query("SELECT verdict, COUNT(*) AS n FROM reviews WHERE cycle_id = $c GROUP BY verdict", {"c": c}).to_pylist()
        v = {r["verdict"]: r["n"] for r in verdicts}
        a = agreement(wh, [c])
        kappa = f", kappa {a['kappa']:.2f}" if a["kappa"] is not None else ""
        pairwise = f"{a['pairwise']:.1%}" if a["pairwise"] is not None else "-"
        print(f"  {c}: sample {sum(n.values())} ({n.get('priority', 0)} prioritised, {n.get('random', 0)} random); "
              f"{v.get('approve', 0)} approvals, {v.get('reject', 0)} rejections; reviewer agreement {pairwise}{kappa}")  # fmt: skip
    if cycles and (a := agreement(wh, cycles))["items"]:
        kappa = f", kappa {a['kappa']:.2f}" if a["kappa"] is not None else ""
        print(f"  all cycles: {a['items']} items reviewed twice; reviewer agreement {a['pairwise']:.1%}{kappa}")
    for r in wh.query("SELECT * FROM config_versions ORDER BY logical_date").to_pylist():
        per_rule = json.loads(r["per_rule_json"])
        moved = ", ".join(f"{rule} {p['threshold_before']:g} -> {p['threshold_after']:g}" for rule, p in per_rule.items())
        print(f"  calibration {r['cycle_id']}: {r['n_reviews']} random-slice reviews, filter/human agreement "
              f"{r['agreement_before']:.1%} -> {r['agreement_after']:.1%}; {moved}; "
              f"{'ADOPTED for later cycles' if r['adopted'] else 'not adopted'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=6, help="weekly cycles to run through Airflow (default 6)")
    parser.add_argument("--poison-cycle", type=int, default=POISON_CYCLE,
                        help=f"the weekly cycle (1-based) whose window a poisoning campaign hits (default {POISON_CYCLE}; 0: none)")
    parser.add_argument("--keep", action="store_true", help="keep the previous demo's warehouse and artefacts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "datasets", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


    started = time.monotonic()
    home = flywheel_home()
    config_path = demo_config(home)
    config = load_config(config_path)
    if not args.keep:
        # A fresh run each time; the tiny model's cached build is kept (it is rebuilt only
        # when its config changes).
        for stale in (config.duckdb_path, config.artefacts_root / "cycles", config.artefacts_root / "datasets",
                      config.artefacts_root / "adapters", config.artefacts_root / "reports"):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    airflow_home = PROJECT_ROOT / ".airflow"
    env = airflow_env(airflow_home, home, config_path=config_path)

    info = build_tiny_model(config)
    log.info("tiny model: %s (%d parameters, %s)", info.path, info.parameters,
             f"built in {info.build_seconds:.1f}s" if info.rebuilt else "cached")
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    registry.ensure_bootstrap_champion(wh, resolve_base_model(config))

    subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs = airflow_home / "demo-logs"
    truth: dict[str, str] = {}
    # Cold start: beta weeks served by the base model, then the bootstrap cycle.
    for w in range(BETA_WEEKS, 0, -1):
        log.info("beta week %s", serve_week(config, wh, FIRST_WEEK - timedelta(weeks=w), truth=truth, volume=BETA_SHARE))
    labels = write_demo_labels(home / "labels" / "manual_labels.jsonl")
    t = time.monotonic()
    run_airflow_cycle(FIRST_WEEK, env, logs, dag_id="flywheel_bootstrap", conf={"labels_path": str(labels)})
    log.info("bootstrap cycle ran through Airflow in %.0fs", time.monotonic() - t)
    # The weekly runs' window as their DAG builds it (no overrides, empty params): the product
    # serves that long before the first weekly cycle has a full window to read.
    weekly = build_run_config(config).config
    lag_weeks = (weekly.extract.lag_days + weekly.extract.window_days) // 7
    # Weekly cycle k (1-based) reads product week k - 1: the poisoned week is that one.
    poisoned = lambda week: POISON_RATE if args.poison_cycle and week == args.poison_cycle - 1 else None  # noqa: E731
    for w in range(lag_weeks):
        log.info("product week %s", serve_week(config, wh, FIRST_WEEK + timedelta(weeks=w), truth=truth,
                                               poison_rate=poisoned(w)))  # fmt: skip
    with SimulatedReviewers(wh, truth, config.review.reviewers_per_item):
        for k in range(args.cycles):
            monday = FIRST_WEEK + timedelta(weeks=lag_weeks + k)
            t = time.monotonic()
            run_airflow_cycle(monday, env, logs)
            log.info("cycle for %s ran through Airflow in %.0fs", f"{monday:%Y-%m-%d}", time.monotonic() - t)
            serve_week_with_monitor(config, wh, monday, env, logs, truth, poison_rate=poisoned(lag_weeks + k))
    monthly_date = FIRST_WEEK + timedelta(weeks=lag_weeks + args.cycles)
    t = time.monotonic()
    run_airflow_cycle(monthly_date, env, logs, dag_id="flywheel_monthly")
    log.info("monthly cycle ran through Airflow in %.0fs", time.monotonic() - t)

    print_bootstrap(wh)
    print_reviews(wh)
    rows = cycles_report(wh)
    print("\nFlywheel cycles (each run by `airflow dags test <dag> <monday>`: bootstrap, weekly, monthly):\n")
    print(format_cycles_table(rows))
    first, last = rows[0], rows[-1]
    base_acc = first["champion_accuracy"]
    final = registry.current_champion(wh)
    final_acc = next((r["challenger_accuracy"] for r in rows if r["challenger"] == final), base_acc)
    print(f"\nGolden-set accuracy: base {base_acc:.3f} -> champion {final} {final_acc:.3f}"
          if base_acc is not None and final_acc is not None else "")
    last_metrics = {r["name"]: r["value"] for r in wh.select("metrics", {"cycle_id": last["cycle_id"]}).to_pylist()}
    stalled = wh.query(
        "SELECT message FROM alerts WHERE kind = 'stagnation' ORDER BY raised_at DESC LIMIT 1"
    ).to_pylist()
    print(
        f"Velocity (last cycle): {last_metrics.get('examples_per_day', 0):.1f} examples/day, pass rate "
        f"{last_metrics.get('filter_pass_rate', 0):.1%}, {int(last_metrics.get('cycles_without_gain', 0))} evaluated "
        "cycles without a gain of at least velocity.stagnation_min_delta"
        + (f"\nStagnation alert: {stalled[0]['message']}" if stalled and last_metrics.get("stagnant") else "")
    )
    print_offline_and_ab(wh)
    print("\nPer-rule pass rates (share kept of the rows each rule judged, and how many it judged):\n")
    print(format_rule_table(rule_pass_rates(wh)))
    gates = wh.query(
        "SELECT gate, COUNT(*) AS runs, SUM(CASE WHEN success THEN 1 ELSE 0 END) AS passed FROM gate_results "
        "GROUP BY gate ORDER BY gate"
    ).to_pylist()
    print("\nGates: " + ", ".join(f"{g['gate']} passed {g['passed']}/{g['runs']}" for g in gates)
          + f"  (Data Docs: {config.artefacts_root / 'data_docs' / 'index.html'})")
    pii = wh.query(
        "SELECT COUNT(*) AS rows, COALESCE(SUM(score), 0) AS values FROM decisions WHERE rule = 'pii' AND score > 0"
    ).to_pylist()[0]
    print(f"PII: {int(pii['values'])} values in {pii['rows']} candidates redacted before any dataset, index or log saw them")
    quarantine = wh.query(
        "SELECT field, rule, COUNT(*) AS n FROM quarantine GROUP BY field, rule ORDER BY n DESC"
    ).to_pylist()
    print("Quarantined, by reason: " + ", ".join(f"{q['field']}.{q['rule']}={q['n']}" for q in quarantine))

    print("\nVelocity per cycle, with the phase each ended in (days to gain: since the previous promotion):\n")
    print(format_velocity_table(velocity_rows(wh)))
    diagnosis = wh.query("SELECT message FROM alerts WHERE kind IN ('stagnation', 'starved') ORDER BY raised_at DESC LIMIT 1").to_pylist()
    if diagnosis:
        print(f"Diagnosis: {diagnosis[0]['message']}")
    print_curve(wh, config)
    poisoned_cycle = (f"{DAG_ID}-{FIRST_WEEK + timedelta(weeks=lag_weeks + args.poison_cycle - 1):%Y%m%dT%H%M}"
                      if args.poison_cycle else None)  # fmt: skip
    print_challengers(wh, poisoned_cycle)
    reports = sorted((config.artefacts_root / "reports").glob("*/report.md"))
    print(f"\nReports:    {len(reports)} cycle reports with plots; the monthly one: "
          + next((str(p.parent) for p in reports if "monthly" in p.parent.name), "-"))
    curve = write_learning_curve(wh, config.phases, config.artefacts_root / "reports" / CURVE_FILE)
    print(f"Curve:      {curve} (golden-set accuracy per cycle on the phase bands)")
    print(f"\nWarehouse:  {config.duckdb_path}")
    print(f"Artefacts:  {config.artefacts_root} (base_models/, datasets/, adapters/, golden/, cycles/, reports/)")
    print(f"Airflow:    AIRFLOW_HOME={airflow_home}; run logs in {airflow_home / 'demo-logs'}")
    print(f"Demo time:  {time.monotonic() - started:.0f}s for {len(rows)} cycles (last: {last['cycle_id']})")
    unread = unread_traffic(wh)
    if unread:
        print(f"By hand:    `make airflow`, unpause flywheel_weekly, Trigger it with window_start {unread[0]:%Y-%m-%d}: "
              f"{unread[1]} logged rows no cycle has read yet (README, \"The operator's path\")")
    return 0


def unread_traffic(wh: Warehouse) -> tuple[datetime, int] | None:
    """Where the logs no cycle's window has read begin, and how many rows there are: the window
    a person trying the UI after the demo should give a run by hand. None when every row was read."""
    end = wh.query("SELECT MAX(window_end) AS t FROM cycles").column("t")[0].as_py()
    if end is None:
        return None
    n = wh.query("SELECT COUNT(*) AS n FROM production_logs WHERE timestamp >= $t", {"t": end}).column("n")[0].as_py()
    return (end, n) if n else None


def print_offline_and_ab(wh: Warehouse) -> None:
    """Per cycle: golden-set scores with 95% bootstrap intervals and the offline gate; then each
    A/B test's measurements and decision, and every decision on the champion pointer."""
    print("\nOffline gate per cycle (golden set, paired bootstrap 95% intervals, per-slice rule):\n")
    print(format_offline_table(wh.query("SELECT * FROM offline_comparisons ORDER BY compared_at").to_pylist()))
    new_data = wh.query("SELECT * FROM new_data_comparisons ORDER BY logical_date").to_pylist()
    if new_data:
        print("\nNew data vs old data (the challenger against its twin trained without the newest window):\n")
        print(format_new_data_table(new_data))
    print("\nA/B tests (acceptance = accepted + copied, measured per arm from the logs; one-sided z-test):\n")
    print(format_experiments_table(wh))
    print("\nChampion pointer decisions:")
    for p in wh.query("SELECT * FROM promotions ORDER BY logical_date, decided_at").to_pylist():
        print(f"  {p['logical_date']:%Y-%m-%d %H:%M} {p['cycle_id']}: {p['champion_before'] or '-'} -> {p['champion_after']}: {p['reason']}")


def print_curve(wh: Warehouse, config: FlywheelConfig) -> None:
    """The learning curve as a table: per cycle, the champion's golden accuracy once the cycle
    (and, for a weekly one, the A/B test it started) was decided, and the phase it ended in."""
    rows = cycles_report(wh)
    print("\nLearning curve (golden-set accuracy of the champion; every point measured):\n")
    print(f"{'cycle':<34} {'champion at start':>17} {'challenger':>10} {'decision':>22} {'phase':>11}")
    for r in rows:
        acc = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        print(f"{r['cycle_id']:<34} {acc(r['champion_accuracy']):>17} {acc(r['challenger_accuracy']):>10} "
              f"{_decision_of(r):>22} {r['phase'] or '-':>11}")  # fmt: skip
    final = registry.current_champion(wh)
    scores = {r["challenger"]: r["challenger_accuracy"] for r in rows if r["challenger"]}
    if final in scores:
        print(f"{'now':<34} {acc(scores[final]):>17}   champion {final}")


def _decision_of(row: dict) -> str:
    if row.get("ab_status"):
        return {"promoted": "A/B: promoted", "rolled_back": "A/B: rolled back", "stopped": "A/B: stopped, kept",
                "running": "A/B: running"}.get(row["ab_status"], f"A/B: {row['ab_status']}")  # fmt: skip
    if not row["challenger"]:
        return "no challenger"
    return "promoted offline" if row["promoted"] else "rejected offline"


def print_challengers(wh: Warehouse, poisoned_cycle: str | None) -> None:
    """What became of each challenger: the offline gate, the A/B test, the champion pointer."""
    gates = {r["cycle_id"]: r for r in wh.query("SELECT * FROM offline_comparisons").to_pylist()}
    print("\nEvery challenger's fate:\n")
    for r in cycles_report(wh):
        if not r["challenger"]:
            continue
        gate = gates.get(r["cycle_id"])
        gate_s = f"{gate['delta']:+.3f}: {gate_summary(gate)}" if gate else "-"
        mark = "  <- trained on the poisoned week" if r["cycle_id"] == poisoned_cycle else ""
        print(f"  {r['challenger']:<34} {_decision_of(r):<22} offline gate {gate_s}{mark}")


def print_bootstrap(wh: Warehouse) -> None:
    """What the cold start made of its sources."""
    (boot,) = wh.query("SELECT * FROM cycles WHERE dag_id = 'flywheel_bootstrap' ORDER BY logical_date DESC LIMIT 1").to_pylist()
    sources = wh.query(
        "SELECT CASE WHEN request_id LIKE 'manual-%' THEN 'manual labels' WHEN request_id LIKE 'synthetic-%' "
        "THEN 'synthetic' ELSE 'beta traffic' END AS source, COUNT(DISTINCT request_id) AS n, "
        "COUNT(DISTINCT CASE WHEN kept THEN NULL ELSE request_id END) AS rejected FROM decisions WHERE cycle_id = $c "
        "GROUP BY 1 ORDER BY 1",
        {"c": boot["cycle_id"]},
    ).to_pylist()
    unreadable = wh.query("SELECT reason FROM quarantine WHERE cycle_id = $c AND request_id LIKE 'manual-%' OR "
                          "(cycle_id = $c AND rule = 'unreadable')", {"c": boot["cycle_id"]}).to_pylist()  # fmt: skip
    gold = wh.count("gold_examples", {"source": "manual_labels"})
    golden = wh.query("SELECT golden_hash, n_items FROM golden_sets ORDER BY created_at LIMIT 1").to_pylist()
    print(f"\nCold start ({boot['cycle_id']}): " + ", ".join(f"{s['source']} {s['n']} ({s['rejected']} filtered out)" for s in sources)
          + f"; {len(unreadable)} manual-label rows quarantined; {gold} gold examples from the labels; "
          + f"v1 {'promoted' if boot['promoted'] else 'not promoted'} ({boot['champion_accuracy']:.3f} -> "
          + f"{boot['challenger_accuracy'] or 0:.3f}); phase {boot['phase']}"
          + (f"; golden set v1 {golden[0]['golden_hash'][:12]} ({golden[0]['n_items']} items)" if golden else ""))
    for q in unreadable:
        print(f"  quarantined: {q['reason']}")


if __name__ == "__main__":
    raise SystemExit(main())
