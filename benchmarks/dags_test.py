"""What one `airflow dags test` of the weekly cycle costs, with and without the cached in-process API.

`scripts/airflow_dags_test.py` backports apache/airflow#65235: Airflow 3.1 builds a new
in-process Execution API (a FastAPI app with Cadwyn's versioned routers) for every task that
``dag.test()`` runs, and the fix builds it once per call. The demo and the integration tests run
every cycle through ``dags test``, so this is their floor. Both commands run here side by side,
alternating, on the same warehouse and the same week of logs (``skip_training``, so the figure is
Airflow's and the light stages' time, not the training's), and the ratio is printed.

Run: ``python benchmarks/dags_test.py [--runs 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from flywheel.config import DEFAULT_CONFIG_PATH, load_config  # noqa: E402
from flywheel.model import registry  # noqa: E402
from flywheel.sim.localenv import airflow_env  # noqa: E402
from flywheel.sim.traffic import simulate_traffic  # noqa: E402
from flywheel.warehouse import warehouse_from_config  # noqa: E402

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)
COMMANDS = {
    "airflow dags test": [str(Path(sys.executable).with_name("airflow")), "dags", "test"],
    "scripts/airflow_dags_test.py": [sys.executable, str(ROOT / "scripts" / "airflow_dags_test.py")],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="runs of each command (alternating)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-dagstest-"))
    os.environ["FLYWHEEL_HOME"] = str(work / "flywheel")  # this process and the runs: one warehouse
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["review"]["enabled"] = False
    config_path = work / "flywheel.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path)
    wh = warehouse_from_config(config)
    wh.ensure_schema()
    registry.ensure_bootstrap_champion(wh, "stand-in")
    window_start = MONDAY - timedelta(days=config.extract.lag_days + config.extract.window_days)
    wh.merge("production_logs", simulate_traffic(window_start, lambda pairs: ["I am not sure." for _ in pairs],
                                                 model_version="stand-in", n_requests=400, seed=3))  # fmt: skip
    del wh
    env = airflow_env(work / "airflow", work / "flywheel", config_path=config_path)
    subprocess.run([COMMANDS["airflow dags test"][0], "db", "migrate"], env=env, check=True, capture_output=True)
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for k in range(args.runs):
        for name, cmd in COMMANDS.items():
            t = time.monotonic()
            proc = subprocess.run([*cmd, "flywheel_weekly", MONDAY.isoformat(), "-c", json.dumps({"skip_training": True})],
                                  env=env, capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                print(proc.stdout[-3000:] + proc.stderr[-3000:])
                raise SystemExit(f"{name} failed (exit {proc.returncode})")
            seconds[name].append(time.monotonic() - t)
            print(f"  run {k + 1}: {name:<30} {seconds[name][-1]:6.1f}s", flush=True)
    plain, cached = (statistics.fmean(v) for v in seconds.values())
    print(f"\nweekly cycle, skip_training, {args.runs} run(s) each (mean): airflow dags test {plain:.1f}s, "
          f"with the cached API {cached:.1f}s: {plain / cached:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
