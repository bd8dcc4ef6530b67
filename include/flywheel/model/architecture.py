"""What training and inference need to know about a model's architecture, read from the model
itself: which layers LoRA adapts, whether its tokenizer can hold a chat, which tokens end an
answer; and how its weights are loaded for training (precision, 4-bit base weights).

The flywheel trains whatever causal LM `training.base_model` names (Llama, Mistral, Qwen,
Gemma, Phi-3, GPT-2, ...). Their layers are named differently (Llama's ``q_proj``, Phi-3's fused
``qkv_proj``, GPT-2's ``c_attn`` Conv1D), so the layers to adapt are found in the loaded model,
never taken from one family's list:

- ``"attention"`` (the default): every linear layer inside the model's attention blocks (the
  modules whose class name ends in ``Attention``, as in every transformers decoder);
- ``"all-linear"``: peft's own shorthand, every linear layer but the output head;
- a list of names: used as given, and checked against the model first, so a Llama list on a
  Phi-3 model is a clear error that names the layers the model has.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from flywheel.config import TrainingConfig
from flywheel.errors import TrainingError

ATTENTION = "attention"
ALL_LINEAR = "all-linear"


def _linear_types() -> tuple[type, ...]:
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


def linear_layer_names(model: Any) -> list[str]:
    """Qualified names of the model's linear layers (``nn.Linear`` and GPT-2's ``Conv1D``)."""
    kinds = _linear_types()
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def attention_layer_names(model: Any) -> list[str]:
    """Qualified names of the linear layers inside the model's attention blocks."""
    kinds = _linear_types()
    out: list[str] = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("Attention"):
            out += [f"{name}.{child}" for child, sub in module.named_children() if isinstance(sub, kinds)]
    return out


def _shortest(names: Sequence[str], everything: Sequence[str]) -> list[str]:
    """``names`` as peft matches them: their last parts (``q_proj``) where those name no layer
    outside ``names``, else in full (GPT-2's ``c_proj`` is in attention and in the MLP)."""
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    chosen = set(names)
    ambiguous = {n.rsplit(".", 1)[-1] for n in everything if n not in chosen} & leaves
    if not ambiguous:
        return sorted(leaves)
    return sorted(n for n in names if n.rsplit(".", 1)[-1] in ambiguous) + sorted(leaves - ambiguous)


def lora_target_modules(model: Any, spec: str | Sequence[str]) -> str | list[str]:
    """The ``target_modules`` for peft's `LoraConfig` that ``spec`` means for ``model``."""
    linear = linear_layer_names(model)
    if spec == ALL_LINEAR:
        return ALL_LINEAR
    if spec == ATTENTION:
        names = attention_layer_names(model)
        if not names:
            raise TrainingError(
                f"{type(model).__name__} has no attention block with linear layers that `training.target_modules: "
                f"attention` could adapt; set it to `all-linear` or to a list of its layers: {_summary(linear)}"
            )
        return _shortest(names, linear)
    if isinstance(spec, str):
        raise TrainingError(f"training.target_modules: {spec!r} is neither {ATTENTION!r}, {ALL_LINEAR!r} nor a list")
    missing = [t for t in spec if not any(n == t or n.endswith("." + t) for n in linear)]
    if missing:
        raise TrainingError(
            f"training.target_modules {missing} name no linear layer of {type(model).__name__}; "
            f"its layers are {_summary(linear)} (or use `attention` / `all-linear`, found from the model)"
        )
    return list(spec)


def _summary(names: Sequence[str]) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    return ", ".join(leaves) if leaves else "none"


def prepare_tokenizer(tokenizer: Any, model_name: str) -> Any:
    """Check that ``tokenizer`` can write a chat, and give it a pad token.

    A tokenizer without a pad token (Llama 3, Mistral, GPT-2) pads with its end-of-sequence
    token: padding is masked out of the loss and the attention, so which token pads does not
    matter. One without a chat template, or without an end-of-sequence token, cannot be trained
    or asked in chat form: that is an error naming the model, never a silent plain-text guess
    (the adapter would learn a format the model is never asked in)."""
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError(
            f"the tokenizer of {model_name} has no chat template: the flywheel trains and asks models in chat "
            "form. Use the model's instruct/chat variant, or save a chat template with its tokenizer "
            "(tokenizer.chat_template = ...; tokenizer.save_pretrained(path)) and name that path"
        )
    if tokenizer.eos_token_id is None:
        raise TrainingError(f"the tokenizer of {model_name} has no end-of-sequence token: answers could not end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end an answer: the tokenizer's end-of-sequence and those the model's
    generation config lists. Chat models often end a turn with a token of their own (Gemma's
    ``<end_of_turn>``, Phi-3's ``<|end|>``, Llama 3's ``<|eot_id|>``) that only the generation
    config names; stopping at the tokenizer's alone would run every answer to the length limit."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    listed = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(t for t in [tokenizer.eos_token_id, *listed] if t is not None))


def compute_dtype(precision: str, *, cuda: bool | None = None, bf16: bool | None = None) -> Any:
    """The torch dtype training computes in: float32 on a CPU whatever ``precision`` says (CPU
    half precision is slow and lossy); on a GPU, "auto" is bfloat16 where supported, else float16."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda or precision == "float32":
        return torch.float32
    if precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if bf16 is None else bf16
        return torch.bfloat16 if bf16 else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[precision]


def load_base_for_training(base_model: str, config: TrainingConfig, dtype: Any) -> Any:
    """The base model in ``dtype``, or with 4-bit base weights (QLoRA) when the config asks."""
    import torch
    from transformers import AutoModelForCausalLM

    if not config.load_in_4bit:
        return AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if not torch.cuda.is_available():
        raise TrainingError("training.load_in_4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels); this machine has none")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingError("training.load_in_4bit needs bitsandbytes: pip install bitsandbytes")
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=dtype, quantization_config=quantization, device_map={"": torch.cuda.current_device()}
    )
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )  # fmt: skip
