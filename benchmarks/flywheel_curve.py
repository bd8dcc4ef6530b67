"""Ablations: does each part of the flywheel earn its place?

The same simulated product, the same seeds and the same number of weekly cycles for each arm,
run in process (`flywheel.sim.loop`: the DAGs' stages without Airflow):

  full            the flywheel as shipped (the demo's config)
  no_filters      no quality filters: every logged row trains, regenerations (the answer the user
                  rejected) and adversarial users' "corrections" included; no review
  no_corrections  corrected rows are dropped: only accepted and copied answers train
  random_review   the review sample drawn at random instead of prioritised
  review_B        a prioritised review budget B (5% of candidates, no random slice)
  random_10B      a random review budget of 10 x B (50% of candidates)

For each arm: golden-set accuracy of the champion after the last cycle, and the area under the
champion's accuracy curve (mean accuracy over the cycles, bootstrap included), as the mean over
seeds with a 95% t-interval (scipy.stats), and a PNG of the curves.

    python benchmarks/flywheel_curve.py [--seeds 3] [--cycles 6] [--arms full,no_filters,...]
    python benchmarks/flywheel_curve.py --quick    # full vs no_filters, 1 seed, 2 cycles: < 5 min
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from flywheel.config import FlywheelConfig, load_config  # noqa: E402
from flywheel.sim.demo import demo_config  # noqa: E402
from flywheel.sim.loop import run_flywheel  # noqa: E402
from flywheel.sim.tinymodel import build_tiny_model  # noqa: E402

NO_POLICY = {"cold_start": {}, "growth": {}, "maturity": {}}
ARMS: dict[str, dict] = {
    "full": {},
    "no_filters": {
        "filters.allowed_actions": ["accepted", "copied", "corrected", "regenerated"],
        "filters.min_quality_score": 0.0, "filters.min_words": 0, "filters.min_tokens": 0,
        "filters.max_toxicity": 1.0, "filters.min_grounding": 0.0, "filters.keep_fraction": 1.0,
        "review.enabled": False, "calibration.enabled": False, "phases.policy": NO_POLICY,
    },
    "no_corrections": {"filters.allowed_actions": ["accepted", "copied"]},
    "random_review": {"review.random_share": 1.0},
    "review_B": {"review.sample_rate": 0.05, "review.random_share": 0.0},
    "random_10B": {"review.sample_rate": 0.5, "review.random_share": 1.0},
}  # fmt: skip


def arm_config(home: Path, base_model: Path, overrides: dict, seed: int, requests: int | None) -> FlywheelConfig:
    config = load_config(demo_config(home)).model_copy(update={"home": home})
    extra = {"simulate.seed": seed, "training.base_model": str(base_model), **overrides}
    if requests:
        extra["simulate.requests_per_week"] = requests
    return config.with_overrides(extra)


def interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval (one seed: no interval)."""
    from scipy import stats

    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan"), float("nan")
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=m, scale=stats.sem(xs))
    return m, float(lo), float(hi)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=6)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--requests", type=int, default=None, help="requests per simulated week (default: the demo's)")
    parser.add_argument("--quick", action="store_true", help="full vs no_filters, 1 seed, 2 cycles")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.cycles, args.arms = 1, 2, "full,no_filters"
    logging.basicConfig(level=logging.WARNING)
    arms = args.arms.split(",")
    work = Path(tempfile.mkdtemp(prefix="flywheel-curve-"))
    started = time.monotonic()
    # One base model for every arm and seed (built once, from the demo's tiny-model config).
    shared = arm_config(work / "base", work, {}, 0, None)
    base = build_tiny_model(shared).path
    curves: dict[str, list[list[float]]] = {a: [] for a in arms}
    try:
        for seed in range(1, args.seeds + 1):
            for arm in arms:
                t = time.monotonic()
                home = work / f"{arm}-{seed}"
                run = run_flywheel(arm_config(home, base, ARMS[arm], seed, args.requests), cycles=args.cycles)
                curve = run.champion_curve()
                curves[arm].append(curve)
                print(f"  {arm:<15} seed {seed}: " + " ".join(f"{a:.3f}" for a in curve)
                      + f"  ({time.monotonic() - t:.0f}s)", flush=True)  # fmt: skip
                # Each finished run is kept at once: a stopped benchmark still leaves its curves.
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "flywheel_curve.partial.yaml").write_text(yaml.safe_dump({"arms": curves, "cycles": args.cycles}))
                shutil.rmtree(home, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nAblations: {args.seeds} seed(s), bootstrap + {args.cycles} weekly cycles each "
          f"({time.monotonic() - started:.0f}s in all)\n")  # fmt: skip
    print(f"{'arm':<15} {'final accuracy (95% CI)':>28} {'area under curve (95% CI)':>30}")
    for arm in arms:
        final = interval([c[-1] for c in curves[arm]])
        auc = interval([statistics.fmean(c) for c in curves[arm]])
        print(f"{arm:<15} {final[0]:>8.3f} [{final[1]:.3f}, {final[2]:.3f}]      {auc[0]:>8.3f} [{auc[1]:.3f}, {auc[2]:.3f}]")
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / ("flywheel_curve_quick.png" if args.quick else "flywheel_curve.png")
    plot(curves, png)
    (args.out / png.with_suffix(".yaml").name).write_text(yaml.safe_dump({"arms": curves, "seeds": args.seeds}))
    print(f"\nPNG: {png}")
    return 0


def plot(curves: dict[str, list[list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for arm, runs in curves.items():
        n = min(len(c) for c in runs)
        mean = [statistics.fmean(c[i] for c in runs) for i in range(n)]
        ax.plot(range(n), mean, marker="o", label=arm)
        for c in runs:
            ax.plot(range(len(c)), c, alpha=0.15, color=ax.lines[-1].get_color())
    ax.set_xlabel("cycle (0 = bootstrap)")
    ax.set_ylabel("champion golden accuracy")
    ax.set_ylim(0, 1)
    ax.axhspan(0.6, 0.9, alpha=0.06, color="tab:blue")
    ax.axhspan(0.9, 1.0, alpha=0.08, color="tab:green")
    ax.legend()
    ax.set_title("Flywheel ablations (mean over seeds; thin lines: each seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
