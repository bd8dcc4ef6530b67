"""Training throughput: the project's `train_lora` vs a bare transformers + peft loop, side by side.

Both train the same LoRA (same base model, data, tokenisation, batch size, learning rate and
steps) on the project's tiny model; the figure is training tokens (non-padding, prompt and
answer) per second of the training loop itself. `train_lora` is timed as a whole (Trainer set-up,
checkpoints every `checkpoint_steps`, saving the adapter and its probe answers included), and so
is the bare loop (loading, tokenising, forward, backward, optimizer step, saving the adapter).
Target (issue 7): within 10%.

Run: ``python benchmarks/training.py [--examples 800] [--epochs 2] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def bare_loop(base: str, dataset_path: Path, cfg) -> tuple[float, int]:
    """A plain loop with the same model, LoRA and batches, timed end to end like `train_lora`
    (loading, tokenising, training, saving the adapter): (seconds, tokens)."""
    started = time.perf_counter()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from flywheel.data.dataset import load_chat_dataset
    from flywheel.model.training import _PadCollator, tokenize_chat

    set_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                   target_modules=list(cfg.target_modules), task_type="CAUSAL_LM"),
    )  # fmt: skip
    train = load_chat_dataset(dataset_path)["train"]
    rows = [tokenize_chat(r, tok, cfg.max_length) for r in train]
    collate = _PadCollator(tok.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    # The same optimisation as the Trainer's defaults: linear decay, gradients clipped at 1.
    total = int(cfg.epochs) * ((len(rows) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total))
    model.train()
    tokens = 0
    for _ in range(int(cfg.epochs)):
        order = torch.randperm(len(rows)).tolist()
        for i in range(0, len(order), cfg.batch_size):
            batch = collate([rows[j] for j in order[i : i + cfg.batch_size]])
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            tokens += int(batch["attention_mask"].sum())
    model.save_pretrained(dataset_path.parent / "bare-adapter")
    return time.perf_counter() - started, tokens


def project_loop(base: str, dataset_path: Path, cfg, out: Path) -> tuple[float, int]:
    from transformers import AutoTokenizer

    from flywheel.data.dataset import load_chat_dataset
    from flywheel.model.training import tokenize_chat, train_lora

    tok = AutoTokenizer.from_pretrained(base)
    train = load_chat_dataset(dataset_path)["train"]
    tokens = int(cfg.epochs) * sum(len(tokenize_chat(r, tok, cfg.max_length)["input_ids"]) for r in train)
    started = time.perf_counter()
    train_lora(base_model=base, dataset_path=dataset_path, output_dir=out, config=cfg)
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-training-"))
    os.environ["FLYWHEEL_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.disable(logging.INFO)

    from flywheel.config import load_config
    from flywheel.data.dataset import build_chat_dataset
    from flywheel.records import candidate_from_row
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model
    from flywheel.sim.traffic import simulate_traffic

    config = load_config()
    info = build_tiny_model(config)
    base = resolve_base_model(config)
    logs = simulate_traffic(datetime(2026, 1, 5, tzinfo=UTC), lambda p: ["42"] * len(p), model_version="bench",
                            n_requests=args.examples, seed=5, malformed_rate=0.0).to_pylist()  # fmt: skip
    dataset = home / "dataset"
    build_chat_dataset([candidate_from_row(r) for r in logs], dataset, val_fraction=0.0)
    cfg = config.training.model_copy(update={"epochs": args.epochs})
    print(f"tiny model: {info.parameters:,} parameters; {args.examples} examples x {args.epochs} epochs, "
          f"batch {cfg.batch_size}, checkpoints every {cfg.checkpoint_steps} steps; {args.repeats} runs each, alternating")  # fmt: skip
    rates: dict[str, list[float]] = {"bare transformers+peft loop": [], "flywheel train_lora": []}
    for k in range(args.repeats):
        seconds, tokens = bare_loop(base, dataset, cfg)
        rates["bare transformers+peft loop"].append(tokens / seconds)
        seconds, tokens = project_loop(base, dataset, cfg, home / f"adapter-{k}")
        rates["flywheel train_lora"].append(tokens / seconds)
    for name, values in rates.items():
        print(f"  {name:<28} median {statistics.median(values):>9,.0f} tokens/s  (min {min(values):,.0f}, max {max(values):,.0f})")
    ratio = statistics.median(rates["flywheel train_lora"]) / statistics.median(rates["bare transformers+peft loop"])
    print(f"  train_lora / bare loop: {ratio:.2f}  (target >= 0.90)")


if __name__ == "__main__":
    main()
