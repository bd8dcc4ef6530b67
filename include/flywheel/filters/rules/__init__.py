"""The rules the chain runs, in the order it runs them and the decisions table, the metrics and
the report list them. One module per rule; a new rule is a module here and one entry below."""

from __future__ import annotations

from flywheel.filters.base import Rule
from flywheel.filters.rules.action import ActionRule
from flywheel.filters.rules.decontamination import DecontaminationRule
from flywheel.filters.rules.dedup import DedupRule
from flywheel.filters.rules.grounding import GroundingRule
from flywheel.filters.rules.length import LengthRule
from flywheel.filters.rules.pii import PiiRule
from flywheel.filters.rules.quality import QualityScoreRule
from flywheel.filters.rules.selection import SelectionRule
from flywheel.filters.rules.toxicity import ToxicityRule

# Ordered by stage (the chain relies on it; a test checks it), then as the reports show them.
RULES: tuple[type[Rule], ...] = (
    ActionRule,
    LengthRule,
    QualityScoreRule,
    PiiRule,
    ToxicityRule,
    GroundingRule,
    DecontaminationRule,
    DedupRule,
    SelectionRule,
)
RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)
