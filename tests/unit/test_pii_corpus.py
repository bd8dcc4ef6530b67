"""The PII scanner against values it did not make: 50 of each of 14 kinds, written the ways real
logs write them (`tests/helpers/pii_values.py`), in every text field. No covered kind leaks
through redaction in any written form, and the clean twin of each sentence stays untouched."""

from __future__ import annotations

import pytest

from flywheel.config import PII_ENTITIES
from flywheel.filters.pii import PiiScanner
from tests.helpers.pii_values import KINDS, leaked, planted

# Person names need a named-entity model; none installs from the package registry, and nothing
# may be downloaded at run time (see docs/filters.md).
NOT_COVERED = {"person_name"}


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner(PII_ENTITIES, 0.4)


@pytest.mark.parametrize("kind", sorted(set(KINDS) - NOT_COVERED))
def test_no_planted_value_survives_redaction(scanner, kind):
    values = [p for p in planted(50) if p.kind == kind]
    assert len(values) == 50 and {p.field for p in values} == {"prompt", "response", "correction", "context"}
    leaks = [p.value for p in values if leaked(p.value, scanner.redact(p.text).text)]
    assert not leaks, f"{len(leaks)} of 50 {kind} values leaked, e.g. {leaks[:3]}"
    assert not [p.control for p in values if scanner.scan(p.control)], "a clean twin was flagged"


@pytest.mark.xfail(strict=True, reason="person names need an NER model that cannot be installed offline")
def test_person_names_are_a_known_gap(scanner):
    values = [p for p in planted(50) if p.kind == "person_name"]
    assert not [p for p in values if leaked(p.value, scanner.redact(p.text).text)]
