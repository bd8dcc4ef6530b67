"""An independent oracle for the simulator's tasks, and model stand-ins built on it.

Written from the task templates' wording (not from the simulator's random state), and checked
against `golden_set` answers in test_simulate, so tests can build "always right", "half right"
and "always wrong" model stand-ins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flywheel.sim.traffic import SHORT_WORDS, WORDS

_WORDS = set(WORDS)
_SHORT = set(SHORT_WORDS)


def solve(prompt: str, context: str | None) -> str:
    """The right answer, read off the prompt."""
    low = prompt.lower()
    tokens = re.findall(r"[a-z]+", low)
    if context:
        city = re.search(r"(?:shipped to|destination) (\w+)", context)
        courier = re.search(r"courier (\w+)", context)
        assert city and courier, context
        return city.group(1) if "city" in low else courier.group(1)
    if "how many letters" in low or low.startswith("letters in"):
        (w,) = [t for t in tokens if t in _WORDS | _SHORT]
        return str(len(w))
    if "backwards" in low or "reverse" in low:
        (w,) = [t for t in tokens if t in _SHORT]
        return w[::-1]
    if "capital" in low or "uppercase" in low:
        (w,) = [t for t in tokens if t in _WORDS]
        return w.upper()
    a, b = (int(n) for n in re.findall(r"\d+", prompt))
    return str(a + b)


def right_answers(pairs: Sequence[tuple[str, str | None]]) -> list[str]:
    return [solve(p, c) for p, c in pairs]


def wrong_answers(pairs: Sequence[tuple[str, str | None]]) -> list[str]:
    # Never a right answer: answers are digits, upper-case words or short lower-case words.
    return ["no idea, sorry" for _ in pairs]


def half_right_answers(pairs: Sequence[tuple[str, str | None]]) -> list[str]:
    return [solve(p, c) if i % 2 == 0 else "no idea, sorry" for i, (p, c) in enumerate(pairs)]
