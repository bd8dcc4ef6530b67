"""LoRA fine-tuning with transformers + peft: the same code for the tiny model on a CPU and a
7B model on a GPU; only the `TrainingConfig` differs.

A challenger continues from the champion's adapter when the champion has one (the flywheel
accumulates what earlier cycles learnt) and starts a fresh LoRA on the base model otherwise. The
loss covers the assistant's answer only. The adapter is written to a temporary folder and moved
into place at the end, so a killed task never leaves a half-written adapter behind.
"""

from __future__ import annotations

import ctypes
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flywheel.config import TrainingConfig
from flywheel.data.dataset import load_chat_dataset
from flywheel.errors import FlywheelError, TrainingError
from flywheel.model.architecture import (
    compute_dtype,
    load_base_for_training,
    lora_target_modules,
    prepare_tokenizer,
    stop_token_ids,
)
from flywheel.model.checkpoints import (
    CheckpointWatcher,
    prepare_work_dir,
    run_fingerprint,
    work_dir,
)

# torch, transformers and peft are imported inside the functions that use them: they take seconds to
# import, and DAG parsing and the light stages import this module without needing them.

log = logging.getLogger(__name__)


class TrainingInterrupted(FlywheelError):
    """The training process was killed (OOM, preemption, a cleared task): retrying resumes."""


@dataclass(frozen=True)
class TrainResult:
    adapter_path: Path
    train_loss: float
    steps: int
    n_examples: int
    seconds: float
    resumed_from_step: int = 0


def tokenize_chat(example: dict[str, Any], tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Token ids of the whole chat, with labels masked (-100) over everything but the answer."""
    messages = example["messages"]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # The answer starts where the two tokenisations part: a tokenizer may merge the prompt's last
    # characters with the answer's first (SentencePiece's "[/INST]" + "Paris"), so the prompt's
    # own token count could cut into the answer or leave prompt tokens in the loss.
    n_prompt = next((i for i, (a, b) in enumerate(zip(ids, prompt_ids, strict=False)) if a != b), min(len(ids), len(prompt_ids)))
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

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
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
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if "weight" in features[0]:
            batch["weight"] = torch.tensor([float(f["weight"]) for f in features])
        return batch


def weighted_token_loss(logits: Any, labels: Any, weight: Any | None) -> Any:
    """Next-token cross-entropy over the answer tokens, each token weighted by its example's
    weight (gold examples count more); with every weight 1 it is the usual mean token loss."""
    import torch

    logits, target = logits[:, :-1, :], labels[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view(target.shape)
    w = (target != -100).to(per_token.dtype)
    if weight is not None:
        w = w * weight.to(per_token.dtype)[:, None]
    return (per_token * w).sum() / w.sum().clamp(min=1e-8)


def _trainer_class() -> Any:
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class FlywheelTrainer(Trainer):
        """Weighted loss (gold examples), and the dataset's own order when it is a curriculum."""

        def __init__(self, *args: Any, keep_order: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.keep_order = keep_order

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if self.keep_order:
                return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)  # type: ignore[arg-type]
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:  # fmt: skip
            weight = inputs.pop("weight", None)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_token_loss(outputs.logits, labels, weight)
            return (loss, outputs) if return_outputs else loss

    return FlywheelTrainer


def probe_prompts(dataset: Any, n: int = 8) -> list[str]:
    """User turns whose greedy answers are stored with an adapter, to check it reloads exactly."""
    return [row["messages"][0]["content"] for row in dataset.select(range(min(n, len(dataset))))]


def greedy_token_ids(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 12) -> list[list[int]]:
    import torch

    out = []
    model.eval()
    with torch.inference_mode():
        for prompt in prompts:
            enc = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(model.device)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_token_ids(model, tokenizer))
            out.append(ids[0, enc["input_ids"].shape[1]:].tolist())
    return out


def train_lora(
    *,
    base_model: str,
    dataset_path: Path,
    output_dir: Path,
    config: TrainingConfig,
    parent_adapter: str | None = None,
    lineage: dict[str, Any] | None = None,
    run_key: str | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on the chat dataset at ``dataset_path``; save it to ``output_dir``.

    Checkpoints go to ``<output_dir>.work/checkpoints`` every ``checkpoint_steps`` steps; a
    rerun of the same run (same data, config, base and parent) resumes from the last one.
    ``run_key`` names the run where local paths do not (the base and parent fetched from a
    bucket into another machine's cache): by default the paths and the data's hash name it. The
    adapter is written in peft's standard format with the tokenizer, the metrics, the lineage
    and the greedy answers to a few probe prompts (`flywheel_training.json`), then moved into
    place whole.
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoTokenizer, TrainingArguments, set_seed


    set_seed(config.seed)
    started = time.monotonic()
    data = load_chat_dataset(dataset_path)
    train = data["train"]
    if len(train) == 0:
        raise TrainingError(f"dataset {dataset_path} has no training rows")

    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(base_model), base_model)
    dtype = compute_dtype(config.precision)
    model = load_base_for_training(base_model, config, dtype)
    if parent_adapter:
        model = PeftModel.from_pretrained(model, parent_adapter, is_trainable=True)
    else:
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=lora_target_modules(model, config.target_modules),
                task_type="CAUSAL_LM",
            ),
        )

    columns = [c for c in train.column_names if c != "weight"]
    tokenized = train.map(
        tokenize_chat, fn_kwargs={"tokenizer": tokenizer, "max_length": config.max_length}, remove_columns=columns
    )
    keep_order = bool(json.loads((dataset_path / "flywheel_manifest.json").read_text()).get("curriculum")) if (
        dataset_path / "flywheel_manifest.json").is_file() else False
    work = work_dir(output_dir)
    resume = prepare_work_dir(work, run_key or run_fingerprint(base_model, dataset_path, config, parent_adapter))
    if resume:
        log.info("resuming %s from %s", output_dir.name, resume)
    args = TrainingArguments(
        output_dir=str(work / "checkpoints"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=10,
        save_strategy="steps",
        save_steps=config.checkpoint_steps,
        save_total_limit=2,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # keep the per-example weight for the loss
    )
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=tokenized, data_collator=_PadCollator(tokenizer.pad_token_id),
        keep_order=keep_order,
    )  # fmt: skip
    result = trainer.train(resume_from_checkpoint=resume)
    resumed_step = int(Path(resume).name.rsplit("-", 1)[-1]) if resume else 0

    staged = work / "adapter"
    shutil.rmtree(staged, ignore_errors=True)
    model.save_pretrained(str(staged))
    tokenizer.save_pretrained(str(staged))
    probes = probe_prompts(data["validation"] if len(data["validation"]) else train)
    seconds = round(time.monotonic() - started, 2)
    out = TrainResult(output_dir, float(result.training_loss), int(result.global_step), len(train), seconds, resumed_step)
    (staged / "flywheel_training.json").write_text(
        json.dumps(
            {
                "result": {**asdict(out), "adapter_path": str(output_dir)},
                "config": config.model_dump(),
                "base_model": base_model,
                "parent_adapter": parent_adapter,
                "lineage": lineage or {},
                "probes": {"prompts": probes, "greedy_token_ids": greedy_token_ids(model, tokenizer, probes)},
                "torch": torch.__version__,
            },
            indent=2,
            default=str,
        )
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staged.replace(output_dir)
    shutil.rmtree(work, ignore_errors=True)
    log.info(
        "trained %s: %d examples, %d steps (resumed at %d), loss %.4f, %.1fs",
        output_dir, len(train), out.steps, resumed_step, out.train_loss, seconds,
    )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m flywheel.model.training REQUEST.json``: train in this process, print the result.

    The weekly cycle runs training in a child process of its task, so a GPU's memory is
    released when it ends and a killed task takes its training with it."""
    request = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    result = train_lora(
        base_model=request["base_model"],
        dataset_path=Path(request["dataset_path"]),
        output_dir=Path(request["output_dir"]),
        config=TrainingConfig.model_validate(request["config"]),
        parent_adapter=request.get("parent_adapter"),
        lineage=request.get("lineage"),
        run_key=request.get("run_key"),
    )
    print("FLYWHEEL_TRAIN_RESULT=" + json.dumps({**asdict(result), "adapter_path": str(result.adapter_path)}))
    return 0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def train_lora_in_subprocess(
    *,
    base_model: str,
    dataset_path: Path,
    output_dir: Path,
    config: TrainingConfig,
    parent_adapter: str | None = None,
    lineage: dict[str, Any] | None = None,
    run_key: str | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """`train_lora` in a child process that dies with its parent (a killed task kills it).

    ``on_checkpoint`` is called here, in the parent, with each checkpoint the child completes
    (to copy it off the machine, so that a retry elsewhere resumes from it)."""
    request = {
        "base_model": base_model, "dataset_path": str(dataset_path), "output_dir": str(output_dir),
        "config": config.model_dump(), "parent_adapter": parent_adapter, "lineage": lineage or {},
        "run_key": run_key,
    }  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(request, f, default=str)
    tail: list[str] = []
    result_line = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flywheel.model.training", f.name],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        assert proc.stdout is not None
        watcher = CheckpointWatcher(work_dir(output_dir) / "checkpoints", on_checkpoint) if on_checkpoint else None
        for line in proc.stdout:  # the child's log, live in the task's log
            line = line.rstrip()
            if line.startswith("FLYWHEEL_TRAIN_RESULT="):
                result_line = line
            elif line:
                log.info("[training] %s", line)
                tail = [*tail[-29:], line]
        returncode = proc.wait()
        if watcher:
            watcher.stop()
    finally:
        Path(f.name).unlink(missing_ok=True)
    if returncode < 0:
        raise TrainingInterrupted(
            f"training of {output_dir.name} was killed by signal {-returncode}; a retry resumes from its last checkpoint"
        )
    if returncode != 0 or result_line is None:
        detail = "\n".join(tail)
        raise TrainingError(f"training of {output_dir.name} failed (exit {returncode}):\n{detail}")
    raw = json.loads(result_line.split("=", 1)[1])
    return TrainResult(**{**raw, "adapter_path": Path(raw["adapter_path"])})


if __name__ == "__main__":
    raise SystemExit(main())
