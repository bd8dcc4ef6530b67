"""The project's own tiny causal LM: a local tokenizer and a small Llama, pre-trained briefly.

Tests and the demo never download weights: this module trains a byte-level BPE tokenizer with
`tokenizers` on simulator text, builds a Llama-style model from config, pre-trains it for a few
seconds on right-answer examples, and saves both in standard Hugging Face format, so the rest of
the flywheel loads it with ``AutoModelForCausalLM.from_pretrained(path)`` exactly as it would
load a real model by name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flywheel.artefacts import ArtefactStore
from flywheel.config import FlywheelConfig, TinyModelConfig
from flywheel.data.dataset import user_message
from flywheel.sim.traffic import pretraining_tasks, tokenizer_tasks
from flywheel.tasks import Task

# torch, tokenizers and transformers are imported inside the functions that use them: they take seconds to
# import, and DAG parsing and the light stages import this module without needing them.

log = logging.getLogger(__name__)

TINY_MODEL_NAME = "tiny-llama"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
# A minimal chat template: the same `apply_chat_template` path a real chat model uses.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}<|user|>{{ m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}<|assistant|>{{ m['content'] }}{{ eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


@dataclass(frozen=True)
class TinyModelInfo:
    path: Path
    parameters: int
    build_seconds: float
    pretrain_tokens: int
    rebuilt: bool


def tiny_model_dir(config: FlywheelConfig) -> Path:
    return config.artefacts_root / "base_models" / TINY_MODEL_NAME


def resolve_base_model(config: FlywheelConfig) -> str:
    """The path or hub name the training config's ``base_model`` stands for (the tiny model's
    URI when the artefact store is a bucket: every worker then registers the same base)."""
    name = config.training.base_model
    if name == TINY_MODEL_NAME:
        return ArtefactStore(config).uri(tiny_model_dir(config))
    return name


def prepare_base_model(config: FlywheelConfig) -> str:
    """The ``tiny-llama`` built-in (`flywheel.providers`): built on first use, and again only when
    its config changed; returns what training and inference load."""
    build_tiny_model(config)
    return resolve_base_model(config)


def _config_hash(cfg: TinyModelConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def corpus(tasks: list[Task]) -> list[str]:
    return [f"{user_message(t.prompt, t.context)} {t.answer}" for t in tasks]


TINY_NAMED_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def build_tokenizer(texts: list[str], vocab_size: int, *, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                    named: Mapping[str, str | None] = TINY_NAMED_TOKENS,
                    chat_template: str | None = CHAT_TEMPLATE):  # -> PreTrainedTokenizerFast  # fmt: skip
    """Byte-level BPE learnt from ``texts``, with ``special_tokens`` whole; ``named`` says which
    of them is bos, eos, pad, unk (None: the tokenizer has none), and the others are additional
    special tokens (the tiny model's by default; `flywheel.sim.architectures` gives other
    families' conventions). With a vocabulary of several hundred, the simulated
    product's words, names and answers ("walnut", "WALNUT", "tunlaw", "17") are whole tokens, so
    what a cycle teaches is a fact per token pair, which a model of this size learns in a few
    hundred steps. (Measured before choosing: one token per character makes every sequence
    four times longer and spelling a skill this model needs tens of thousands of steps for; a
    384-token BPE splits words into pieces and capped golden accuracy near 0.66.)"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        additional_special_tokens=[t for t in special_tokens if t not in named.values()],
        **{k: v for k, v in named.items() if v},
    )
    if chat_template:
        fast.chat_template = chat_template
    return fast


def build_tiny_model(config: FlywheelConfig, *, force: bool = False) -> TinyModelInfo:
    """Build (or reuse, when its config is unchanged) the tiny model in the artefact store.
    With a bucket root the first worker's build is published and the others fetch it."""
    cfg = config.tiny_model
    out = tiny_model_dir(config)
    store = ArtefactStore(config)
    if store.remote and not force and store.published(out):
        store.fetch(out)
    stamp = out / "flywheel_build.json"
    if not force and stamp.is_file():
        info = json.loads(stamp.read_text())
        if info.get("config_hash") == _config_hash(cfg):
            store.publish(out)  # a no-op when the store already holds this build
            return TinyModelInfo(out, info["parameters"], info["build_seconds"], info["pretrain_tokens"], False)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    started = time.monotonic()
    set_seed(cfg.seed)
    tasks = pretraining_tasks(cfg.pretrain_examples, cfg.seed)
    # The tokenizer learns its words from a broader text than the pre-training examples: requests
    # of every kind, terse and chatty, as a real tokenizer is trained on far more than its
    # model's fine-tuning data.
    tokenizer = build_tokenizer(corpus(tasks + tokenizer_tasks(cfg.pretrain_examples, cfg.seed)), cfg.vocab_size)
    model_cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(model_cfg)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": _user(t)}, {"role": "assistant", "content": t.answer}], tokenize=False
        )
        for t in tasks
    ]
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"][: cfg.max_position_embeddings] for t in texts]
    pretrain_tokens = _pretrain(model, enc, tokenizer.pad_token_id, cfg)
    model.eval()

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    seconds = round(time.monotonic() - started, 2)
    (tmp / "flywheel_build.json").write_text(
        json.dumps(
            {
                "config_hash": _config_hash(cfg),
                "config": cfg.model_dump(),
                "parameters": params,
                "build_seconds": seconds,
                "pretrain_tokens": pretrain_tokens,
                "torch": torch.__version__,
            },
            indent=2,
        )
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    store.publish(out)
    log.info("built %s: %d parameters, %d pre-training tokens in %.1fs", out, params, pretrain_tokens, seconds)
    return TinyModelInfo(out, params, seconds, pretrain_tokens, True)


def _user(task: Task) -> str:
    return user_message(task.prompt, task.context)


def _pretrain(model, sequences: list[list[int]], pad_id: int, cfg: TinyModelConfig) -> int:
    """A plain next-token loop: a few seconds on 2 cores, enough to learn the format."""
    import torch

    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_learning_rate, weight_decay=0.01)
    batch_size = 16
    steps_per_epoch = (len(sequences) + batch_size - 1) // batch_size
    total_steps = max(1, int(steps_per_epoch * cfg.pretrain_epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.05, 1 - s / total_steps))
    order: list[int] = []
    tokens = 0
    model.train()
    for _ in range(total_steps):
        if len(order) < batch_size:
            fresh = list(range(len(sequences)))
            rng.shuffle(fresh)
            order.extend(fresh)
        idx, order = order[:batch_size], order[batch_size:]
        batch = [sequences[i] for i in idx]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, s in enumerate(batch):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        tokens += int(mask.sum())
    return tokens
