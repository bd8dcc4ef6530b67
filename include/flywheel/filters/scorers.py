"""Pluggable text scorers for the filters: toxicity and grounding.

Each is chosen by a config string. The offline defaults need nothing but installed packages:
`profanity_check` ships its linear model inside the wheel, and the lexical grounding check is
plain Python. Production can name a transformers model instead (``transformers:<name or
path>``), loaded through the same `from_pretrained` path as every other model here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from flywheel.errors import ConfigError
from flywheel.text import strip_invisible, word_tokens


class ToxicityScorer(Protocol):
    name: str

    def score(self, texts: Sequence[str]) -> list[float]:
        """Probability-like toxicity in [0, 1] per text."""
        ...


class ProfanityCheckScorer:
    """`alt-profanity-check`: a linear SVM over character n-grams, shipped with the package."""

    name = "profanity_check"

    def score(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        from profanity_check import predict_prob

        return [float(p) for p in predict_prob([strip_invisible(t) for t in texts])]


class TransformersToxicityScorer:
    """A transformers text classifier by hub name or path; the toxic class's probability.

    The toxic label is the one whose name contains ``toxic`` (and not ``non``), else ``LABEL_1``.
    """

    def __init__(self, model: str, *, batch_size: int = 32, max_length: int = 512) -> None:
        self.model_name = model
        self.name = f"transformers:{model}"
        self.batch_size = batch_size
        self.max_length = max_length
        self._loaded: tuple[Any, Any, int] | None = None

    def _load(self) -> tuple[Any, Any, int]:
        if self._loaded is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model_name)
            model = AutoModelForSequenceClassification.from_pretrained(self.model_name).eval()
            labels = {i: str(label).lower() for i, label in model.config.id2label.items()}
            toxic = [i for i, label in labels.items() if "toxic" in label and "non" not in label]
            if toxic:
                index = toxic[0]
            elif len(labels) == 2:
                index = 1
            else:
                raise ConfigError(f"{self.model_name}: cannot tell the toxic label among {sorted(labels.values())}")
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            self._loaded = (tok, model, index)
        return self._loaded

    def score(self, texts: Sequence[str]) -> list[float]:
        import torch

        tok, model, index = self._load()
        out: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                chunk = [strip_invisible(t) for t in texts[i : i + self.batch_size]]
                enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
                logits = model(**enc).logits
                probs = torch.softmax(logits, dim=-1) if logits.shape[-1] > 1 else torch.sigmoid(logits)
                out.extend(float(p) for p in probs[:, index if logits.shape[-1] > 1 else 0])
        return out


def make_toxicity_scorer(spec: str) -> ToxicityScorer:
    if spec == "profanity_check":
        return ProfanityCheckScorer()
    if spec.startswith("transformers:") and spec.split(":", 1)[1]:
        return TransformersToxicityScorer(spec.split(":", 1)[1])
    raise ConfigError(f"unknown toxicity scorer {spec!r}: use 'profanity_check' or 'transformers:<name or path>'")


class GroundingScorer(Protocol):
    name: str

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """How well each ``(answer, context)`` is supported by its context, in [0, 1]."""
        ...


class LexicalGroundingScorer:
    """The share of the answer's word tokens that occur in the context.

    Cheap and strict: an extracted answer ("Oslo") scores 1, an answer that names something the
    context never mentions scores 0. An answer with no word tokens scores 0.
    """

    name = "lexical"

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        out = []
        for answer, context in pairs:
            tokens = word_tokens(answer)
            if not tokens:
                out.append(0.0)
                continue
            seen = set(word_tokens(context))
            out.append(sum(t in seen for t in tokens) / len(tokens))
        return out


class EmbeddingGroundingScorer:
    """Cosine similarity of mean-pooled hidden states of answer and context, mapped to [0, 1].

    Any transformers encoder (or decoder) by name or path; a sentence-embedding model is the
    sensible production choice.
    """

    def __init__(self, model: str, *, max_length: int = 512) -> None:
        self.model_name = model
        self.name = f"transformers:{model}"
        self.max_length = max_length
        self._loaded: tuple[Any, Any] | None = None

    def _embed(self, texts: Sequence[str]) -> Any:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self._loaded is None:
            tok = AutoTokenizer.from_pretrained(self.model_name)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            self._loaded = (tok, AutoModel.from_pretrained(self.model_name).eval())
        tok, model = self._loaded
        with torch.inference_mode():
            enc = tok([strip_invisible(t) for t in texts], return_tensors="pt", padding=True, truncation=True,
                      max_length=self.max_length)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            return torch.nn.functional.normalize(pooled, dim=-1)

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        answers = self._embed([a for a, _ in pairs])
        contexts = self._embed([c for _, c in pairs])
        cosine = (answers * contexts).sum(-1)
        return [float((c + 1) / 2) for c in cosine]


def make_grounding_scorer(spec: str) -> GroundingScorer:
    if spec == "lexical":
        return LexicalGroundingScorer()
    if spec.startswith("transformers:") and spec.split(":", 1)[1]:
        return EmbeddingGroundingScorer(spec.split(":", 1)[1])
    raise ConfigError(f"unknown grounding scorer {spec!r}: use 'lexical' or 'transformers:<name or path>'")
