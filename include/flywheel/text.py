"""Text normalisation shared by the filters, so that no rule is fooled by unicode tricks.

Full-width letters, ligatures and compatibility forms fold to their plain forms (NFKC), and
invisible format characters (zero-width spaces and joiners, soft hyphens, bidi marks) are
removed, so ``ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ`` or ``f\u200buck`` look to a rule like what a reader sees.
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_SPACE = re.compile(r"\s+")


def strip_invisible(text: str) -> str:
    """NFKC, without format characters (Unicode category Cf)."""
    folded = unicodedata.normalize("NFKC", text)
    if not any(unicodedata.category(ch) == "Cf" for ch in folded):
        return folded
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf")


def normalize_text(text: str) -> str:
    """What a rule compares: visible characters, case-folded, single-spaced."""
    return _SPACE.sub(" ", strip_invisible(text).casefold()).strip()


def word_tokens(text: str) -> list[str]:
    """Word tokens of the normalised text (punctuation dropped)."""
    return _WORD.findall(normalize_text(text))


def count_words(text: str) -> int:
    """Words a reader sees: whitespace-separated pieces of the visible text (`strip_invisible`)
    that hold a letter or digit. Emoji or punctuation alone are no word, and words joined by
    zero-width characters are one."""
    return sum(1 for piece in strip_invisible(text).split() if _WORD.search(piece))


# Tokens besides words: punctuation, maths and currency signs. Emoji and other symbols (So),
# modifiers (Sk) and combining marks are left out, so a string of emoji is not a long answer.
_TOKEN_MARKS = ("P", "Sm", "Sc")


def count_tokens(text: str) -> int:
    """Tokenizer-independent token count of the visible text: words and punctuation marks."""
    return sum(
        1
        for tok in _TOKEN.findall(strip_invisible(text))
        if tok[0].isalnum() or tok[0] == "_" or unicodedata.category(tok[0]).startswith(_TOKEN_MARKS)
    )
