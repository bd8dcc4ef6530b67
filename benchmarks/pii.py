"""PII and secrets: recall per kind, false positives on clean traffic, and the scanner's cost.

- Recall: `tests/helpers/pii_values.py` plants 50 values of each of 14 kinds (e-mail, phone,
  cards of every brand with and without separators, IBAN, IP, SSN dashed and bare, API keys,
  private keys, connection strings, passport numbers, dates of birth, person names, street
  addresses) in sentences spread over prompt, response, correction and context. A value counts
  as found when the redacted text no longer gives it away (`pii_values.leaked`). Goal: >= 0.99
  for every kind.
- False positives: the share of clean simulated rows (no planted PII) with any detection, and
  of the planted sentences' control twins. Goal: <= 1%.
- Cost: rows/s of the scanner as the PII rule runs it (`filters.pii_entities`) against the
  scanner with presidio's seven kinds alone (before the secrets, passport, birth-date and
  address recognizers), side by side in one run.
  The whole chain against each component is `benchmarks/filters.py`.

Run: ``python benchmarks/pii.py [--per-kind 50] [--rows 2000]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flywheel.config import PII_ENTITIES  # noqa: E402
from flywheel.filters.pii import PiiScanner  # noqa: E402
from flywheel.sim.traffic import simulate_traffic  # noqa: E402
from tests.helpers.oracle import half_right_answers  # noqa: E402
from tests.helpers.pii_values import leaked, planted  # noqa: E402

# What the scanner covered before the secrets, passport, birth-date and address recognizers.
PRESIDIO_KINDS = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN", "CRYPTO"]


def clean_rows(n: int) -> list[dict]:
    return simulate_traffic(datetime(2026, 2, 2, tzinfo=UTC), half_right_answers, model_version="m", n_requests=n, seed=5,
                            malformed_rate=0.0, adversarial_rate=0.0, pii_rate=0.0).to_pylist()  # fmt: skip


def texts_of(row: dict) -> list[str]:
    return [row[f] for f in ("prompt", "response", "correction", "context") if isinstance(row.get(f), str) and row[f]]


def rate(scanner: PiiScanner, rows: list[dict]) -> float:
    start = time.perf_counter()
    for row in rows:
        for text in texts_of(row):
            scanner.redact(text)
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-kind", type=int, default=50)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    scanner = PiiScanner(PII_ENTITIES, 0.4)
    values = planted(args.per_kind)
    found, total, control_hits = Counter(), Counter(), 0
    for p in values:
        total[p.kind] += 1
        found[p.kind] += not leaked(p.value, scanner.redact(p.text).text)
        control_hits += bool(scanner.scan(p.control))
    print(f"recall per kind ({args.per_kind} values each, over prompt/response/correction/context; goal >= 0.99):")
    print(f"{'kind':<20}{'found':>7}{'recall':>8}")
    for kind in total:
        mark = "" if found[kind] / total[kind] >= 0.99 else "   below goal"
        print(f"{kind:<20}{found[kind]:>7}{found[kind] / total[kind]:>8.2f}{mark}")
    rows = clean_rows(args.rows)
    fp_rows = sum(any(scanner.scan(t) for t in texts_of(r)) for r in rows)
    print(f"\nfalse positives: {fp_rows}/{len(rows)} clean simulated rows = {fp_rows / len(rows):.2%}; "
          f"{control_hits}/{len(values)} control sentences = {control_hits / len(values):.2%} (goal <= 1%)")  # fmt: skip
    before = PiiScanner(PRESIDIO_KINDS, 0.4)
    rate(scanner, rows[:50]), rate(before, rows[:50])  # warm both (presidio's set-up)
    with_secrets, without = rate(scanner, rows), rate(before, rows)
    print(f"\nscanner on {len(rows)} clean rows: {with_secrets:,.0f} rows/s with every configured kind, "
          f"{without:,.0f} rows/s with presidio's seven kinds alone (ratio {with_secrets / without:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
