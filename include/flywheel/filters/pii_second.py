"""A second, independent PII detector for the training-set gate.

The `pii` filter redacts with presidio (`flywheel.filters.pii`); a gate asking the same
recognizers would pass whatever they miss a second time. This detector shares no code with
them: identifiers with a check digit are validated by python-stdnum (made for exactly this:
card numbers by the Luhn check and a card brand's prefix, IBANs by ISO 7064 mod 97, US SSNs by
the SSA's rules), e-mail addresses by their shape, and credentials by the marks a pasted one
leaves (a private-key header, a password in a URL, ``password=...``). It only has to find, never
to redact, so it reports kinds, not spans, and a redaction placeholder (``<CREDIT_CARD>``) is
nothing to it.
"""

from __future__ import annotations

import re

from stdnum import iban, luhn
from stdnum.us import ssn

_DIGIT_RUN = re.compile(r"(?<!\d)(?<!\d\.)\d(?:[ -]?\d){12,18}(?!\d|\.\d)")  # not inside a decimal
_IBAN_LIKE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_SSN_LIKE = re.compile(r"(?<!\d)\d{3}[- ]\d{2}[- ]\d{4}(?!\d)")
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CREDENTIAL = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|[a-z][a-z0-9+.-]*://[^\s/:@]*:[^\s/@]{3,}@"
    r"|(?i:\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token)\b\s*[:=]\s*['\"]?(?!<)[^\s'\"]{6,})"
)
# Issuer prefixes of the card brands (Visa, Mastercard 51-55 and 2221-2720, Amex, Discover,
# Diners, JCB, UnionPay, Maestro): a Luhn-valid run without one is some other number.
_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|6(?:011|5|4[4-9]|2)|3(?:0[0-5]|[68])|35|5[06-9]|6")


def _card(run: str) -> bool:
    digits = re.sub(r"[ -]", "", run)
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and luhn.is_valid(digits)


def pii_kinds(text: str) -> list[str]:
    """The kinds of PII this detector sees in ``text`` (empty when none)."""
    found = []
    if any(_card(m.group()) for m in _DIGIT_RUN.finditer(text)):
        found.append("card_number")
    if any(iban.is_valid(m.group()) for m in _IBAN_LIKE.finditer(text)):
        found.append("iban")
    if any(ssn.is_valid(m.group()) for m in _SSN_LIKE.finditer(text)):
        found.append("us_ssn")
    if _EMAIL.search(text):
        found.append("email")
    if _CREDENTIAL.search(text):
        found.append("credential")
    return found
