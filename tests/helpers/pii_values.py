"""Planted PII: for each kind, values written the ways real logs write them, each inside a
sentence a user or a model would write, and a clean control twin of each sentence.

Values are generated (seeded), valid where the format has a check (Luhn for cards, mod 97 for
IBANs, the SSA's ranges for SSNs), and never belong to anyone: reserved phone exchanges (555),
documentation IP ranges, example.com/.org/.net domains. `benchmarks/pii.py` measures recall per
kind on them; `tests/unit/test_pii_corpus.py` holds the detector to the kinds it covers.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

FIELDS = ("prompt", "response", "correction", "context")
FIRST = ["Dana", "Priya", "Tomasz", "Aiko", "Mateo", "Fatima", "Oluwaseun", "Ingrid", "Chen", "Rafael", "Noor", "Siobhan"]
LAST = ["Whitfield", "Raghunathan", "Kowalczyk", "Tanaka", "Alvarez", "Haddad", "Adeyemi", "Lindqvist", "Wei", "Moreau"]
STREETS = ["Maple Avenue", "Elm Street", "Harbor Road", "Kingsley Lane", "Oak Drive", "Mill Road", "Sunset Boulevard"]
CITIES = [("Springfield", "IL", "62704"), ("Portland", "OR", "97205"), ("Austin", "TX", "78701"), ("Albany", "NY", "12207")]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]


@dataclass(frozen=True)
class Planted:
    kind: str
    value: str  # as written in the text
    field: str  # which record field carries it
    text: str  # the sentence with the value
    control: str  # the same sentence without it


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    digits = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return digits + str((10 - total % 10) % 10)


def _group(digits: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for n in sizes:
        out.append(digits[i : i + n])
        i += n
    return sep.join(out)


def _iban(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(ch, 36)) for ch in rearranged))
    return f"{country}{98 - number % 97:02d}{bban}"


def _ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"


def _email(rng: random.Random) -> str:
    return f"{rng.choice(FIRST).lower()}.{rng.choice(LAST).lower()}{rng.randint(1, 99)}@{rng.choice(['example.com', 'example.org', 'mail.example.net'])}"


def _phone(rng: random.Random) -> str:
    n = rng.choice(["212", "415", "312", "617", "206", "303", "404", "512", "718", "917", "646", "213"])  # area codes in use
    line = f"{rng.randint(100, 199):04d}"
    return rng.choice([f"({n}) 555-{line}", f"+1 {n} 555 {line}", f"{n}-555-{line}", f"{n}.555.{line}"])


def _card(rng: random.Random) -> str:
    brand = rng.choice(["visa", "mc2", "mc5", "amex", "discover"])
    if brand == "amex":
        number = _luhn_complete(rng.choice(["34", "37"]), 15, rng)
        return _group(number, [4, 6, 5], rng.choice([" ", "-", ""]))
    prefix = {"visa": "4", "mc2": str(rng.randint(2221, 2720)), "mc5": f"5{rng.randint(1, 5)}", "discover": "6011"}[brand]
    number = _luhn_complete(prefix, 16, rng)
    return _group(number, [4, 4, 4, 4], rng.choice([" ", "-", ""]))


def _iban_value(rng: random.Random) -> str:
    country, bban = rng.choice([
        ("DE", "".join(rng.choice(string.digits) for _ in range(18))),
        ("GB", "NWBK" + "".join(rng.choice(string.digits) for _ in range(14))),
        ("FR", "".join(rng.choice(string.digits) for _ in range(23))),
    ])  # fmt: skip
    iban = _iban(country, bban)
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.5 else iban


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randint(1, 254)}"
    return f"2001:db8:{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"


def _api_key(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    return rng.choice([
        "sk-" + "".join(rng.choice(alnum) for _ in range(48)),
        "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
        "ghp_" + "".join(rng.choice(alnum) for _ in range(36)),
        "xoxb-" + "-".join("".join(rng.choice(string.digits) for _ in range(12)) for _ in range(2)) + "-" + "".join(rng.choice(alnum) for _ in range(24)),
    ])  # fmt: skip


def _private_key(rng: random.Random) -> str:
    body = "".join(rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(64))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"


def _connection_string(rng: random.Random) -> str:
    password = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(14))
    return rng.choice([f"postgresql://app_user:{password}@db.example.com:5432/prod",
                       f"mysql://root:{password}@10.0.0.{rng.randint(2, 250)}/orders",
                       f"redis://:{password}@cache.example.net:6379/0"])  # fmt: skip


def _passport(rng: random.Random) -> str:
    return rng.choice([f"{rng.randint(100000000, 999999999)}", f"{rng.choice(string.ascii_uppercase)}{rng.randint(10000000, 99999999)}"])


def _dob(rng: random.Random) -> str:
    y, m, d = rng.randint(1940, 2005), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}", f"{d} {MONTHS[m - 1]} {y}"])


def _name(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return rng.choice([f"{first} {last}", f"{first} {rng.choice(string.ascii_uppercase)}. {last}", f"Dr. {last}",
                       f"Ms {first} {last}", f"{first.upper()} {last.upper()}"])  # fmt: skip


def _address(rng: random.Random) -> str:
    city, state, zip_code = rng.choice(CITIES)
    return f"{rng.randint(10, 9899)} {rng.choice(STREETS)}, {city}, {state} {zip_code}"


# kind -> (value maker, sentence templates with {v})
KINDS: dict[str, tuple[Callable[[random.Random], str], list[str]]] = {
    "email": (_email, ["Send the summary to {v} please.", "You can reach the customer at {v}."]),
    "phone": (_phone, ["Call me back on {v} after five.", "The store's number is {v}."]),
    "credit_card": (_card, ["My card number is {v}, why was it declined?", "Charge it to {v}."]),
    "iban": (_iban_value, ["Wire the refund to {v} today.", "Our account is {v}."]),
    "ip_address": (_ip, ["The requests came from {v} last night.", "Whitelist {v} on the firewall."]),
    "ssn_dashed": (lambda r: (s := _ssn(r))[:3] + "-" + s[3:5] + "-" + s[5:], ["My SSN is {v} for the form.", "Social security number: {v}."]),
    "ssn_bare": (_ssn, ["my social is {v} can you fill the W-2", "SSN {v} on file."]),
    "api_key": (_api_key, ["Here is my key {v} why does the call fail?", "Set OPENAI_API_KEY={v} and retry."]),
    "private_key": (_private_key, ["My deploy key is below, is it valid?\n{v}", "Paste this into the config:\n{v}"]),
    "connection_string": (_connection_string, ["The app connects with {v} and times out.", "DATABASE_URL is {v}."]),
    "passport": (_passport, ["My passport number is {v}, expiring next year.", "Passport no. {v} for the booking."]),
    "date_of_birth": (_dob, ["My date of birth is {v}.", "DOB: {v}, please update my profile."]),
    "person_name": (_name, ["Please address the letter to {v}.", "My name is {v} and I want a refund."]),
    "street_address": (_address, ["Ship it to {v}.", "I live at {v}, is delivery free?"]),
}


def planted(per_kind: int = 50, seed: int = 11) -> list[Planted]:
    """``per_kind`` values of every kind, spread over the four text fields."""
    rng = random.Random(seed)
    out = []
    for kind, (make, templates) in KINDS.items():
        for i in range(per_kind):
            value = make(rng)
            template = templates[i % len(templates)]
            out.append(Planted(kind, value, FIELDS[i % len(FIELDS)], template.format(v=value),
                               template.format(v="the one on file")))  # fmt: skip
    return out


def leaked(value: str, text: str) -> bool:
    """Whether ``text`` still gives the value away: written as planted, or its digits or
    letters-and-digits run together (a redaction that left '4111 1111' of a card leaks)."""
    if value in text:
        return True
    squeeze = lambda s: "".join(ch for ch in s if ch.isalnum())  # noqa: E731
    core = squeeze(value)
    return len(core) >= 6 and core in squeeze(text)
