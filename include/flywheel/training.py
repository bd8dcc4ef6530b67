"""LoRA fine-tuning with transformers + peft: the same code for the tiny model on a CPU and a
7B model on a GPU; only the `TrainingConfig` differs.

A challenger continues from the champion's adapter when the champion has one (the flywheel
accumulates what earlier cycles learnt) and starts a fresh LoRA on the base model otherwise. The
loss covers the assistant's answer only. The adapter is written to a temporary folder and moved
into place at the end, so a killed task never leaves a half-written adapter behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flywheel.config import TrainingConfig
from flywheel.errors import TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    adapter_path: Path
    train_loss: float
    steps: int
    n_examples: int
    seconds: float


def tokenize_chat(example: dict[str, Any], tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Token ids of the whole chat, with labels masked (-100) over everything but the answer."""
    messages = example["messages"]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n_prompt >= len(ids):
        raise TrainingError(f"request {example.get('request_id')}: the answer has no tokens after the prompt")
    labels = [-100] * n_prompt + ids[n_prompt:]
    # Truncate from the left of the prompt, never the answer: the answer is what is learnt.
    if len(ids) > max_length:
        ids, labels = ids[-max_length:], labels[-max_length:]
    return {"input_ids": ids, "labels": labels}


class _PadCollator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for r, f in enumerate(features):
            n = len(f["input_ids"])
            ids[r, :n] = torch.tensor(f["input_ids"])
            labels[r, :n] = torch.tensor(f["labels"])
            mask[r, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_lora(
    *,
    base_model: str,
    dataset_path: Path,
    output_dir: Path,
    config: TrainingConfig,
    parent_adapter: str | None = None,
    lineage: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on the chat dataset at ``dataset_path``; save it to ``output_dir``."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from flywheel.dataset import load_chat_dataset

    set_seed(config.seed)
    started = time.monotonic()
    data = load_chat_dataset(dataset_path)
    train = data["train"]
    if len(train) == 0:
        raise TrainingError(f"dataset {dataset_path} has no training rows")

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if parent_adapter:
        model = PeftModel.from_pretrained(model, parent_adapter, is_trainable=True)
    else:
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.target_modules),
                task_type="CAUSAL_LM",
            ),
        )

    columns = train.column_names
    tokenized = train.map(
        tokenize_chat, fn_kwargs={"tokenizer": tokenizer, "max_length": config.max_length}, remove_columns=columns
    )
    work = output_dir.with_name(output_dir.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(work / "checkpoints"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=tokenized, data_collator=_PadCollator(tokenizer.pad_token_id)
    )
    result = trainer.train()

    staged = work / "adapter"
    model.save_pretrained(str(staged))
    seconds = round(time.monotonic() - started, 2)
    out = TrainResult(output_dir, float(result.training_loss), int(result.global_step), len(train), seconds)
    (staged / "flywheel_training.json").write_text(
        json.dumps(
            {
                "result": {**asdict(out), "adapter_path": str(output_dir)},
                "config": config.model_dump(),
                "base_model": base_model,
                "parent_adapter": parent_adapter,
                "lineage": lineage or {},
            },
            indent=2,
            default=str,
        )
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staged.replace(output_dir)
    shutil.rmtree(work, ignore_errors=True)
    log.info("trained %s: %d examples, %d steps, loss %.4f, %.1fs", output_dir, len(train), out.steps, out.train_loss, seconds)
    return out
