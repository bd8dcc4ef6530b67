"""PII detection and redaction with presidio's pattern recognizers, fully offline.

Presidio runs on a blank spaCy pipeline (tokenisation only: no model download) with the pattern
and checksum recognizers for e-mail, phone, credit card, IBAN, IP, US SSN and crypto wallet
addresses, a recognizer for secrets (API keys, tokens, private keys: `flywheel.filters.secrets`,
detect-secrets' formats) and one for person names (`flywheel.filters.names`: no NER model
installs offline, so a gazetteer, capitals and cue words). The e-mail recognizer validates domains with `tldextract`, which by default fetches
the public suffix list from the network; here it uses the snapshot bundled with the package.

Text is scanned after `flywheel.text.strip_invisible`, so full-width characters and zero-width
splits do not hide a value. A redacted text is that normalised text with each value replaced by
``<ENTITY_TYPE>``. Reasons and logs name entity types, never the values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from flywheel.config import PII_ENTITIES, FlywheelConfig
from flywheel.filters.names import PERSON, find_names, may_hold_name
from flywheel.filters.secrets import SECRET, extend_secret, may_hold_secret, secret_recognizer
from flywheel.text import strip_invisible

# presidio, spaCy and tldextract are imported inside the functions that use them: they take
# seconds to import (a spaCy pipeline, a suffix list), and only the PII rule needs them.

# Every supported entity needs one of these to be present; text without any skips presidio.
# (E-mail: '@'; IPv6: ':'; phone, card, IBAN, SSN, IPv4: at least four digits; crypto wallet
# addresses: a long alphanumeric run.)
_LONG_ALNUM = re.compile(r"[A-Za-z0-9]{25,}")

# spaCy refuses a text over its ``max_length`` (1,000,000 characters), so one huge field would
# fail every retry of the task that scans it. Long texts are scanned in windows of CHUNK
# characters that overlap by 2 x MARGIN; a hit is kept from the window whose own stretch (the
# window less MARGIN at each inner edge) holds its start, so each value is found whole, once,
# in a window that also holds MARGIN characters of context before it. Values longer than MARGIN
# (no supported kind: an e-mail address is at most 254 characters) could be cut at a window's end.
CHUNK = 100_000
MARGIN = 256


def may_hold_pii(text: str) -> bool:
    if "@" in text or ":" in text:
        return True
    if sum(ch.isdigit() for ch in text) >= 4:
        return True
    return bool(_LONG_ALNUM.search(text)) or may_hold_secret(text)


@dataclass(frozen=True)
class PiiHit:
    entity: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Redaction:
    text: str
    entities: tuple[str, ...]  # entity types replaced, one per value, in order

    @property
    def changed(self) -> bool:
        return bool(self.entities)


def _recognizers(entities: Sequence[str]) -> list[Any]:
    import tldextract
    from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    offline_tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_tld(pattern_text).fqdn != ""

    class PostalAddressRecognizer(EntityRecognizer):
        """Full postal addresses (number, street, city, state or county, postcode) by pyap's
        patterns for the US, Canada and Great Britain."""

        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            import pyap

            found = []
            # pyap's GB patterns cost 7x the others: they run only on text with a GB postcode.
            for country in ("US", "CA", "GB") if GB_POSTCODE.search(text) else ("US", "CA"):
                for address in pyap.parse(text, country=country):
                    found.append(RecognizerResult(STREET_ADDRESS, address.match_start, address.match_end, 0.85))
            return found

    class PersonNameRecognizer(EntityRecognizer):
        """Person names by a gazetteer, capitals and cue words (`flywheel.filters.names`)."""

        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [RecognizerResult(PERSON, start, end, score) for start, end, score in find_names(text)]

    def pattern(entity: str, name: str, regex: str, score: float = 0.85) -> Any:
        return PatternRecognizer(supported_entity=entity, name=f"{name}Recognizer", patterns=[Pattern(name, regex, score)])

    makers: dict[str, Callable[[], list[Any]]] = {
        "EMAIL_ADDRESS": lambda: [OfflineEmailRecognizer()],
        "PHONE_NUMBER": lambda: [PhoneRecognizer()],
        # presidio's card patterns, plus Mastercard's 2-series (2221-2720), which they miss; Luhn checks both.
        "CREDIT_CARD": lambda: [CreditCardRecognizer(), CreditCardRecognizer(
            patterns=[Pattern("mastercard-2-series", MASTERCARD_2_SERIES, 0.3)], name="Mastercard2SeriesRecognizer")],
        "IBAN_CODE": lambda: [IbanRecognizer()],
        "IP_ADDRESS": lambda: [IpRecognizer()],
        # presidio's SSN patterns need separators unless context words lift the score, which a
        # blank pipeline cannot do; nine bare digits count where the text names them an SSN.
        "US_SSN": lambda: [UsSsnRecognizer(), pattern("US_SSN", "ssn-named", SSN_NAMED)],
        "CRYPTO": lambda: [CryptoRecognizer()],
        "SECRET": lambda: [secret_recognizer()],
        "US_PASSPORT": lambda: [pattern("US_PASSPORT", "passport-named", PASSPORT_NAMED)],
        "DATE_OF_BIRTH": lambda: [pattern("DATE_OF_BIRTH", "birth-date-named", BIRTH_DATE_NAMED)],
        "STREET_ADDRESS": lambda: [PostalAddressRecognizer(supported_entities=[STREET_ADDRESS], name="PostalAddressRecognizer")],
        PERSON: lambda: [PersonNameRecognizer(supported_entities=[PERSON], name="PersonNameRecognizer")],
    }  # fmt: skip
    return [r for e in entities for r in makers[e]()]


STREET_ADDRESS = "STREET_ADDRESS"
GB_POSTCODE = re.compile(r"\b[A-Za-z]{1,2}\d[A-Za-z\d]?\s*\d[A-Za-z]{2}\b")
MASTERCARD_2_SERIES = r"\b2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)(?:[ -]?\d{4}){3}\b"
# Values that are PII because the text says what they are: the naming words are matched with them.
_NAMED = r"\s*(?:is|was|:|#|-|=)?\s*"
SSN_NAMED = r"(?i)\b(?:ssn|social(?:\s+security)?(?:\s+(?:number|no\.?|num|#))?)" + _NAMED + r"\d{3}[ -]?\d{2}[ -]?\d{4}\b"
PASSPORT_NAMED = r"(?i)\bpassport(?:\s+(?:number|no\.?|num|#))?" + _NAMED + r"[A-Z]{0,2}\d{6,9}\b"
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = (r"(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?" + _MONTH +
         r",?\s+\d{4}|" + _MONTH + r"\s+\d{1,2}(?:st|nd|rd|th)?,?\s+\d{4})")  # fmt: skip
BIRTH_DATE_NAMED = r"(?i)\b(?:date\s+of\s+birth|d\.?o\.?b\.?|born(?:\s+on)?|birth\s*date|birthday)" + _NAMED + _DATE


class PiiScanner:
    """Finds and redacts the configured PII entities. Built lazily: presidio takes seconds to load."""

    def __init__(self, entities: Sequence[str] = PII_ENTITIES, min_score: float = 0.4) -> None:
        unknown = sorted(set(entities) - set(PII_ENTITIES))
        if unknown:
            raise ValueError(f"unsupported PII entities {unknown}; supported: {list(PII_ENTITIES)}")
        self.entities = tuple(entities)
        self.min_score = min_score
        self._engine: Any = None

    def _analyzer(self) -> Any:
        if self._engine is None:
            import spacy
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import SpacyNlpEngine

            class BlankSpacyEngine(SpacyNlpEngine):
                """Tokenisation only: a blank English pipeline, nothing to download."""

                def load(self) -> None:
                    self.nlp = {"en": spacy.blank("en")}  # type: ignore[assignment]

            nlp = BlankSpacyEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])
            nlp.load()
            registry = RecognizerRegistry(supported_languages=["en"])
            for recognizer in _recognizers(self.entities):
                registry.add_recognizer(recognizer)
            self._engine = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
        return self._engine

    def scan(self, text: str) -> list[PiiHit]:
        """PII values in the normalised ``text`` (offsets refer to `strip_invisible(text)`)."""
        clean = strip_invisible(text)
        if not clean:
            return []
        if not may_hold_pii(clean):
            # Nothing but a name can be there: the name finder alone, without presidio's pipeline.
            if PERSON not in self.entities or not may_hold_name(clean):
                return []
            return [PiiHit(PERSON, b, e, score) for b, e, score in find_names(clean) if score >= self.min_score]
        hits: list[PiiHit] = []
        for start, own_start, own_end in _windows(len(clean)):
            results = self._analyzer().analyze(
                clean[start : start + CHUNK], language="en", entities=list(self.entities), score_threshold=self.min_score
            )
            for r in results:
                if own_start <= start + r.start < own_end:
                    begin, end = start + r.start, start + r.end
                    if r.entity_type == SECRET:
                        begin, end = extend_secret(clean, begin, end)
                    hits.append(PiiHit(r.entity_type, begin, end, float(r.score)))
        return hits

    def redact(self, text: str) -> Redaction:
        """``text`` with every PII value replaced by ``<ENTITY_TYPE>``; unchanged when none."""
        hits = self.scan(text)
        if not hits:
            return Redaction(text, ())
        clean = strip_invisible(text)
        # Overlapping hits: keep the higher score, then the longer span.
        chosen: list[PiiHit] = []
        for hit in sorted(hits, key=lambda h: (-h.score, -(h.end - h.start), h.start)):
            if all(hit.end <= c.start or hit.start >= c.end for c in chosen):
                chosen.append(hit)
        chosen.sort(key=lambda h: h.start)
        parts, pos = [], 0
        for hit in chosen:
            parts.append(clean[pos : hit.start])
            parts.append(f"<{hit.entity}>")
            pos = hit.end
        parts.append(clean[pos:])
        return Redaction("".join(parts), tuple(h.entity for h in chosen))


def _windows(n: int) -> list[tuple[int, int, int]]:
    """(window start, own stretch start, own stretch end) covering ``n`` characters; one window
    when the text fits in one."""
    if n <= CHUNK:
        return [(0, 0, n)]
    out: list[tuple[int, int, int]] = []
    start = 0
    while True:
        own_start = 0 if start == 0 else start + MARGIN
        if start + CHUNK >= n:
            return [*out, (start, own_start, n)]
        out.append((start, own_start, start + CHUNK - MARGIN))
        start += CHUNK - 2 * MARGIN


@cache
def _scanner(entities: tuple[str, ...], min_score: float) -> PiiScanner:
    return PiiScanner(entities, min_score)


def default_scanner(entities: Sequence[str] = PII_ENTITIES, min_score: float = 0.4) -> PiiScanner:
    """One shared scanner per configuration in a process (presidio's set-up is the slow part)."""
    return _scanner(tuple(entities), float(min_score))


# The fields a quarantined row shows redacted; ``raw_line`` is a line the ingestion could not
# read as a record (`flywheel.data.ingest`).
QUARANTINE_TEXT_FIELDS = ("prompt", "response", "correction", "context", "user_id", "raw_line")


def redact_row_for_quarantine(row: dict[str, Any], config: FlywheelConfig) -> dict[str, Any]:
    """The quarantined row as kept for operators: its text fields cut to
    ``validation.max_text_chars`` (the rest is named, not kept: the log row still holds it) and
    with PII redacted. The cut also bounds the scan: a hostile megabyte field costs the scanner
    tens of seconds, once per row."""
    scanner = default_scanner(config.filters.pii_entities, config.filters.pii_min_score)
    limit = config.validation.max_text_chars
    out = dict(row)
    for name in QUARANTINE_TEXT_FIELDS:
        value = out.get(name)
        if isinstance(value, str) and value:
            cut = f" [... {len(value) - limit} more characters not kept]" if len(value) > limit else ""
            out[name] = scanner.redact(value[:limit]).text + cut
    return out
