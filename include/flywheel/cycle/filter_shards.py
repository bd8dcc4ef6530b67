"""Filter in shards: the window split by a hash of request_id, each shard through every rule but
dedup on any worker (Airflow's dynamic task mapping), then one merge that dedups and selects
over the whole window, so the kept set is the single-process chain's (`filtering.filter_candidates`).

Why it is exact:
- every rule but dedup and selection judges a row on the row alone (and the golden set), so
  which shard holds it does not matter;
- dedup judges last, only what every other rule kept ("the first usable copy wins"): a shard
  hands over those rows with their window position, their batch and their fingerprints (the
  costly part, MinHash, is done in the shard), and the merge checks them against the training
  history batch by batch in window order, as the single process does;
- selection ranks the survivors per task type against the window's candidate counts, which
  the merge sums over the shards; ties go to the smaller request id, whatever the order.

A shard's files (its decisions, its survivors, its counts) and the validated window it reads
go through the artefact store, so shards and merge may run on different machines.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.artefacts import ArtefactStore
from flywheel.cycle import spec
from flywheel.cycle.filtering import decisions_table, filter_batch, golden_inputs, training_history
from flywheel.cycle.spec import CycleSpec
from flywheel.filters import FilterChain, FilterDecision
from flywheel.filters.base import ChainInputs, interaction_text
from flywheel.filters.dedup import Fingerprints
from flywheel.filters.rules.dedup import DedupRule
from flywheel.filters.rules.selection import SelectionRule
from flywheel.tables import PRODUCTION_LOGS, rows_to_table
from flywheel.warehouse import Warehouse

SHARDS_DIR = "filter-shards"
SURVIVORS = PRODUCTION_LOGS.append(pa.field("position", pa.int64())).append(pa.field("batch", pa.int64())) \
    .append(pa.field("score", pa.float64())).append(pa.field("exact_key", pa.int64())).append(pa.field("signature", pa.binary()))  # fmt: skip


def shard_of(request_id: str, n_shards: int) -> int:
    """The shard a request belongs to: a stable hash of its id (the same on every machine and run)."""
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def plan_filter_shards(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """The shards the window is filtered in (``scale.filter_shards``), its validated rows published for them."""
    n = cycle.config.scale.filter_shards
    ArtefactStore(cycle.config).publish(cycle.file("valid.parquet"))
    rows = pq.ParquetFile(cycle.file("valid.parquet")).metadata.num_rows
    return {"shards": list(range(n)), "rows": rows}


def filter_shard(cycle: CycleSpec, wh: Warehouse, shard: int) -> dict[str, Any]:
    """Every rule but dedup over this shard's rows of the window; its decisions, its survivors
    (redacted, with window position, batch, selection score and fingerprints) and its candidate
    counts per task type, published under ``filter-shards/<shard>/``."""
    cfg, n = cycle.config, cycle.config.scale.filter_shards
    if not 0 <= shard < n:
        raise ValueError(f"shard {shard} of {n}")
    store = ArtefactStore(cycle.config)
    chain = FilterChain(cfg.filters, golden_inputs=golden_inputs(cfg))
    hasher = chain.dedup.hasher
    out = cycle.file(f"{SHARDS_DIR}/{shard}")
    out.mkdir(parents=True, exist_ok=True)
    now = spec.now()
    per_type: Counter[str] = Counter()
    decisions: list[pa.Table] = []
    writer = pq.ParquetWriter(out / "survivors.parquet", SURVIVORS)
    offset = 0
    try:
        for number, batch in enumerate(pq.ParquetFile(store.fetch(cycle.file("valid.parquet"))).iter_batches(
                batch_size=cfg.warehouse.read_batch_rows)):  # fmt: skip
            ids = batch.column("request_id").to_pylist()
            position = {rid: offset + i for i, rid in enumerate(ids)}
            offset += len(ids)
            mine = batch.filter(pa.array([shard_of(rid, n) == shard for rid in ids], pa.bool_()))
            work = filter_batch(mine)
            per_type.update(c.task_type for c in (*work.candidates, *work.pushed_down))
            outcome = chain.process(work.candidates, work.pushed_down, dedup=False)
            decisions.append(decisions_table(cycle, outcome.decisions, now))
            if not outcome.survivors:
                continue
            fp = hasher.fingerprint([interaction_text(s.candidate) for s in outcome.survivors])
            rows = [s.candidate.to_row() | {"position": position[s.candidate.request_id], "batch": number, "score": s.score,
                                            "exact_key": int(fp.exact[i]), "signature": fp.bits[i].tobytes()}
                    for i, s in enumerate(outcome.survivors)]  # fmt: skip
            writer.write_table(pa.Table.from_pylist(rows, schema=SURVIVORS))
    finally:
        writer.close()
    table = pa.concat_tables(decisions) if decisions else rows_to_table("decisions", [])
    pq.write_table(table, out / "decisions.parquet")
    (out / "counts.json").write_text(json.dumps({"per_type": dict(per_type)}))
    store.publish(out)
    survivors = pq.ParquetFile(out / "survivors.parquet").metadata.num_rows
    return {"shard": shard, "of": n, "candidates": sum(per_type.values()), "survivors_before_dedup": survivors}


def merge_filter_shards(cycle: CycleSpec, wh: Warehouse) -> dict[str, Any]:
    """Dedup and selection over every shard's survivors in window order; the cycle's decisions
    and ``kept.parquet``, as `filter_candidates` leaves them."""
    cfg, n = cycle.config, cycle.config.scale.filter_shards
    store = ArtefactStore(cycle.config)
    now = spec.now()
    dedup = DedupRule.from_config(cfg.filters, ChainInputs(history=training_history(cycle, wh)))
    selection = SelectionRule.from_config(cfg.filters, ChainInputs())
    per_type: Counter[str] = Counter()
    decision_tables: list[pa.Table] = []
    survivor_tables: list[pa.Table] = []
    for shard in range(n):
        folder = store.fetch(cycle.file(f"{SHARDS_DIR}/{shard}"))
        if not (folder / "counts.json").is_file():
            raise FileNotFoundError(f"filter shard {shard} of {n} left no output in {folder}: run its task first")
        per_type.update(json.loads((folder / "counts.json").read_text())["per_type"])
        decision_tables.append(pq.read_table(folder / "decisions.parquet"))
        survivor_tables.append(pq.read_table(folder / "survivors.parquet", schema=SURVIVORS))
    survivors = pa.concat_tables(survivor_tables).sort_by("position")
    kept_before: list[tuple[str, str, float]] = []
    dedup_decisions: list[FilterDecision] = []
    batches = survivors.column("batch").to_numpy()
    for number in np.unique(batches):  # ascending: the window's batch order
        group = survivors.filter(pc.equal(survivors.column("batch"), number))
        sig = np.frombuffer(b"".join(group.column("signature").to_pylist()), dtype=np.uint8)
        fp = Fingerprints(group.column("exact_key").to_numpy().astype(np.int64), sig.reshape(group.num_rows, -1))
        mine = dedup.judge_fingerprints(fp, group.column("request_id").to_pylist())
        dedup_decisions.extend(mine)
        kept_before.extend((d.request_id, t, s) for d, t, s in zip(
            mine, group.column("task_type").to_pylist(), group.column("score").to_pylist(), strict=True) if d.kept)  # fmt: skip
    chosen, selected = selection.select(kept_before, dict(per_type))
    decisions = pa.concat_tables([*decision_tables, decisions_table(cycle, [*dedup_decisions, *chosen], now)])
    wh.replace_partition("decisions", {"cycle_id": cycle.cycle_id}, decisions)
    kept = survivors.filter(pa.array([rid in selected for rid in survivors.column("request_id").to_pylist()], pa.bool_()))
    pq.write_table(kept.select(PRODUCTION_LOGS.names).cast(PRODUCTION_LOGS), cycle.file("kept.parquet"))
    n_candidates = sum(per_type.values())
    rejected_by = Counter(decisions.column("rule").filter(pc.invert(decisions.column("kept"))).to_pylist())
    return {"candidates": n_candidates, "kept": len(selected), "rejected": n_candidates - len(selected),
            "rejected_by_rule": dict(rejected_by), "shards": n}  # fmt: skip
