"""A product in a box: tasks with checkable answers and users who react to the model's answers.

The simulated users accept or copy a right answer, correct a wrong one (their correction is the
right answer) or regenerate, with noise: careless users accept some wrong answers, a few
adversarial users "correct" right answers into wrong ones, and one task type is rare. Because
every task's answer can be checked, the traffic's outcomes are real measurements of whichever
model served it.

What a model can learn here, and so why the flywheel turns: users ask about a long tail of
words, sums, cities and couriers (`ZIPF_S`); the base model's pre-training knew a general half
of them, in generic phrasing and the generic layout of a shipping note. The product's users
write chatty requests about the whole tail and paste the product's own notes, so the base model
answers them poorly; every week's corrections teach a little more of the tail.

The golden set is drawn from the same product (stratified, so the rare type is judged on enough
items), and a chatty request is small talk around the request, drawn clause by clause, so a
training row is rarely a copy of a golden input and decontamination drops few good rows.

The module knows nothing of torch or Airflow: the model is any ``answer_fn`` that maps
``(prompt, context)`` pairs to answers.

Why this module is long: the world (entities, templates, the golden set's draw) and the users
who react to a model's answers in it are one simulator, and read best together.
"""

from __future__ import annotations

import functools
import hashlib
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from flywheel.tables import PRODUCTION_LOGS
from flywheel.tasks import Task, is_correct

AnswerFn = Callable[[Sequence[tuple[str, str | None]]], list[str]]

_NAMESPACE = uuid.UUID("5b1f3a52-8f0e-4a51-9a43-6d1d0c1e7f20")

# The simulated product's world: the words, cities and names its users ask about. Small enough
# for a model of a few hundred thousand parameters to learn on two CPU cores in minutes.
WORDS = (
    "apple river stone cloud tiger lemon piano garden silver rocket candle forest window dragon "
    "orange basket mirror pencil castle rabbit summer winter violet copper meadow falcon harbor "
    "island jungle kettle ladder marble needle oyster parrot quartz saddle thunder velvet walnut "
    "yellow zebra anchor bridge cactus cherry coffee planet"
).split()
SHORT_WORDS = "cat dog sun map cup box pen hat jam fox owl bee kiwi frog moon star lamp rope tree ship bus egg".split()
CITIES = "Lisbon Oslo Cairo Lima Quito Dakar Riga Hanoi Perth Tunis Accra Bern Doha Kyiv Minsk Sofia Paris Rome".split()
NAMES = "Dana Omar Lena Ravi Mina Tomas Ines Kofi Yuki Sara Ivan Leah Nico Ada Ben Zoe Amir Bea".split()
NUMBERS = tuple(range(10))
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()

# Which entities users ask about follows a long tail (Zipf, exponent ZIPF_S): a few words, cities
# and sums come up every day, most rarely. The base model's pre-training knows a general half of
# them (`general`); the rest the model learns from the product's own traffic, mostly from users'
# corrections, a little more each week: that is what makes the flywheel turn.
ZIPF_S = 0.9


def _rank(entity: object) -> int:
    return int.from_bytes(hashlib.sha256(f"rank:{entity}".encode()).digest()[:4], "big")


@functools.cache
def _popularity(pool: tuple) -> tuple[tuple, tuple[float, ...]]:
    ordered = tuple(sorted(pool, key=_rank))
    return ordered, tuple(1 / (i + 1) ** ZIPF_S for i in range(len(ordered)))


def general(entity: object) -> bool:
    """Whether the base model's (generic) pre-training knows this entity: about half do."""
    return hashlib.sha256(f"general:{entity}".encode()).digest()[0] < 128


def _choose(rng: random.Random, pool: Sequence[object], source: str):
    """An entity as its source sees them: pre-training (``general``) draws uniformly from the
    general half; the product's users and its golden set (``product``) by popularity."""
    if source == "general":
        return rng.choice([x for x in pool if general(x)])
    ordered, weights = _popularity(tuple(pool))
    return rng.choices(ordered, weights=weights)[0]


# Chatty requests are a request wrapped in small talk, as people write: an opener, the request,
# a closer, each drawn on its own, so two users rarely send the same words. (With one fixed
# sentence per request, a quarter of the product's requests were word-for-word copies of a
# golden-set item, and decontamination rightly dropped them.)
OPENERS = (
    "Hi there!", "Hello, quick one.", "Good morning!", "Hey, hope you are well.", "Sorry to bother you again.",
    "Okay, next question.", "Thanks for the help earlier.", "I have a small request.",
)
CLOSERS = (
    "Just the answer please, nothing else.", "Thanks a lot in advance!", "I need it for a form at work today.",
    "My kids are waiting for it.", "Please keep it short.", "It is for a puzzle I am making this weekend.",
    "Reply with the answer only, I will paste it.", "I am in a hurry, so thank you!",
)


def _phrase(rng: random.Random, style: str, terse: list[str], chatty: list[str]) -> str:
    if style == "terse":
        return rng.choice(terse)
    return f"{rng.choice(OPENERS)} {rng.choice(chatty)} {rng.choice(CLOSERS)}"


def _arithmetic(rng: random.Random, style: str, source: str = "product") -> Task:
    a, b = _choose(rng, NUMBERS, source), _choose(rng, NUMBERS, source)
    prompt = _phrase(
        rng,
        style,
        [f"{a} + {b} = ?", f"what is {a} plus {b}?"],
        [
            f"I am splitting a restaurant bill and my head hurts: what does {a} plus {b} come to?",
            f"If I have {a} apples and then get {b} more apples, how many apples do I have in total?",
            f"I keep getting a different total on my fingers, so settle it for me: what is {a} + {b}?",
        ],
    )
    return Task("arithmetic", prompt, str(a + b))


def _uppercase(rng: random.Random, style: str, source: str = "product") -> Task:
    w = _choose(rng, WORDS, source)
    prompt = _phrase(
        rng,
        style,
        [f"uppercase: {w}", f"{w} in capitals"],
        [
            f"Please rewrite the word {w} in capital letters for the heading of my school poster.",
            f"My shift key is broken and I need the word {w} written in all capital letters.",
        ],
    )
    return Task("uppercase", prompt, w.upper())


def _reverse(rng: random.Random, style: str, source: str = "product") -> Task:
    w = _choose(rng, SHORT_WORDS, source)
    prompt = _phrase(
        rng,
        style,
        [f"reverse {w}", f"{w} backwards"],
        [
            f"Could you write the word {w} backwards, letter by letter, for a little word puzzle?",
            f"I need the word {w} spelled in reverse order, last letter first, for a mirror game.",
        ],
    )
    return Task("reverse", prompt, w[::-1])


def _extraction(rng: random.Random, style: str, source: str = "product") -> Task:
    code = f"{rng.choice('ABCDEFGH')}{rng.randint(10, 99)}"
    # The answer is in the context: what pre-training teaches here is to copy, so it sees every
    # city and courier, not a general half.
    pick = (lambda pool: rng.choice(pool)) if source == "general" else (lambda pool: _choose(rng, pool, source))
    city, name, day = pick(CITIES), pick(NAMES), rng.choice(DAYS)
    if source == "general":
        context = f"Order {code} left the warehouse on {day} and was shipped to {city} with courier {name}."
    else:  # the product's own shipping notes: a layout the base model never read
        context = f"Note {code} / {day}: courier {name}; destination {city}."
    if rng.random() < 0.5:
        prompt = _phrase(
            rng,
            style,
            [f"Which city did order {code} go to?", f"city of order {code}?"],
            [f"I am following up on a complaint: according to the shipping note, which city was order {code} shipped to?"],
        )
        return Task("extraction", prompt, city, context)
    prompt = _phrase(
        rng,
        style,
        [f"Who was the courier for order {code}?", f"courier of order {code}?"],
        [f"The customer wants to thank the person who delivered it: going by the note, who was the courier of order {code}?"],
    )
    return Task("extraction", prompt, name, context)


def _letter_count(rng: random.Random, style: str, source: str = "product") -> Task:
    # The rare class: one request in twelve.
    w = _choose(rng, WORDS + SHORT_WORDS, source)
    prompt = _phrase(
        rng,
        style,
        [f"letters in {w}?", f"How many letters does {w} have?"],
        [f"How many letters does the word {w} have? I am checking a crossword answer before I write it in."],
    )
    return Task("letter_count", prompt, str(len(w)))


TASK_MIX: tuple[tuple[Callable[..., Task], float], ...] = (
    (_arithmetic, 0.26),
    (_uppercase, 0.22),
    (_reverse, 0.20),
    (_extraction, 0.24),
    (_letter_count, 0.08),
)
TASK_TYPES = ("arithmetic", "uppercase", "reverse", "extraction", "letter_count")


# The product's users write chatty requests; the base model was pre-trained on terse ones. The
# gap is what the flywheel closes: the kept traffic teaches the model the product's own prompts.
PRODUCT_CHATTY_SHARE = 0.7


def sample_task(rng: random.Random, *, chatty_share: float = PRODUCT_CHATTY_SHARE) -> Task:
    """A request of the product's mix: chatty ``chatty_share`` of the time, terse otherwise."""
    makers, weights = zip(*TASK_MIX, strict=True)
    maker = rng.choices(makers, weights=weights)[0]
    chatty = rng.random() < chatty_share
    return maker(rng, "chatty" if chatty else "terse")


def golden_set(n: int, seed: int) -> list[Task]:
    """A fixed evaluation set: the same ``(n, seed)`` always gives the same tasks.

    Stratified by task type: each type gets its share of the product's mix, but at least an
    eighth of the set, so that the offline gate's per-slice rule judges the rare type on enough
    items (on a dozen, two unlucky answers read as a 15-point regression); the common types give
    up the difference, the largest first."""
    rng = random.Random(f"golden:{seed}")
    floor = n // 8
    quota = {maker: max(floor, round(n * w)) for maker, w in TASK_MIX}
    while sum(quota.values()) > n:
        quota[max(quota, key=quota.__getitem__)] -= 1
    while sum(quota.values()) < n:
        quota[max(quota, key=quota.__getitem__)] += 1
    tasks = [maker(rng, "chatty" if rng.random() < PRODUCT_CHATTY_SHARE else "terse")
             for maker, k in quota.items() for _ in range(k)]  # fmt: skip
    rng.shuffle(tasks)
    return tasks


def synthetic_tasks(per_task_type: int, seed: int) -> list[Task]:
    """``per_task_type`` template tasks of every task type, chatty like the product's requests."""
    rng = random.Random(f"synthetic:{seed}")
    return [maker(rng, "chatty") for maker, _ in TASK_MIX for _ in range(per_task_type)]


def tokenizer_tasks(n: int, seed: int) -> list[Task]:
    """Requests of every kind, half of them chatty: the text the tiny model's tokenizer learns
    its words from (answers are not learnt from it)."""
    rng = random.Random(f"tokenizer:{seed}")
    return [sample_task(rng, chatty_share=0.5) for _ in range(n)]


def pretraining_tasks(n: int, seed: int, chatty_share: float = 0.5) -> list[Task]:
    """Right-answer examples for the tiny model's brief pre-training: terse prompts only."""
    rng = random.Random(f"pretrain:{seed}")
    makers, weights = zip(*TASK_MIX, strict=True)
    return [rng.choices(makers, weights=weights)[0](rng, "chatty" if rng.random() < chatty_share else "terse", "general")
            for _ in range(n)]  # fmt: skip


@dataclass(frozen=True)
class SimUser:
    user_id: str
    careless: bool
    adversarial: bool
    # Poisoned feedback: accepts wrong answers and "corrects" right ones into wrong ones, and the
    # product's quality estimate believes it.
    poisoner: bool = False


def _users(seed: int, n: int = 150, adversarial_rate: float = 0.02, poison_rate: float = 0.0) -> list[SimUser]:
    rng = random.Random(f"users:{seed}")
    poison = random.Random(f"poison:{seed}")  # its own stream: the other traits do not change
    return [
        SimUser(f"user-{i:04d}", careless=rng.random() < 0.15, adversarial=rng.random() < adversarial_rate,
                poisoner=poison.random() < poison_rate)
        for i in range(n)
    ]  # fmt: skip


@dataclass(frozen=True)
class Arm:
    """A second model serving the users that ``assign`` puts in its arm (an A/B challenger)."""

    model_version: str
    answer_fn: AnswerFn
    assign: Callable[[str], bool]  # user_id -> served by this arm


def _wrong_version(answer: str, rng: random.Random) -> str:
    if answer.isdigit():
        return str(int(answer) + rng.choice([-2, -1, 1, 2, 10]))
    return answer[:-1] if len(answer) > 1 else answer + answer


def _user_action(user: SimUser, right: bool, rng: random.Random) -> str:
    r = rng.random()
    if user.poisoner:  # coordinated poisoning: wrong answers approved, right ones "fixed"
        return "corrected" if right else "accepted"
    if right:
        if user.adversarial and r < 0.5:
            return "corrected"
        return "accepted" if r < 0.65 else "copied" if r < 0.9 else "regenerated"
    accept_wrong = 0.3 if user.careless else 0.08
    if r < accept_wrong:
        return "accepted"
    return "corrected" if r < accept_wrong + 0.55 else "regenerated"


def _quality_score(final_right: bool, rng: random.Random) -> float:
    # The product's automatic estimate of the final answer's quality: informative, not perfect.
    mean = 0.8 if final_right else 0.4
    return round(min(1.0, max(0.0, rng.gauss(mean, 0.13))), 4)


_MALFORMATIONS = ("missing_prompt", "bad_action", "score_out_of_range", "corrected_without_text", "missing_timestamp")


def simulate_traffic(
    week_start: datetime,
    answer_fn: AnswerFn,
    *,
    model_version: str,
    n_requests: int,
    seed: int,
    malformed_rate: float = 0.01,
    adversarial_rate: float = 0.02,
    pii_rate: float = 0.0,
    toxic_rate: float = 0.0,
    truth: dict[str, str] | None = None,
    days: float = 7,
    poison_rate: float = 0.0,
    challenger: Arm | None = None,
) -> pa.Table:
    """A week of production logs served by ``answer_fn``, as rows of the logs' schema.

    Deterministic for ``(week_start, seed)`` given the same answers, so re-simulating a week
    produces the same request ids, and the warehouse's MERGE keeps one copy. ``pii_rate`` of
    users paste their contact details into the request, and ``toxic_rate`` are abusive; both
    are drawn from their own random stream, so they change nothing else about the week.
    ``truth``, when given, receives each request's right answer (the oracle a simulated
    reviewer consults; it never reaches the logs). ``poison_rate`` of users accept wrong
    answers and fool the quality estimate.

    With a ``challenger`` arm, the users it assigns are served by its model instead, and each
    row carries the version that answered it: both arms' outcomes are real reactions to real
    answers. Who sends which request does not depend on the arms, so the two arms of a week see
    the same users and tasks they would have seen without the experiment.
    """
    if week_start.tzinfo is None:
        raise ValueError("week_start must be timezone-aware")
    week_start = week_start.astimezone(UTC)
    rng = random.Random(f"traffic:{seed}:{week_start.isoformat()}")
    users = _users(seed, adversarial_rate=adversarial_rate, poison_rate=poison_rate)
    tasks = [sample_task(rng) for _ in range(n_requests)]
    who = random.Random(f"who:{seed}:{week_start.isoformat()}")
    senders = [who.choice(users) for _ in tasks]
    in_b = [challenger is not None and challenger.assign(u.user_id) for u in senders]
    answers: list[str] = [""] * len(tasks)
    versions = [challenger.model_version if b and challenger else model_version for b in in_b]
    for arm_fn, arm in ((answer_fn, False), (challenger.answer_fn if challenger else None, True)):
        idx = [i for i, b in enumerate(in_b) if b is arm]
        if not idx or arm_fn is None:
            continue
        got = arm_fn([(tasks[i].prompt, tasks[i].context) for i in idx])
        if len(got) != len(idx):
            raise ValueError(f"answer_fn returned {len(got)} answers for {len(idx)} requests")
        for i, a in zip(idx, got, strict=True):
            answers[i] = a

    noise = random.Random(f"noise:{seed}:{week_start.isoformat()}")
    rows: list[dict[str, Any]] = []
    span = days * 86400
    for i, (task, answer) in enumerate(zip(tasks, answers, strict=True)):
        user = senders[i]
        right = is_correct(answer, task.answer)
        action = _user_action(user, right, rng)
        correction = None
        if action == "corrected":
            correction = _wrong_version(task.answer, rng) if right else task.answer
        final_right = is_correct(correction, task.answer) if correction is not None else right
        fooled = user.poisoner
        ts = week_start + timedelta(seconds=rng.uniform(0, span - 1))
        row: dict[str, Any] = {
            "request_id": str(uuid.uuid5(_NAMESPACE, f"{seed}:{week_start.isoformat()}:{i}")),
            "timestamp": ts,
            "user_id": user.user_id,
            "prompt": task.prompt,
            "response": answer,
            "user_action": action,
            "correction": correction,
            "task_type": task.task_type,
            "quality_score": _quality_score(final_right or fooled, rng),
            "included_in_training": False,
            "model_version": versions[i],
            "context": task.context,
            "ingested_at": ts + timedelta(seconds=rng.uniform(1, 90)),
        }
        r = noise.random()
        if r < pii_rate:
            name = noise.choice(NAMES).lower()
            row["prompt"] = (
                f"{row['prompt']} You can reach me at {name}.{noise.randint(1, 99)}@example.com "
                f"or (212) 555-01{noise.randint(10, 99)}."
            )
        elif r < pii_rate + toxic_rate:
            row["prompt"] = f"{row['prompt']} And get it right this time, you useless idiot."
        if rng.random() < malformed_rate:
            _malform(row, rng.choice(_MALFORMATIONS))
        if truth is not None:
            truth[row["request_id"]] = task.answer
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=PRODUCTION_LOGS)


def _malform(row: dict[str, Any], kind: str) -> None:
    if kind == "missing_prompt":
        row["prompt"] = None
    elif kind == "bad_action":
        row["user_action"] = "liked"
    elif kind == "score_out_of_range":
        row["quality_score"] = 1.7
    elif kind == "corrected_without_text":
        row["user_action"], row["correction"] = "corrected", None
    elif kind == "missing_timestamp":
        row["timestamp"] = None
