"""Training throughput: the project's `train_lora` vs a bare transformers + peft loop, side by side.

Both train the same LoRA (same base model, data, tokenisation, batch size, learning rate and
steps) on the project's tiny model; the figure is training tokens (non-padding, prompt and
answer) per second of the training loop itself. `train_lora` is timed as a whole (Trainer set-up,
checkpoints every `checkpoint_steps`, saving the adapter and its probe answers included), and so
is the bare loop (loading, tokenising, forward, backward, optimizer step, saving the adapter).
Target (issue 7): within 10%.

``--base PATH`` trains another model instead (e.g. one `flywheel.sim.architectures` builds); on a
GPU both loops run there in the precision `train_lora` picks (bfloat16 where supported), and the
peak GPU memory of each is printed (`scripts/gpu_check.sh`; target there: within 20%).

Run: ``python benchmarks/training.py [--examples 800] [--epochs 2] [--repeats 3] [--base PATH]
[--batch-size N] [--gradient-checkpointing] [--load-in-4bit]``.
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
    from transformers import AutoTokenizer, set_seed

    from flywheel.data.dataset import load_chat_dataset
    from flywheel.model.architecture import (
        compute_dtype,
        load_base_for_training,
        lora_target_modules,
        prepare_tokenizer,
    )
    from flywheel.model.training import _PadCollator, tokenize_chat

    set_seed(cfg.seed)
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(base), base)
    dtype = compute_dtype(cfg.precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_base_for_training(base, cfg, dtype)  # from_pretrained (4-bit: with bitsandbytes' config)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(
        model,
        LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                   target_modules=lora_target_modules(model, cfg.target_modules), task_type="CAUSAL_LM"),
    ).to(device)  # fmt: skip
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
            batch = {k: v.to(device) for k, v in collate([rows[j] for j in order[i : i + cfg.batch_size]]).items()}
            with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
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
    from flywheel.model.architecture import prepare_tokenizer
    from flywheel.model.training import tokenize_chat, train_lora

    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(base), base)
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
    parser.add_argument("--base", help="a model folder to train instead of the tiny model")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--load-in-4bit", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-training-"))
    os.environ["FLYWHEEL_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.disable(logging.INFO)

    import torch
    from transformers import AutoModelForCausalLM

    from flywheel.config import load_config
    from flywheel.data.dataset import build_chat_dataset
    from flywheel.records import candidate_from_row
    from flywheel.sim.tinymodel import build_tiny_model, resolve_base_model
    from flywheel.sim.traffic import simulate_traffic

    config = load_config()
    if args.base:
        base = args.base
        parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())
    else:
        parameters = build_tiny_model(config).parameters
        base = resolve_base_model(config)
    logs = simulate_traffic(datetime(2026, 1, 5, tzinfo=UTC), lambda p: ["42"] * len(p), model_version="bench",
                            n_requests=args.examples, seed=5, malformed_rate=0.0).to_pylist()  # fmt: skip
    dataset = home / "dataset"
    build_chat_dataset([candidate_from_row(r) for r in logs], dataset, val_fraction=0.0)
    update = {"epochs": args.epochs, "gradient_checkpointing": args.gradient_checkpointing,
              "load_in_4bit": args.load_in_4bit, **({"batch_size": args.batch_size} if args.batch_size else {})}  # fmt: skip
    cfg = config.training.model_copy(update=update)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{base}: {parameters:,} parameters on {device}; {args.examples} examples x {args.epochs} epochs, "
          f"batch {cfg.batch_size}, checkpoints every {cfg.checkpoint_steps} steps; {args.repeats} runs each, alternating")  # fmt: skip
    rates: dict[str, list[float]] = {"bare transformers+peft loop": [], "flywheel train_lora": []}
    peak: dict[str, float] = {}

    def timed(name: str, run) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        seconds, tokens = run()
        rates[name].append(tokens / seconds)
        if torch.cuda.is_available():
            peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)

    for k in range(args.repeats):
        timed("bare transformers+peft loop", lambda: bare_loop(base, dataset, cfg))
        timed("flywheel train_lora", lambda: project_loop(base, dataset, cfg, home / f"adapter-{k}"))  # noqa: B023
    for name, values in rates.items():
        memory = f", peak GPU memory {peak[name]:.1f} GiB" if name in peak else ""
        print(f"  {name:<28} median {statistics.median(values):>9,.0f} tokens/s  (min {min(values):,.0f}, max {max(values):,.0f}){memory}")
    ratio = statistics.median(rates["flywheel train_lora"]) / statistics.median(rates["bare transformers+peft loop"])
    print(f"  train_lora / bare loop: {ratio:.2f}  (target >= 0.90)")


if __name__ == "__main__":
    main()
