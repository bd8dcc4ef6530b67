"""Load a model version (base + optional LoRA adapter) and answer prompts with it.

The same loading path serves the project's tiny model and any Hugging Face causal LM named by
hub id or path; the simulator, the evaluation and the A/B test all answer through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flywheel.data.dataset import user_message
from flywheel.model.architecture import prepare_tokenizer, stop_token_ids

# torch, transformers and peft are imported inside the functions that use them: they take seconds to
# import, and DAG parsing and the light stages import this module without needing them.

if TYPE_CHECKING:
    from flywheel.artefacts import ArtefactStore


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    version: str


def load_model(
    base_model: str, adapter_path: str | None = None, *, version: str = "", store: ArtefactStore | None = None
) -> LoadedModel:
    """``base_model`` and ``adapter_path`` as the registry keeps them: with a ``store``, a URI in
    the artefact store is fetched first (a hub name or a local path is used as it is)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if store is not None:
        base_model, adapter_path = str(store.local(base_model)), store.local(adapter_path)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(base_model), base_model)
    model: Any = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if adapter_path:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return LoadedModel(model, tokenizer, version)


def generate_answers(
    loaded: LoadedModel,
    pairs: Sequence[tuple[str, str | None]],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 64,
) -> list[str]:
    """Greedy answers to ``(prompt, context)`` pairs, in order."""
    import torch

    tok = loaded.tokenizer
    tok.padding_side = "left"
    texts = [
        tok.apply_chat_template([{"role": "user", "content": user_message(p, c)}], tokenize=False, add_generation_prompt=True)
        for p, c in pairs
    ]
    # Batch similar lengths together: less padding, same answers.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    answers: list[str] = [""] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(loaded.model.device)
            out = loaded.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=stop_token_ids(loaded.model, tok),
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            for i, text in zip(idx, tok.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
                answers[i] = text.strip()
    return answers


def answer_fn(loaded: LoadedModel, *, max_new_tokens: int = 16):
    """The model as the simulator's ``answer_fn``."""

    def _answer(pairs: Sequence[tuple[str, str | None]]) -> list[str]:
        return generate_answers(loaded, pairs, max_new_tokens=max_new_tokens)

    return _answer
