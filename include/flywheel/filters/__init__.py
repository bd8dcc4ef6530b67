"""Per-row filter decisions with reasons: the method's every filter, one module per rule.

The chain (`chain.FilterChain`) runs the rules of `rules.RULES` stage by stage (`base.Stage`).
The cheap rules (user action, length, quality score) judge every candidate with no
short-circuit, so the decisions table shows all the reasons a row failed and calibration sees
each rule on its own. PII then redacts the rows they kept, the text rules (toxicity, grounding,
decontamination) judge what PII kept, dedup what every other rule kept, and selection ranks
what is left over the whole window. A candidate is kept only when every rule it met kept it;
each decision names the rule, the score, the threshold and the reason, and never quotes a PII
value. `dedup`, `pii` and `scorers` are the detectors the rules use.

A rule is one class in one module of `rules/`, listed once in `rules.RULES`; it declares its
name, stage, the `FiltersConfig` fields it reads (``settings``), its decision, and optionally
the threshold calibration may fit (``calibration``) and the part the warehouse query decides
(`pushdown`). Everything that lists rules reads that registry: the chain, `pushdown_for`, the
calibration (`flywheel.review.calibrate`), the metrics' and the report's rule order.

Why a rule's settings stay fields of `FiltersConfig` (one line each in `flywheel.config`)
instead of living in the rule's module: the config is the bottom layer that every stage, the
phase policy, calibration's overrides and the DAG params validate their keys against when it is
loaded, before any rule is built; if it were assembled from the rule modules, `flywheel.config`
would import this package, which imports the config (a cycle), and a YAML key would be checked
only once a chain is built. So the config stays the one place that shows every threshold with
its default and bounds (the YAML keys users set are unchanged), and a rule names the fields it
reads; the tests check that every field a rule names exists and that every field has a rule.
"""

from flywheel.filters.base import (
    BatchRule,
    Calibration,
    ChainInputs,
    FilterDecision,
    Row,
    RowRule,
    Rule,
    Stage,
    Survivor,
    WindowRule,
    input_text,
    interaction_text,
)
from flywheel.filters.chain import (
    FilterBatch,
    FilterChain,
    FilterOutcome,
    StreamResult,
    apply_filters,
    basic_rules,
    filter_stream,
    pushdown_for,
)
from flywheel.filters.rules import RULE_NAMES, RULES
from flywheel.filters.rules.action import ActionRule
from flywheel.filters.rules.decontamination import DecontaminationRule, golden_index
from flywheel.filters.rules.dedup import DedupRule
from flywheel.filters.rules.grounding import GroundingRule
from flywheel.filters.rules.length import LengthRule
from flywheel.filters.rules.pii import PiiRule, redact_candidate
from flywheel.filters.rules.quality import QualityScoreRule
from flywheel.filters.rules.selection import SelectionRule, select_top
from flywheel.filters.rules.toxicity import ToxicityRule

__all__ = [
    "RULES",
    "RULE_NAMES",
    "ActionRule",
    "BatchRule",
    "Calibration",
    "ChainInputs",
    "DecontaminationRule",
    "DedupRule",
    "FilterBatch",
    "FilterChain",
    "FilterDecision",
    "FilterOutcome",
    "GroundingRule",
    "LengthRule",
    "PiiRule",
    "QualityScoreRule",
    "Row",
    "RowRule",
    "Rule",
    "SelectionRule",
    "Stage",
    "StreamResult",
    "Survivor",
    "ToxicityRule",
    "WindowRule",
    "apply_filters",
    "basic_rules",
    "filter_stream",
    "golden_index",
    "input_text",
    "interaction_text",
    "pushdown_for",
    "redact_candidate",
    "select_top",
]
