"""Secrets in text (API keys, access tokens, private keys, passwords in URLs) as a presidio
recognizer, so the PII rule, the review items, the quarantine and the training-set gate find
them the way they find an e-mail address, and redact them as ``<SECRET>``.

The token formats are detect-secrets' own (Yelp's scanner for secrets in code; its plugins'
``denylist`` regular expressions, kept up to date with the vendors' formats): AWS, Azure storage,
credentials in URLs, Discord, GitHub, GitLab, JWTs, Mailchimp, OpenAI, PyPI, SendGrid, Slack,
Square, Stripe, Telegram and Twilio. detect-secrets' line scanner reports a value but not where
it is (for GitHub tokens only its prefix), so the regular expressions are run here, each with
its own flags. Its keyword and entropy plugins are left out: they are built for source code,
where a quoted high-entropy string is rare; in chat text they would flag ids and hashes.

A few formats it lacks are added here: keys of the ``sk-``/``pk-``/``rk-`` families (OpenAI
project keys, Anthropic keys, and many vendors' test and live keys), Google API keys, whole PEM
private-key blocks (detect-secrets matches the header line only) and a value after a key word
(``api_key: ...``, ``password=...``).
"""

from __future__ import annotations

import re
from typing import Any

SECRET = "SECRET"
# detect-secrets plugins whose denylist is a token format (not a keyword in code, not an IP).
DETECT_SECRETS_PLUGINS = (
    "AWSKeyDetector", "AzureStorageKeyDetector", "BasicAuthDetector", "DiscordBotTokenDetector",
    "GitHubTokenDetector", "GitLabTokenDetector", "JwtTokenDetector", "MailchimpDetector", "OpenAIDetector",
    "PypiTokenDetector", "SendGridDetector", "SlackDetector", "SquareOAuthDetector", "StripeDetector",
    "TelegramBotTokenDetector", "TwilioKeyDetector",
)  # fmt: skip
EXTRA_PATTERNS = {
    "prefixed_key": r"\b(?:sk|pk|rk)[-_](?:proj-|ant-(?:api\d\d-)?|live_|test_|live-|test-)?[A-Za-z0-9_\-]{20,}",
    "google_api_key": r"\bAIza[0-9A-Za-z_\-]{35}",
    "pem_private_key": r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    "keyword_value": r"(?i)\b(?:api[_\- ]?key|access[_\- ]?key|secret(?:[_\- ]?key)?|auth[_\- ]?token|token|passw(?:or)?d)"
                     r"\b[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9_\-+/=.~]{12,}",
}  # fmt: skip
# A secret is a run of at least 16 key characters with a digit and a letter in it, or one of the
# block or URL forms: text without one skips the regular expressions. Runs are found first and
# then looked into, so the check stays linear in the text's length (lookaheads at every position
# of one long run would be quadratic: a hostile 1 MiB field).
_RUN = re.compile(r"[A-Za-z0-9_\-+/=.]{16,}")
_FORMS = re.compile(r"PRIVATE KEY|://[^\s/@]+:[^\s/@]+@")


def may_hold_secret(text: str) -> bool:
    if _FORMS.search(text):
        return True
    for run in _RUN.finditer(text):
        value = run.group()
        if any(ch.isdigit() for ch in value) and any(ch.isalpha() for ch in value):
            return True
    return False


_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+/=.")


def extend_secret(text: str, start: int, end: int) -> tuple[int, int]:
    """A match widened over the key characters around it: a format that names a fixed length or
    ends lazily (GitHub tokens, JWT signatures) must not leave the rest of the value in the
    text. A final '.' is a full stop, not part of the key."""
    if text[start : start + 1] in _KEY_CHARS:
        while start > 0 and text[start - 1] in _KEY_CHARS:
            start -= 1
    while end < len(text) and text[end] in _KEY_CHARS:
        end += 1
    while end > start + 1 and text[end - 1] == ".":
        end -= 1
    return start, end


def secret_patterns() -> list[tuple[str, str]]:
    """(name, regular expression) of every secret format, each with its own flags inline."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    plugins: list[Any] = list(get_mapping_from_secret_type_to_class().values())
    classes = {plugin.__name__: plugin for plugin in plugins}
    out: list[tuple[str, str]] = []
    for name in DETECT_SECRETS_PLUGINS:
        for k, rx in enumerate(classes[name]().denylist):
            flags = ("i" if rx.flags & re.IGNORECASE else "") + ("x" if rx.flags & re.VERBOSE else "")
            out.append((f"{name}-{k}", (f"(?{flags})" if flags else "") + rx.pattern))
    return out + list(EXTRA_PATTERNS.items())


def secret_recognizer() -> Any:
    """A presidio `PatternRecognizer` for ``SECRET`` (case-sensitive unless a pattern says not)."""
    from presidio_analyzer import Pattern, PatternRecognizer

    patterns = [Pattern(name, regex, 0.9) for name, regex in secret_patterns()]
    return PatternRecognizer(supported_entity=SECRET, name="SecretRecognizer", patterns=patterns,
                             global_regex_flags=re.MULTILINE | re.DOTALL)  # fmt: skip
