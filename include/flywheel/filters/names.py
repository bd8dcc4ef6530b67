"""Person names without a named-entity model: a gazetteer, capitalisation and the words around.

No NER model installs from the package registry (spaCy's come from GitHub releases, GLiNER's
and Flair's from the Hugging Face hub), and nothing may be downloaded at run time. Names are
found instead by evidence a reader also uses:

- a **full name**: a known first name followed by a capitalised word (a known surname, or any
  capitalised word that is not a common non-name such as ``Street`` or ``Monday``), with an
  optional middle name or initial (``Dana J. Whitfield``); or an unknown capitalised word
  followed by a known surname (``Oluwaseun Adeyemi``);
- a **title**: ``Mr``, ``Dr``, ``Prof`` ... followed by capitalised words (``Dr. Kowalczyk``);
- a **cue**: words that introduce a name (``my name is``, ``dear``, ``thanks,``, ``regards,``),
  followed by a known first name or surname in any case (``my name is dana whitfield``).

The gazetteer is Faker's person providers (first and last names of every locale it ships,
Latin-script or romanised; Faker is maintained and its lists come from national statistics),
less English function words and a list of capitalised words that are surnames somewhere but
mostly something else. What this misses: a lone first name without a cue (``Dana called``),
names written in lower case without a cue, and names outside Latin script. What it flags that
is no person: a capitalised pair such as ``Summer Sale`` whose first word is also a first name.
Redaction costs such a pair two words; the recall is measured in ``benchmarks/pii.py``.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from functools import cache

PERSON = "PERSON"

# A word: letters, with inner apostrophes or hyphens (O'Neil, Smith-Jones).
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_INITIAL = re.compile(r"[^\W\d_]\.?")
TITLES = frozenset(
    "mr mrs ms miss mx dr prof professor sir dame mister madam mme mlle herr frau sr sra srta dott sig".split()
)
# Words that introduce a name; matched case-insensitively, with optional punctuation after.
_CUE = re.compile(
    r"(?i)\b(?:my\s+name\s+is|my\s+name's|name\s*:|i\s+am|i'm|this\s+is|call\s+me|dear|hi|hello|hey|"
    r"thanks|thank\s+you|regards|sincerely|cheers|signed|attn|attention|ask\s+for|speak\s+(?:to|with)|"
    r"talk\s+to|patient|customer|employee|contact)\b[,:.]?\s+"
)
# Capitalised words that are someone's surname (or first name) in some list but in running text
# are mostly places, times, things or sentence openers.
NOT_NAMES = frozenset(
    """
    monday tuesday wednesday thursday friday saturday sunday january february march april may june july
    august september october november december spring summer autumn fall winter street st avenue ave road
    rd lane drive boulevard way court place square park station river lake hill hills mount mountain
    bridge beach bay island islands valley creek forest wood woods field fields north south east west
    northern southern eastern western new old great little big grand upper lower central city town
    county state states country kingdom republic united university college school academy hospital
    clinic airport bank church chapel hall tower centre center house market museum library
    hotel restaurant cafe bar club group company inc ltd llc corp corporation office department
    ministry council police fire army navy day night morning evening week month year time
    black white green brown gray grey red blue gold silver rose golden english french german spanish
    italian chinese japanese american british european african asian christmas easter god lord
    king queen prince princess duke earl lady saint san santa los las del la le de van von al el
    will can must shall should would could might love hope joy faith grace art job star sky sun
    moon rain snow storm wind stone rock water light dark bright sweet happy lucky young long short
    rich poor strong wise early late dear thanks thank hi hello hey regards sincerely cheers best kind
    please sorry yes no okay ok true false none null cloud data code python java rust go ruby swift
    general major minor public private line press add server client media meta case key font list room
    user admin support service help team sales price total free open close start end page
    """.split()
)


# Endings of English words that are rarely surnames ("Line Architecture", "Media Downloads").
_WORDISH_ENDING = re.compile(
    r"(?:tion|sion|ment|ture|ness|ity|ance|ence|ics|ware|ing|ings|ers|ies|able|ible|ful|less|ous|ive|ize|ise|ed|ly)$"
)


@cache
def gazetteer() -> tuple[frozenset[str], frozenset[str]]:
    """(first names, surnames), case-folded, from every Faker locale; loaded once (about 2 s)."""
    import faker.providers.person as person

    first: set[str] = set()
    last: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for attribute in dir(provider):
            values = getattr(provider, attribute)
            if "name" not in attribute or not isinstance(values, dict | list | tuple):
                continue
            names = {v.casefold() for v in values if isinstance(v, str) and _latin_word(v)}
            if attribute.startswith("first_"):
                first |= names
            elif attribute.startswith("last_"):
                last |= names
    drop = NOT_NAMES | _stop_words()
    return frozenset(first - drop), frozenset(last - drop)


@cache
def _stop_words() -> frozenset[str]:
    from spacy.lang.en.stop_words import STOP_WORDS

    return frozenset(w.casefold() for w in STOP_WORDS)


def _latin_word(value: str) -> bool:
    return (
        len(value) >= 2
        and _WORD.fullmatch(value) is not None
        and all(ch < "\u0250" for ch in value)
    )


def _capitalised(word: str) -> bool:
    """``Dana``, ``O'Neil``, ``McDonald``, ``DANA`` (not ``dana``, ``iPhone`` or ``A``)."""
    return (
        len(word) >= 2
        and word[0].isupper()
        and (word[1:].islower() or word.isupper() or _mixed_name(word))
    )


def _mixed_name(word: str) -> bool:
    return any(
        word.startswith(p)
        for p in ("Mc", "Mac", "O'", "O’", "D'", "Di", "De", "Le", "La", "Van", "Von")
    )


def may_hold_name(text: str) -> bool:
    """Cheap test before a scan: two capitalised words in a row, a title or a cue."""
    return _PAIR_HINT.search(text) is not None or _CUE.search(text) is not None


_UPPER = "A-ZÀ-ÖØ-ÞĀ-Ž"  # Latin capitals, with the accented ones
_PAIR_HINT = re.compile(rf"[{_UPPER}][^\W\d_]+\.?\s{{1,3}}[{_UPPER}]")


def find_names(text: str) -> list[tuple[int, int, float]]:
    """(start, end, score) of each person name in ``text``."""
    first, last = gazetteer()
    words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
    found: list[tuple[int, int, float]] = []
    taken = -1  # words before this index are part of a name already
    cue_ends = {m.end() for m in _CUE.finditer(text)}
    for i, (start, _, word) in enumerate(words):
        if i < taken:
            continue
        key = word.casefold()
        name: tuple[int, float] | None = None  # (index of the name's last word, score)
        if (
            key in TITLES
            and i + 1 < len(words)
            and _capitalised(words[i + 1][2])
            and _adjacent(text, words, i, title=True)
        ):
            end = _extend(
                text, words, i + 1, lambda w: _capitalised(w) and w.casefold() not in NOT_NAMES
            )
            found.append((words[i + 1][0], words[end][1], 0.85))
            taken = end + 1
            continue
        if start in cue_ends and _introduced(text, words, i, first, last):
            end = _extend(
                text,
                words,
                i,
                lambda w: w.casefold() not in NOT_NAMES and w.casefold() not in _stop_words(),
            )
            name = (end, 0.7)
        elif _capitalised(word) and i + 1 < len(words) and _adjacent(text, words, i):
            name = _full_name(text, words, i, first, last)
        if name is not None:
            found.append((start, words[name[0]][1], name[1]))
            taken = name[0] + 1
    return found


def _introduced(
    text: str,
    words: list[tuple[int, int, str]],
    i: int,
    first: frozenset[str],
    last: frozenset[str],
) -> bool:
    """Whether the word after a cue starts a name: a known name in any case, or a capitalised
    word followed by a known surname ("my name is Oluwaseun Adeyemi")."""
    key = words[i][2].casefold()
    if key in NOT_NAMES or key in _stop_words():
        return False
    if key in first or key in last:
        return True
    return (
        _capitalised(words[i][2])
        and i + 1 < len(words)
        and _adjacent(text, words, i)
        and _capitalised(words[i + 1][2])
        and words[i + 1][2].casefold() in last
    )


def _full_name(
    text: str,
    words: list[tuple[int, int, str]],
    i: int,
    first: frozenset[str],
    last: frozenset[str],
) -> tuple[int, float] | None:
    given = words[i][2].casefold()
    j = i + 1
    # A middle initial (``J.``) or a middle name that is itself a first name.
    if (
        _INITIAL.fullmatch(text[words[j][0] : words[j][1] + 1].rstrip())
        and words[j][2].isupper()
        and len(words[j][2]) == 1
    ):
        if j + 1 < len(words) and _adjacent(text, words, j, title=True):
            j += 1
    elif (
        words[j][2].casefold() in first
        and j + 1 < len(words)
        and _adjacent(text, words, j)
        and _capitalised(words[j + 1][2])
        and words[j + 1][2].casefold() in last
    ):
        j += 1
    surname = words[j][2]
    family = surname.casefold()
    if not _capitalised(surname) or family in NOT_NAMES:
        return None
    if (surname.isupper() or words[i][2].isupper()) and not (given in first and family in last):
        return None  # capitals: a heading or an acronym unless both words are names
    if given in first and family in last:
        return j, 0.85
    if given in first and not _WORDISH_ENDING.search(family):
        return j, 0.6
    if family in last and given not in NOT_NAMES:
        return j, 0.35  # below the default threshold: "Reserved Font", "Copyright Holder"
    return None


def _adjacent(text: str, words: list[tuple[int, int, str]], i: int, title: bool = False) -> bool:
    """Whether word ``i`` and the next are separated by spaces only (after a title or an
    initial, a full stop too)."""
    gap = text[words[i][1] : words[i + 1][0]]
    return gap.strip(". " if title else " ") == "" and "\n" not in gap and len(gap) <= 3


def _extend(text: str, words: list[tuple[int, int, str]], i: int, more: Callable[[str], bool]) -> int:
    """The index of the last word of a name of at most three words starting at ``i``."""
    end = i
    while (
        end + 1 < len(words)
        and end - i < 2
        and _adjacent(text, words, end)
        and more(words[end + 1][2])
    ):
        end += 1
    return end
