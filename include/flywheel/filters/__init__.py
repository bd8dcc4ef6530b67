"""Per-row filter decisions with reasons: the method's every filter, as pluggable rules.

The cheap rules (user action, length, quality score) are evaluated on every candidate, with no
short-circuit, so the decisions table shows all the reasons a row failed and calibration sees
each rule on its own. The text rules (PII, toxicity, grounding, decontamination) then run on the
rows the cheap rules kept, dedup on the rows every other rule kept, and selection ranks what is
left. A candidate is kept only when every rule it met kept it; each decision names the rule,
the score, the threshold and the reason, and never quotes a PII value.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from flywheel.config import FiltersConfig
from flywheel.schema import TrainingCandidate

if TYPE_CHECKING:
    from flywheel.filters.dedup import DedupIndex
    from flywheel.filters.pii import PiiScanner
    from flywheel.filters.scorers import GroundingScorer, ToxicityScorer

_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class FilterDecision:
    request_id: str
    rule: str
    kept: bool
    score: float | None
    threshold: float | None
    reason: str


class Rule(Protocol):
    @property
    def name(self) -> str: ...

    def decide(self, candidate: TrainingCandidate) -> FilterDecision: ...


@dataclass(frozen=True)
class ActionRule:
    """Only interactions the user endorsed (accepted, copied) or fixed (corrected) teach anything."""

    allowed: tuple[str, ...]
    name: str = "user_action"

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        ok = c.user_action in self.allowed
        reason = f"action {c.user_action!r} is allowed" if ok else f"action {c.user_action!r} is not in {list(self.allowed)}"
        return FilterDecision(c.request_id, self.name, ok, None, None, reason)


def count_words(text: str) -> int:
    return len(text.split())


def count_tokens(text: str) -> int:
    """Tokenizer-independent token count (words and punctuation marks)."""
    return len(_TOKEN.findall(text))


@dataclass(frozen=True)
class LengthRule:
    """The interaction (prompt + training target) must be longer than ``min_words`` words or
    ``min_tokens`` tokens: very short exchanges carry too little to learn from."""

    min_words: int
    min_tokens: int
    name: str = "length"

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        if not c.target.strip():
            return FilterDecision(c.request_id, self.name, False, 0.0, float(self.min_words), "empty answer: nothing to learn")
        text = f"{c.prompt} {c.target}"
        words, tokens = count_words(text), count_tokens(text)
        ok = words > self.min_words or tokens > self.min_tokens
        if ok:
            reason = f"{words} words / {tokens} tokens exceeds {self.min_words} words or {self.min_tokens} tokens"
        else:
            reason = f"too short: {words} words <= {self.min_words} and {tokens} tokens <= {self.min_tokens}"
        return FilterDecision(c.request_id, self.name, ok, float(words), float(self.min_words), reason)


@dataclass(frozen=True)
class QualityScoreRule:
    min_score: float
    name: str = "quality_score"

    def decide(self, c: TrainingCandidate) -> FilterDecision:
        ok = c.quality_score >= self.min_score
        op = ">=" if ok else "<"
        return FilterDecision(
            c.request_id, self.name, ok, c.quality_score, self.min_score, f"quality_score {c.quality_score:.3f} {op} {self.min_score}"
        )


def basic_rules(config: FiltersConfig) -> list[Rule]:
    return [
        ActionRule(tuple(config.allowed_actions)),
        LengthRule(config.min_words, config.min_tokens),
        QualityScoreRule(config.min_quality_score),
    ]


def apply_filters(
    candidates: Iterable[TrainingCandidate], rules: Sequence[Rule]
) -> tuple[list[FilterDecision], list[TrainingCandidate]]:
    """All decisions, and the candidates every rule kept."""
    decisions: list[FilterDecision] = []
    kept: list[TrainingCandidate] = []
    for c in candidates:
        mine = [rule.decide(c) for rule in rules]
        decisions.extend(mine)
        if all(d.kept for d in mine):
            kept.append(c)
    return decisions, kept


# --- The full chain: cheap rules, then PII, toxicity, grounding, decontamination, dedup, and
# --- selection. Cheap rules run on every candidate; the text scorers only on what they kept.


def interaction_text(c: TrainingCandidate) -> str:
    """What a training example is made of: the user turn (context + prompt) and the target."""
    from flywheel.data.dataset import user_message

    return f"{user_message(c.prompt, c.context)}\n{c.target}"


def input_text(c: TrainingCandidate) -> str:
    from flywheel.data.dataset import user_message

    return user_message(c.prompt, c.context)


# The rules the extraction query decides in the warehouse (`flywheel.warehouse.Pushdown`): exact
# comparisons on non-text columns, so SQL and Python agree by construction.
PUSHED_DOWN_RULES = ("user_action", "quality_score")


@dataclass
class FilterBatch:
    """A batch of valid rows: candidates with their text, and rows the pushdown rejected."""

    candidates: Sequence[TrainingCandidate]
    pushed_down: Sequence[TrainingCandidate] = ()


@dataclass
class Survivor:
    """A candidate every row rule kept (its text redacted), with what selection ranks it by."""

    candidate: TrainingCandidate
    score: float


@dataclass
class FilterOutcome:
    decisions: list[FilterDecision]
    survivors: list[Survivor]


def redact_candidate(c: TrainingCandidate, scanner: Any) -> tuple[TrainingCandidate, tuple[str, ...]]:
    changes: dict[str, Any] = {}
    entities: list[str] = []
    for name in ("prompt", "response", "correction", "context"):
        value = getattr(c, name)
        if value:
            red = scanner.redact(value)
            if red.changed:
                changes[name] = red.text
                entities.extend(red.entities)
    return (replace(c, **changes) if changes else c), tuple(entities)


def golden_index(config: FiltersConfig, golden_inputs: Sequence[str]) -> DedupIndex:
    """The golden set's inputs, indexed for decontamination at its own threshold."""
    from flywheel.filters.dedup import DedupIndex, MinHasher

    hasher = MinHasher.from_config(config)
    index = DedupIndex(hasher, config.decontamination_threshold)
    if golden_inputs:
        index.add(hasher.fingerprint(list(golden_inputs)), [f"golden item {i}" for i in range(len(golden_inputs))])
    return index


class FilterChain:
    """Every rule of the method over batches of candidates, with a decision per row and rule.

    State carried across batches: the dedup index (earlier training sets, then each kept row of
    the window in order), so the first copy of an interaction wins and later ones are rejected
    with the request they duplicate.
    """

    def __init__(
        self,
        config: FiltersConfig,
        *,
        golden_inputs: Sequence[str] = (),
        history: DedupIndex | None = None,
        toxicity: ToxicityScorer | None = None,
        grounding: GroundingScorer | None = None,
        pii: PiiScanner | None = None,
    ) -> None:
        from flywheel.filters.dedup import DedupIndex, MinHasher
        from flywheel.filters.pii import default_scanner
        from flywheel.filters.scorers import make_grounding_scorer, make_toxicity_scorer

        self.config = config
        self.cheap_rules: list[Rule] = basic_rules(config)
        self.hasher = MinHasher.from_config(config)
        self.toxicity = toxicity or make_toxicity_scorer(config.toxicity_scorer)
        self.grounding = grounding or make_grounding_scorer(config.grounding_scorer)
        self.pii = pii or default_scanner(config.pii_entities, config.pii_min_score)
        self.golden = golden_index(config, golden_inputs)
        if history is not None and history.hasher.spec != self.hasher.spec:
            raise ValueError(f"history fingerprints use {history.hasher.spec}, the chain {self.hasher.spec}")
        self.dedup = history if history is not None else DedupIndex(self.hasher, config.near_dup_threshold)

    @property
    def rule_names(self) -> list[str]:
        return [r.name for r in self.cheap_rules] + [
            "pii", "toxicity", "grounding", "decontamination", "dedup", "selection"
        ]

    def process(
        self, candidates: Sequence[TrainingCandidate], pushed_down: Sequence[TrainingCandidate] = ()
    ) -> FilterOutcome:
        """Judge a batch. ``pushed_down`` rows were rejected by the rules the warehouse query
        decided (action, quality score) and came without their text: they get those rules'
        decisions only."""
        cfg = self.config
        decisions, kept = apply_filters(candidates, self.cheap_rules)
        pushed_rules = [r for r in self.cheap_rules if r.name in PUSHED_DOWN_RULES]
        for c in pushed_down:
            for rule in pushed_rules:
                d = rule.decide(c)
                decisions.append(replace(d, reason=f"{d.reason} (decided in the warehouse query)"))

        # PII: redact (or drop) before any other rule, index or file sees the text.
        clean: list[TrainingCandidate] = []
        for c in kept:
            redacted, entities = redact_candidate(c, self.pii)
            if not entities:
                decisions.append(FilterDecision(c.request_id, "pii", True, 0.0, 0.0, "no PII found"))
                clean.append(redacted)
                continue
            found = ", ".join(f"{e} x{n}" for e, n in sorted(Counter(entities).items()))
            if cfg.pii_policy == "drop":
                decisions.append(
                    FilterDecision(c.request_id, "pii", False, float(len(entities)), 0.0, f"PII found ({found}); policy drops the row")
                )
            else:
                decisions.append(
                    FilterDecision(c.request_id, "pii", True, float(len(entities)), 0.0, f"PII redacted ({found})")
                )
                clean.append(redacted)

        texts = [interaction_text(c) for c in clean]
        tox = self.toxicity.score(texts)
        with_context = [i for i, c in enumerate(clean) if c.context]
        grounded = dict(zip(with_context, self.grounding.score([(clean[i].target, clean[i].context or "") for i in with_context]), strict=True))
        input_fp = self.hasher.fingerprint([input_text(c) for c in clean])
        contaminated = self.golden.check(input_fp, [c.request_id for c in clean], add_unique=False)

        passing: list[int] = []
        for i, c in enumerate(clean):
            ok_tox = tox[i] < cfg.max_toxicity
            decisions.append(
                FilterDecision(
                    c.request_id, "toxicity", ok_tox, tox[i], cfg.max_toxicity,
                    f"toxicity {tox[i]:.3f} {'<' if ok_tox else '>='} {cfg.max_toxicity} ({self.toxicity.name})",
                )
            )
            g = grounded.get(i)
            ok_g = g is None or g >= cfg.min_grounding
            decisions.append(
                FilterDecision(
                    c.request_id, "grounding", ok_g, g, cfg.min_grounding if g is not None else None,
                    "no context: not applicable" if g is None
                    else f"grounding {g:.3f} {'>=' if ok_g else '<'} {cfg.min_grounding} ({self.grounding.name})",
                )
            )
            m = contaminated[i]
            decisions.append(
                FilterDecision(
                    c.request_id, "decontamination", m is None, m.similarity if m else 0.0, cfg.decontamination_threshold,
                    "no golden-set overlap" if m is None
                    else f"input is an {m.kind} duplicate of {m.label} (similarity {m.similarity:.2f}): never train on the test",
                )
            )
            if ok_tox and ok_g and m is None:
                passing.append(i)

        # Dedup among what every other rule kept: the first copy is kept, later ones rejected.
        fp = self.hasher.fingerprint([texts[i] for i in passing])
        dups = self.dedup.check(fp, [f"request {clean[i].request_id}" for i in passing])
        survivors: list[Survivor] = []
        w = cfg.score_weights
        total_w = sum(w.values()) or 1.0
        for i, m in zip(passing, dups, strict=True):
            c = clean[i]
            decisions.append(
                FilterDecision(
                    c.request_id, "dedup", m is None, m.similarity if m else 0.0, cfg.near_dup_threshold,
                    "first copy" if m is None else f"{m.kind} duplicate of {m.label} (similarity {m.similarity:.2f})",
                )
            )
            if m is None:
                g = grounded.get(i)
                score = (
                    w.get("quality", 0) * c.quality_score
                    + w.get("grounding", 0) * (1.0 if g is None else g)
                    + w.get("non_toxicity", 0) * (1.0 - tox[i])
                    + w.get("correction", 0) * (1.0 if c.user_action == "corrected" else 0.0)
                ) / total_w
                survivors.append(Survivor(c, score))
        return FilterOutcome(decisions, survivors)


def select_top(
    survivors: Sequence[tuple[str, str, float]],
    candidates_per_type: dict[str, int],
    *,
    keep_fraction: float,
    min_per_task_type: int,
) -> tuple[list[FilterDecision], set[str]]:
    """Keep the best-scored survivors of each task type: its quota is ``keep_fraction`` of the
    type's candidates in the window (at least ``min_per_task_type``), so a rare type keeps its
    share instead of losing every slot to the common ones.

    ``survivors`` are ``(request_id, task_type, score)``; ties go to the smaller request id.
    """
    by_type: dict[str, list[tuple[str, float]]] = {}
    for rid, task_type, score in survivors:
        by_type.setdefault(task_type, []).append((rid, score))
    decisions: list[FilterDecision] = []
    selected: set[str] = set()
    for task_type, items in sorted(by_type.items()):
        items.sort(key=lambda x: (-x[1], x[0]))
        quota = max(min_per_task_type, math.ceil(keep_fraction * candidates_per_type.get(task_type, len(items))))
        cutoff = items[min(quota, len(items)) - 1][1]
        for rank, (rid, score) in enumerate(items, start=1):
            ok = rank <= quota
            if ok:
                selected.add(rid)
            decisions.append(
                FilterDecision(
                    rid, "selection", ok, score, cutoff,
                    f"rank {rank} of {len(items)} in task_type {task_type!r} (quota {quota}, score {score:.3f}"
                    + (")" if ok else f" < cutoff {cutoff:.3f})"),
                )
            )
    return decisions, selected


@dataclass
class StreamResult:
    candidates: int
    candidates_per_type: Counter[str]
    survivors: list[tuple[str, str, float]]  # (request_id, task_type, score), for selection


def filter_stream(
    batches: Iterable[FilterBatch],
    chain: FilterChain,
    *,
    on_decisions: Any,
    on_survivors: Any,
) -> tuple[StreamResult, list[FilterDecision], set[str]]:
    """Run ``chain`` over batches, then selection; memory stays bounded by the batch size plus
    the dedup index and one (id, type, score) per survivor.

    ``on_decisions(list[FilterDecision])`` and ``on_survivors(list[Survivor])`` receive each
    batch's output (to a file, the warehouse, or a counter). Returns the stream's counts, the
    selection decisions and the selected request ids.
    """
    result = StreamResult(0, Counter(), [])
    for batch in batches:
        result.candidates += len(batch.candidates) + len(batch.pushed_down)
        result.candidates_per_type.update(c.task_type for c in (*batch.candidates, *batch.pushed_down))
        outcome = chain.process(batch.candidates, batch.pushed_down)
        on_decisions(outcome.decisions)
        if outcome.survivors:
            result.survivors.extend((s.candidate.request_id, s.candidate.task_type, s.score) for s in outcome.survivors)
            on_survivors(outcome.survivors)
    cfg = chain.config
    selection, selected = select_top(
        result.survivors, dict(result.candidates_per_type),
        keep_fraction=cfg.keep_fraction, min_per_task_type=cfg.min_per_task_type,
    )  # fmt: skip
    on_decisions(selection)
    return result, selection, selected
