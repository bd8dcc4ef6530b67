"""Filter chain throughput and memory: the whole chain vs each component alone, 100k and 1M rows.

For each size, synthetic production logs (the simulator's tasks and users, with PII, toxic
and duplicate rows mixed in) are written to a Parquet file; then each measurement runs in its
own process that streams the file in batches, so peak RSS is that measurement's alone:

- ``chain``: `flywheel.filters.filter_stream` exactly as the weekly cycle runs it (cheap rules,
  PII, toxicity, grounding, decontamination against the golden set, dedup, selection), with
  decisions streamed to a Parquet file;
- each component alone over *every* row: the cheap rules, PII redaction, toxicity, grounding,
  decontamination, dedup (fingerprint + index) and selection.

Targets (issue 4): chain rate >= 50% of its slowest component's own rate; peak RSS of the chain
at 1M rows <= 1.3x its peak at 100k.

Run: ``python benchmarks/filters.py [--sizes 100000 1000000] [--batch 5000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

COMPONENTS = ("cheap_rules", "pii", "toxicity", "grounding", "decontamination", "dedup", "selection")
PII_SNIPPETS = ["mail me at dana.smith@example.com", "call (212) 555-0198", "card 4111 1111 1111 1111"]


def make_data(path: Path, rows: int, batch: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flywheel.sim.traffic import simulate_traffic
    from flywheel.tables import PRODUCTION_LOGS

    rng = random.Random(rows)
    writer = pq.ParquetWriter(path, PRODUCTION_LOGS)
    week = datetime(2026, 1, 5, tzinfo=UTC)
    done = 0
    while done < rows:
        n = min(batch * 4, rows - done)
        table = simulate_traffic(
            week, lambda pairs: ["42"] * len(pairs), model_version="bench", n_requests=n, seed=done,
            malformed_rate=0.0, adversarial_rate=0.02,
        )  # fmt: skip
        data = table.to_pylist()
        for row in data:
            r = rng.random()
            if r < 0.02:
                row["prompt"] = f"{row['prompt']} {rng.choice(PII_SNIPPETS)}"
            elif r < 0.03:
                row["response"] = f"{row['response']} you stupid idiot"
        writer.write_table(pa.Table.from_pylist(data, schema=PRODUCTION_LOGS))
        done += n
    writer.close()


def _batches(path: Path, batch: int):
    import pyarrow.parquet as pq

    from flywheel.records import candidate_from_row

    for b in pq.ParquetFile(path).iter_batches(batch_size=batch):
        yield [candidate_from_row(r) for r in b.to_pylist()]


def _golden() -> list[str]:
    from flywheel.data.dataset import user_message
    from flywheel.sim.traffic import golden_set

    return [user_message(t.prompt, t.context) for t in golden_set(240, 20260101)]


def worker(what: str, path: Path, batch: int) -> dict[str, float]:
    """One measurement in this process: rows/s over the file, and this process's peak RSS."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flywheel.config import load_config
    from flywheel.filters import (
        FilterBatch,
        FilterChain,
        apply_filters,
        basic_rules,
        filter_stream,
        input_text,
        interaction_text,
        select_top,
    )
    from flywheel.filters.dedup import DedupIndex, MinHasher
    from flywheel.filters.pii import default_scanner
    from flywheel.filters.scorers import make_grounding_scorer, make_toxicity_scorer
    from flywheel.tables import rows_to_table

    # The simulated product answers in a word or two: the length rule counts the prompt with the
    # answer, as in the demo, so the later rules see the rows they would see there.
    cfg = load_config().with_overrides({"filters.length_counts": "prompt_and_response"}).filters
    golden = _golden()
    # Warm-up outside the timed loop: presidio, the toxicity model and datasketch load once.
    scanner = default_scanner(cfg.pii_entities, cfg.pii_min_score)
    scanner.redact("warm up 555-0198 a@b.com")
    toxicity = make_toxicity_scorer(cfg.toxicity_scorer)
    toxicity.score(["warm up"])
    grounding = make_grounding_scorer(cfg.grounding_scorer)
    hasher = MinHasher(num_perm=cfg.minhash_permutations, shingle_words=cfg.shingle_words)
    rows = 0
    started = time.perf_counter()
    if what == "chain":
        chain = FilterChain(cfg, golden_inputs=golden, toxicity=toxicity, grounding=grounding, pii=scanner)
        sink_path = path.with_suffix(f".decisions.{os.getpid()}.parquet")
        from flywheel.tables import DECISIONS

        sink = pq.ParquetWriter(sink_path, DECISIONS)
        now = datetime.now(UTC)

        def on_decisions(ds):
            sink.write_table(rows_to_table("decisions", [{**d.__dict__, "cycle_id": "bench", "decided_at": now} for d in ds]))

        stream, _, selected = filter_stream(
            (FilterBatch(cands) for cands in _batches(path, batch)), chain, on_decisions=on_decisions, on_survivors=lambda s: None
        )
        sink.close()
        sink_path.unlink()
        rows = stream.candidates
        extra = {"kept": len(selected), "dedup_index_mb": chain.dedup.nbytes / 2**20}
    else:
        extra = {}
        index = DedupIndex(hasher, cfg.near_dup_threshold if what == "dedup" else cfg.decontamination_threshold)
        if what == "decontamination":
            index.add(hasher.fingerprint(golden), [str(i) for i in range(len(golden))])
        rules = basic_rules(cfg)
        survivors: list[tuple[str, str, float]] = []
        per_type: dict[str, int] = {}
        for cands in _batches(path, batch):
            rows += len(cands)
            if what == "cheap_rules":
                apply_filters(cands, rules)
            elif what == "pii":
                for c in cands:
                    for text in (c.prompt, c.response, c.correction, c.context):
                        if text:
                            scanner.redact(text)
            elif what == "toxicity":
                toxicity.score([interaction_text(c) for c in cands])
            elif what == "grounding":
                grounding.score([(c.target, c.context) for c in cands if c.context])
            elif what == "decontamination":
                index.check(hasher.fingerprint([input_text(c) for c in cands]), [c.request_id for c in cands], add_unique=False)
            elif what == "dedup":
                index.check(hasher.fingerprint([interaction_text(c) for c in cands]), [c.request_id for c in cands])
            elif what == "selection":
                for c in cands:
                    per_type[c.task_type] = per_type.get(c.task_type, 0) + 1
                    survivors.append((c.request_id, c.task_type, c.quality_score))
        if what == "selection":
            select_top(survivors, per_type, keep_fraction=cfg.keep_fraction, min_per_task_type=cfg.min_per_task_type)
        if what == "dedup":
            extra["dedup_index_mb"] = index.nbytes / 2**20
    seconds = time.perf_counter() - started
    del pa
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}  # fmt: skip


def _run_worker(what: str, path: Path, batch: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", what, "--data", str(path), "--batch", str(batch)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"worker {what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--worker")
    parser.add_argument("--data")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.data), args.batch)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="flywheel-bench-filters-"))
    results: dict[int, dict[str, dict[str, float]]] = {}
    for n in args.sizes:
        path = tmp / f"logs-{n}.parquet"
        t = time.perf_counter()
        make_data(path, n, args.batch)
        print(f"\n== {n:,} rows (synthetic logs written in {time.perf_counter() - t:.0f}s; batches of {args.batch})")
        results[n] = {}
        for what in ("chain", *COMPONENTS):
            r = _run_worker(what, path, args.batch)
            results[n][what] = r
            note = "".join(f"  {k}={v:,.1f}" for k, v in r.items() if k in ("kept", "dedup_index_mb"))
            print(f"  {what:<16} {r['rows_per_s']:>10,.0f} rows/s  {r['seconds']:>7.1f}s  peak RSS {r['peak_rss_mb']:>7,.0f} MB{note}")
        path.unlink()
        slowest = min(COMPONENTS, key=lambda c: results[n][c]["rows_per_s"])
        ratio = results[n]["chain"]["rows_per_s"] / results[n][slowest]["rows_per_s"]
        print(f"  chain / slowest component ({slowest}): {ratio:.2f}  (target >= 0.50)")
    if len(args.sizes) >= 2:
        small, large = sorted(args.sizes)[0], sorted(args.sizes)[-1]
        ratio = results[large]["chain"]["peak_rss_mb"] / results[small]["chain"]["peak_rss_mb"]
        print(f"\nchain peak RSS {large:,} / {small:,} rows: {ratio:.2f}  (target <= 1.30)")


if __name__ == "__main__":
    main()
