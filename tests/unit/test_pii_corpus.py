"""The PII scanner against values it did not make: 50 of each of 14 kinds, written the ways real
logs write them (`tests/helpers/pii_values.py`), in every text field. No covered kind leaks
through redaction in any written form, and the clean twin of each sentence stays untouched."""

from __future__ import annotations

import pytest

from flywheel.config import PII_ENTITIES
from flywheel.filters.pii import PiiScanner
from tests.helpers.pii_values import KINDS, leaked, planted


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner(PII_ENTITIES, 0.4)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_planted_value_survives_redaction(scanner, kind):
    values = [p for p in planted(50) if p.kind == kind]
    assert len(values) == 50 and {p.field for p in values} == {"prompt", "response", "correction", "context"}
    leaks = [p.value for p in values if leaked(p.value, scanner.redact(p.text).text)]
    assert not leaks, f"{len(leaks)} of 50 {kind} values leaked, e.g. {leaks[:3]}"
    assert not [p.control for p in values if scanner.scan(p.control)], "a clean twin was flagged"


def test_names_in_running_text_are_found_and_common_capitals_are_not(scanner):
    """Person names outside the planted templates: cue words in any case, titles, initials,
    names from many countries; and capitalised pairs of ordinary text that are no one."""
    named = {
        "Please forward this to Siobhan O'Neil before Friday.": "Siobhan O'Neil",
        "hi, my name is tomasz kowalczyk and my order is late": "tomasz kowalczyk",
        "Regards, Oluwaseun Adeyemi": "Oluwaseun Adeyemi",
        "The form was signed by Prof. Lindqvist yesterday.": "Lindqvist",
        "Ask Priya R. Raghunathan about the invoice.": "Priya R. Raghunathan",
        "Thanks Mateo, that fixed it.": "Mateo",
    }
    assert [t for t, name in named.items() if leaked(name, scanner.redact(t).text)] == []
    ordinary = [
        "Meet me at Victoria Station on Monday.",
        "Summer Sale ends in June; New York stores open at nine.",
        "Apache Airflow and Great Expectations run the checks.",
        "What is the capital of France? Paris.",
        "I am happy with the answer, thank you.",
        "THE END OF THE REPORT",
    ]
    assert [t for t in ordinary if scanner.scan(t)] == []
