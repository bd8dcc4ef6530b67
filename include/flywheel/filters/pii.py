"""PII detection and redaction with presidio's pattern recognizers, fully offline.

Presidio runs on a blank spaCy pipeline (tokenisation only: no model download) with the pattern
and checksum recognizers for e-mail, phone, credit card, IBAN, IP, US SSN and crypto wallet
addresses, and a recognizer for secrets (API keys, tokens, private keys: `flywheel.filters.secrets`,
detect-secrets' formats). The e-mail recognizer validates domains with `tldextract`, which by default fetches
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

    makers: dict[str, Callable[[], Any]] = {
        "EMAIL_ADDRESS": OfflineEmailRecognizer,
        "PHONE_NUMBER": PhoneRecognizer,
        "CREDIT_CARD": CreditCardRecognizer,
        "IBAN_CODE": IbanRecognizer,
        "IP_ADDRESS": IpRecognizer,
        "US_SSN": UsSsnRecognizer,
        "CRYPTO": CryptoRecognizer,
        "SECRET": secret_recognizer,
    }
    return [makers[e]() for e in entities]


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
        if not clean or not may_hold_pii(clean):
            return []
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
