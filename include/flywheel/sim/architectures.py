"""Random-weight models of public architectures, built locally from config, each with its
family's tokenizer conventions and chat template.

No machine here reaches a model hub, yet training must be shown to work on more than the
project's own tiny Llama: other layer names (Phi-3's fused ``qkv_proj``, GPT-2's ``c_attn``
Conv1D), other chat templates (ChatML with a default system turn, Gemma's ``model`` role,
turns that end in a token other than end-of-sequence), tokenizers without a pad token. This
module writes such a model in standard Hugging Face format, so the flywheel loads it by path
exactly as it would load the real one by name:

- ``tiny``: a few thousand parameters, for tests (seconds to build and train on a CPU);
- ``1b``: about a billion parameters (TinyLlama-1.1B's shape), for ``scripts/gpu_check.sh``.

The templates follow the families' published ones in what matters to training: the roles, the
turn markers, where end-of-sequence goes and which token ends an answer (`generation_config`'s
``eos_token_id`` lists it, as the real models' do). The tokenizer is a byte-level BPE learnt
from the simulated product's text, so a random model's vocabulary covers the demo's requests.

``python -m flywheel.sim.architectures FAMILY OUT [--size tiny|1b]`` writes one.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel.sim import tinymodel
from flywheel.sim.traffic import tokenizer_tasks

# torch, tokenizers and transformers are imported inside the functions that use them.


@dataclass(frozen=True)
class Family:
    model_type: str
    chat_template: str | None
    bos: str | None
    eos: str
    pad: str | None  # None: the family ships no pad token
    # Tokens that end an answer besides ``eos`` (the real models list them in generation_config).
    end_of_turn: tuple[str, ...] = ()
    specials: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported') }}{% endif %}{% endfor %}"
)
CHATML_TEMPLATE = (  # Qwen2's: a default system turn when the chat has none
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)
# GPT-2 has no chat format of its own; its chat fine-tunes (DialoGPT) end each turn with eos.
GPT2_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"

_DECODER = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 256}  # fmt: skip
FAMILIES: dict[str, Family] = {
    "llama": Family("llama", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", None,
                    specials=("<|start_header_id|>", "<|end_header_id|>")),
    "mistral": Family("mistral", MISTRAL_TEMPLATE, "<s>", "</s>", None),
    "qwen2": Family("qwen2", CHATML_TEMPLATE, None, "<|im_end|>", "<|endoftext|>", specials=("<|im_start|>",)),
    "gemma": Family("gemma", GEMMA_TEMPLATE, "<bos>", "<eos>", "<pad>", end_of_turn=("<end_of_turn>",),
                    specials=("<start_of_turn>",), config={"head_dim": 8}),
    "phi3": Family("phi3", PHI3_TEMPLATE, "<s>", "<|endoftext|>", "<|endoftext|>", end_of_turn=("<|end|>",),
                   specials=("<|user|>", "<|assistant|>", "<|system|>"),
                   config={"num_key_value_heads": 4, "original_max_position_embeddings": 256}),
    "gpt2": Family("gpt2", GPT2_TEMPLATE, "<|endoftext|>", "<|endoftext|>", None),
}  # fmt: skip
SIZES = {
    "tiny": {},
    # TinyLlama-1.1B's shape (with this module's small vocabulary: about 1.0B parameters).
    "1b": {"num_hidden_layers": 22, "hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 32,
           "num_key_value_heads": 4, "max_position_embeddings": 2048, "head_dim": 64,
           "original_max_position_embeddings": 2048},
}  # fmt: skip


def _tokens(family: Family) -> list[str]:
    named = [t for t in (family.pad, family.bos, family.eos) if t]
    return list(dict.fromkeys([*named, *family.end_of_turn, *family.specials]))


def build_tokenizer(family: Family, *, vocab_size: int = 600, chat_template: bool = True, seed: int = 5):
    """A byte-level BPE over the simulated product's text with the family's special tokens."""
    return tinymodel.build_tokenizer(
        tinymodel.corpus(tokenizer_tasks(1500, seed)), vocab_size, special_tokens=_tokens(family),
        named={"bos_token": family.bos, "eos_token": family.eos, "pad_token": family.pad},
        chat_template=family.chat_template if chat_template else None,
    )  # fmt: skip


def build_random_model(family_name: str, out: Path, *, size: str = "tiny", chat_template: bool = True,
                       seed: int = 7) -> Path:  # fmt: skip
    """Write a random-weight model of ``family_name`` with its tokenizer to ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, set_seed

    family = FAMILIES[family_name]
    tokenizer = build_tokenizer(family, chat_template=chat_template)
    set_seed(seed)
    dims = {**_DECODER, **family.config, **SIZES[size]}
    if family.model_type == "gpt2":
        dims = {"n_layer": dims["num_hidden_layers"], "n_embd": dims["hidden_size"], "n_inner": dims["intermediate_size"],
                "n_head": dims["num_attention_heads"], "n_positions": dims["max_position_embeddings"]}  # fmt: skip
    elif family.model_type != "gemma":
        dims.pop("head_dim", None)
    if family.model_type != "phi3":
        dims.pop("original_max_position_embeddings", None)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = AutoConfig.for_model(family.model_type, vocab_size=len(tokenizer), **dims, **ids)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    stop = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(list(family.end_of_turn))]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop if len(stop) > 1 else stop[0],
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    (out / "flywheel_build.json").write_text(json.dumps({"family": family_name, "size": size, "parameters": params}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flywheel.sim.architectures", description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args(argv)
    path = build_random_model(args.family, args.out, size=args.size)
    print(json.loads((path / "flywheel_build.json").read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
