"""Which golden set a deployment evaluates on: the simulator's (the demo's and the tests'), or a
curated file of the product's own tasks, such as one built from human-reviewed examples.

A curated golden set is a JSONL file, one task per line: ``task_type``, ``prompt``, ``answer``
(the reference an exact-match scorer compares with) and optionally ``context``. It is frozen by
content hash like the simulator's set: once a cycle has registered it (`golden_sets`), an edit in
place fails every evaluation (`check_golden_unchanged`); a new version is a new file. Its inputs
are kept out of every training set by the decontamination filter and re-checked on every cycle.

`golden_from_reviews` writes such a file from the review store: items people approved (with
their edit as the reference, if any) that the filters had rejected and that no training set
has held since, so no model was ever trained on them. ``python -m flywheel.evaluation.golden from-reviews OUT`` runs it against the configured
warehouse; an operator reads the file, then points `evaluation.golden_path` at it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from flywheel.config import FlywheelConfig, load_config
from flywheel.evaluation.offline import GoldenSet, GoldenSetError, load_golden_set
from flywheel.providers import task_templates
from flywheel.review.items import verdicts
from flywheel.tasks import Task
from flywheel.warehouse import Warehouse, warehouse_from_config


def golden_for(config: FlywheelConfig) -> GoldenSet:
    """The golden set ``config.evaluation`` names: a curated file, else one drawn from the
    product's task templates (`evaluation.task_templates`; the simulator's by default)."""
    ev = config.evaluation
    if ev.golden_path:
        required = ev.required_task_types
        if required is None:
            required = list(task_templates(ev.task_templates).TASK_TYPES)
        return load_curated_golden_set(config.resolve(ev.golden_path), required_task_types=required)
    return load_golden_set(config.artefacts_root, templates=task_templates(ev.task_templates), n=ev.golden_set_size,
                           seed=ev.golden_seed, required_task_types=ev.required_task_types)  # fmt: skip


def load_curated_golden_set(path: Path, *, required_task_types: list[str]) -> GoldenSet:
    """Read a curated golden set; a line that is not a complete task fails the whole set, with
    its line number (a golden set with holes would gate on the wrong items)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise GoldenSetError(f"evaluation.golden_path {path} does not exist") from None
    tasks, seen = [], set()
    for n, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise GoldenSetError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise GoldenSetError(f"{path}:{n}: expected an object with task_type, prompt, answer")
        missing = [k for k in ("task_type", "prompt", "answer") if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if missing:
            raise GoldenSetError(f"{path}:{n}: {', '.join(missing)} missing or empty")
        context = obj.get("context")
        if context is not None and not isinstance(context, str):
            raise GoldenSetError(f"{path}:{n}: context must be text")
        if (obj["prompt"], context) in seen:
            raise GoldenSetError(f"{path}:{n}: the same prompt and context as an earlier line")
        seen.add((obj["prompt"], context))
        tasks.append(Task(obj["task_type"], obj["prompt"], obj["answer"], context or None))
    if not tasks:
        raise GoldenSetError(f"{path}: no task in the curated golden set")
    uncovered = sorted(set(required_task_types) - {t.task_type for t in tasks})
    if uncovered:
        raise GoldenSetError(f"curated golden set {path} has no item of task type(s) {uncovered}: every slice must be "
                             "covered to be gated (or set evaluation.required_task_types to the product's types)")  # fmt: skip
    return GoldenSet(tasks, path, hashlib.sha256(raw).hexdigest())


def golden_from_reviews(wh: Warehouse, out: Path, *, per_task_type: int, seed: int = 0) -> dict[str, int]:
    """Write a curated golden set from approved review items no model trained on (the filters
    rejected them: only kept rows reach a dataset), at most ``per_task_type`` of each type,
    drawn at random with ``seed``. Returns the count per task type. PII was redacted when the
    items were sampled. Refuses to overwrite a file: a golden version is never edited."""
    if out.exists():
        raise GoldenSetError(f"{out} exists: a golden set version is immutable; write a new file")

    # Rejected by the filters of the cycle that sampled it, and in no training set since (a
    # monthly cycle re-filters its weeks and may keep what a weekly one rejected), nor gold.
    items = wh.query(
        "SELECT cycle_id, request_id, task_type, prompt, context, response, correction, user_action FROM review_items i "
        "WHERE NOT filter_kept AND NOT EXISTS (SELECT 1 FROM training_fingerprints t WHERE t.request_id = i.request_id) "
        "AND NOT EXISTS (SELECT 1 FROM gold_examples g WHERE g.request_id = i.request_id) ORDER BY cycle_id, request_id"
    ).to_pylist()
    by_cycle: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_cycle[item["cycle_id"]].append(item)
    pool: dict[str, dict[tuple[str, str | None], str]] = defaultdict(dict)
    for cycle_id, cycle_items in by_cycle.items():
        found = verdicts(wh, cycle_id)  # the majority of each item's reviewers; a tie rejects
        for item in cycle_items:
            v = found.get(item["request_id"])
            if v is None or not v.approved:
                continue
            own = item["correction"] if item["user_action"] == "corrected" and item["correction"] else item["response"]
            answer = v.edited_response or own
            if item["prompt"] and answer and answer.strip():
                pool[item["task_type"]].setdefault((item["prompt"], item["context"]), answer)
    rng = random.Random(seed)
    counts, lines = {}, []
    for task_type in sorted(pool):
        items = sorted(pool[task_type].items())
        rng.shuffle(items)
        chosen = items[:per_task_type]
        counts[task_type] = len(chosen)
        lines += [json.dumps({"task_type": task_type, "prompt": p, "context": c, "answer": a}, sort_keys=True)
                  for (p, c), a in chosen]  # fmt: skip
    if not lines:
        raise GoldenSetError("no approved review item that the filters had rejected: nothing to build a golden set from")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flywheel.evaluation.golden", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("from-reviews", help="write a curated golden set from approved, never-trained-on review items")
    build.add_argument("out", type=Path)
    build.add_argument("--per-task-type", type=int, default=50)
    build.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    wh = warehouse_from_config(load_config())
    try:
        counts = golden_from_reviews(wh, args.out, per_task_type=args.per_task_type, seed=args.seed)
    except GoldenSetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {sum(counts.values())} tasks ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
          "set evaluation.golden_path to it to evaluate on it")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
