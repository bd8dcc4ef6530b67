"""Active-learning signals: which candidates a human reviewer's time is best spent on.

Each signal is in [0, 1], and a candidate's priority is their weighted sum
(`review.priority_weights`):

- **uncertainty**: the champion's mean next-token entropy over the answer (teacher-forced),
  relative to the uniform distribution's: the model is unsure what the answer should be;
- **behaviour_change**: how far the champion's next-token distributions over the answer moved
  from its parent's (``1 - exp(-KL)``): what the last promotion changed;
- **disagreement**: the filters were close to their thresholds (quality score, toxicity,
  grounding), or the user's action contradicts the quality score;
- **rare_task**: one minus the task type's share of the window;
- **correction**: the user corrected the answer.

The model signals are measured, never guessed: with no model (or ``review.model_signals``
false) they are absent and their weight is not spent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.data.dataset import user_message
from flywheel.records import TrainingCandidate

# torch is imported inside the functions that use it: it takes seconds to
# import, and DAG parsing and the light stages import this module without needing it.

NEAR_THRESHOLD = 0.15  # a score within this of its threshold counts as a near miss


@dataclass(frozen=True)
class Priority:
    request_id: str
    score: float
    signals: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def answer_token_stats(loaded: Any, items: Sequence[TrainingCandidate], *, reference: Any | None = None,
                       batch_size: int = 32) -> tuple[list[float], list[float] | None]:  # fmt: skip
    """Per item: the model's normalised mean entropy over the answer's tokens, and, with a
    ``reference`` model (the parent), ``1 - exp(-mean KL(model || reference))``."""
    import torch


    tok = loaded.tokenizer  # with a pad token: `flywheel.model.inference.load_model` gives it one
    entropy: list[float] = []
    change: list[float] | None = [] if reference is not None else None
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            prompts, fulls = [], []
            for c in batch:
                user = [{"role": "user", "content": user_message(c.prompt, c.context)}]
                prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
                full = tok.apply_chat_template([*user, {"role": "assistant", "content": c.target}], tokenize=False)
                prompts.append(tok(prompt, add_special_tokens=False)["input_ids"])
                fulls.append(tok(full, add_special_tokens=False)["input_ids"])
            width = max(len(f) for f in fulls)
            ids = torch.full((len(batch), width), tok.pad_token_id)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, f in enumerate(fulls):
                ids[i, : len(f)] = torch.tensor(f)
                mask[i, : len(f)] = 1
            ids, mask = ids.to(loaded.model.device), mask.to(loaded.model.device)
            logp = torch.log_softmax(loaded.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            ref_logp = (torch.log_softmax(reference.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
                        if reference is not None else None)  # fmt: skip
            log_vocab = math.log(logp.shape[-1])
            for i, (p, f) in enumerate(zip(prompts, fulls, strict=True)):
                # Positions whose next token is an answer token.
                positions = slice(max(len(p) - 1, 0), len(f) - 1)
                lp = logp[i, positions]
                if lp.shape[0] == 0:
                    entropy.append(0.0)
                    if change is not None:
                        change.append(0.0)
                    continue
                entropy.append(float((-(lp.exp() * lp).sum(-1)).mean()) / log_vocab)
                if change is not None and ref_logp is not None:
                    kl = float((lp.exp() * (lp - ref_logp[i, positions])).sum(-1).mean())
                    change.append(1.0 - math.exp(-max(kl, 0.0)))
    return entropy, change


def disagreement(candidate: TrainingCandidate, scores: dict[str, float | None], thresholds: dict[str, float]) -> tuple[float, list[str]]:
    """How close the candidate came to a filter's threshold, or how its action and quality
    score contradict each other; with the reasons."""
    best, reasons = 0.0, []
    for rule, score in scores.items():
        threshold = thresholds.get(rule)
        if score is None or threshold is None:
            continue
        closeness = max(0.0, 1.0 - abs(score - threshold) / NEAR_THRESHOLD)
        if closeness > 0:
            reasons.append(f"{rule} {score:.2f} near its threshold {threshold:g}")
        best = max(best, closeness)
    q = candidate.quality_score
    if candidate.user_action in ("accepted", "copied") and q < 0.5:
        best = max(best, 1.0)
        reasons.append(f"user {candidate.user_action} an answer scored {q:.2f}")
    return best, reasons


def prioritise(
    candidates: Sequence[TrainingCandidate],
    *,
    weights: dict[str, float],
    filter_scores: dict[str, dict[str, float | None]],
    thresholds: dict[str, float],
    window_mix: Counter[str],
    uncertainty: Sequence[float] | None = None,
    behaviour_change: Sequence[float] | None = None,
) -> list[Priority]:
    """Every candidate's priority and the reasons it would be picked, in input order."""
    total = sum(window_mix.values()) or 1
    out = []
    for i, c in enumerate(candidates):
        signals: dict[str, float] = {}
        reasons: list[str] = []
        if uncertainty is not None:
            signals["uncertainty"] = uncertainty[i]
            if uncertainty[i] >= 0.5:
                reasons.append(f"champion uncertain (entropy {uncertainty[i]:.2f})")
        if behaviour_change is not None:
            signals["behaviour_change"] = behaviour_change[i]
            if behaviour_change[i] >= 0.3:
                reasons.append(f"champion changed behaviour vs its parent ({behaviour_change[i]:.2f})")
        signals["disagreement"], why = disagreement(c, filter_scores.get(c.request_id, {}), thresholds)
        reasons += why
        share = window_mix.get(c.task_type, 0) / total
        signals["rare_task"] = 1.0 - share
        if share < 0.1:
            reasons.append(f"rare task type {c.task_type} ({share:.0%} of the window)")
        signals["correction"] = 1.0 if c.user_action == "corrected" else 0.0
        if signals["correction"]:
            reasons.append("user correction")
        score = sum(weights.get(k, 0.0) * v for k, v in signals.items())
        out.append(Priority(c.request_id, score, signals, reasons))
    return out
