"""Exact and near-duplicate detection with bounded memory: MinHash (datasketch) + banded LSH.

Texts are normalised (`flywheel.text.normalize_text`), so case, spacing, punctuation, full-width
forms and zero-width characters do not make two copies look different. The exact key is a
64-bit hash of the normalised words. The near key is a MinHash signature over word shingles,
cut into LSH bands; a pair that shares a band is confirmed by comparing b-bit signatures
(one byte per permutation), which estimate the Jaccard similarity.

The index keeps, per indexed text, 8 bytes of exact key, 8 bytes per band and one byte per
permutation, in numpy arrays that grow in chunks; lookups are binary searches. So a
window of a million rows, or years of earlier training sets, fit in a few hundred MB with no
Python object per row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from flywheel.config import FiltersConfig
from flywheel.text import word_tokens


def exact_key(tokens: Sequence[str]) -> int:
    """A signed 64-bit hash of the normalised words (an int64 the warehouse can store)."""
    digest = hashlib.blake2b(" ".join(tokens).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def shingles(tokens: Sequence[str], k: int) -> list[bytes]:
    if len(tokens) <= k:
        return [" ".join(tokens).encode()]
    return [" ".join(tokens[i : i + k]).encode() for i in range(len(tokens) - k + 1)]


@cache
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) whose S-curve best separates pairs above and below ``threshold``.

    Minimises the area of false positives below the threshold plus false negatives above it,
    weighting misses triple: every candidate pair is confirmed on its signatures anyway, so a
    false positive costs a comparison while a miss lets a duplicate through."""
    xs_lo = np.linspace(0.0, threshold, 200)
    xs_hi = np.linspace(threshold, 1.0, 200)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        if num_perm % b:
            continue
        r = num_perm // b
        fp = np.trapezoid(1 - (1 - xs_lo**r) ** b, xs_lo)
        fn = np.trapezoid((1 - xs_hi**r) ** b, xs_hi)
        err = float(fp + 3 * fn)
        if err < best_err:
            best, best_err = (b, r), err
    return best


@dataclass(frozen=True)
class Fingerprints:
    """Exact keys (n,) and b-bit MinHash signatures (n x num_perm, one byte per permutation).

    Both are independent of the near-duplicate threshold: an index cuts the signatures into the
    LSH bands its own threshold needs, so stored fingerprints stay usable when it changes."""

    exact: np.ndarray  # int64
    bits: np.ndarray  # uint8

    def __len__(self) -> int:
        return len(self.exact)

    def take(self, rows: Sequence[int]) -> Fingerprints:
        sel = np.asarray(rows, dtype=np.int64)
        return Fingerprints(self.exact[sel], self.bits[sel])


class MinHasher:
    """Fingerprints texts: normalised word tokens, word shingles, MinHash with ``num_perm``."""

    def __init__(self, *, num_perm: int = 64, shingle_words: int = 3, seed: int = 1) -> None:
        self.num_perm = num_perm
        self.shingle_words = shingle_words
        self.seed = seed

    @classmethod
    def from_config(cls, config: FiltersConfig) -> MinHasher:
        return cls(num_perm=config.minhash_permutations, shingle_words=config.shingle_words)

    @property
    def spec(self) -> str:
        """Fingerprints compare only under the same spec."""
        return f"minhash-v1:perm={self.num_perm}:shingle={self.shingle_words}:seed={self.seed}"

    def fingerprint(self, texts: Sequence[str]) -> Fingerprints:
        from datasketch import MinHash

        n = len(texts)
        if n == 0:
            return Fingerprints(np.empty(0, np.int64), np.empty((0, self.num_perm), np.uint8))
        tokens = [word_tokens(t) for t in texts]
        exact = np.fromiter((exact_key(t) for t in tokens), dtype=np.int64, count=n)
        hashes = MinHash.bulk([shingles(t, self.shingle_words) for t in tokens], num_perm=self.num_perm, seed=self.seed)
        values = np.stack([np.asarray(m.hashvalues, dtype=np.uint64) for m in hashes])
        return Fingerprints(exact, (values & np.uint64(0xFF)).astype(np.uint8))

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Jaccard estimated from b-bit (8-bit) signatures, corrected for chance byte matches."""
        match = (a == b).mean(axis=-1)
        return np.clip((match - 1 / 256) / (1 - 1 / 256), 0.0, 1.0)


def band_keys(bits: np.ndarray, n_bands: int, rows: int) -> np.ndarray:
    """(n, n_bands) int64 keys: each band's ``rows`` signature bytes, packed and hashed."""
    n = bits.shape[0]
    cut = bits[:, : n_bands * rows].reshape(n, n_bands, rows).astype(np.uint64)
    rng = np.random.default_rng(rows * 1000 + n_bands)
    mix = rng.integers(1, 2**62, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        keys = (cut * mix).sum(axis=2, dtype=np.uint64)
        keys ^= np.arange(n_bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        keys *= np.uint64(0xBF58476D1CE4E5B9)
    return keys.view(np.int64)


@dataclass(frozen=True)
class Match:
    label: str  # what the text duplicates (a request id, a golden item)
    kind: str  # "exact" | "near"
    similarity: float


class _SortedKeys:
    """A growing multiset of int64 keys with the entry each came from; binary-searched."""

    def __init__(self) -> None:
        self.keys = np.empty(0, np.int64)
        self.ids = np.empty(0, np.int64)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        keys = np.concatenate([self.keys, keys.astype(np.int64)])
        ids = np.concatenate([self.ids, ids.astype(np.int64)])
        order = np.argsort(keys, kind="stable")
        self.keys, self.ids = keys[order], ids[order]

    def lookup(self, key: int) -> np.ndarray:
        lo = np.searchsorted(self.keys, key, side="left")
        hi = np.searchsorted(self.keys, key, side="right")
        return self.ids[lo:hi]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.ids.nbytes


class DedupIndex:
    """Fingerprints of indexed texts; answers "is this an exact or near copy of one of them?".

    Texts are checked a batch at a time, in order: a text is compared with everything indexed
    before the batch and with the earlier texts of its own batch, so the first copy wins.
    """

    def __init__(self, hasher: MinHasher, threshold: float) -> None:
        self.hasher = hasher
        self.threshold = threshold
        self.n_bands, self.rows = lsh_bands(threshold, hasher.num_perm)
        self._exact = _SortedKeys()
        self._bands = [_SortedKeys() for _ in range(self.n_bands)]
        self._bits = np.empty((0, hasher.num_perm), np.uint8)
        self._labels: list[str] = []

    def __len__(self) -> int:
        return len(self._labels)

    def add(self, fp: Fingerprints, labels: Sequence[str]) -> None:
        """Index texts without checking them (earlier training sets, the golden set)."""
        if len(fp) != len(labels):
            raise ValueError(f"{len(fp)} fingerprints for {len(labels)} labels")
        if not len(fp):
            return
        ids = np.arange(len(self._labels), len(self._labels) + len(fp), dtype=np.int64)
        self._exact.add(fp.exact, ids)
        keys = band_keys(fp.bits, self.n_bands, self.rows)
        for b, band in enumerate(self._bands):
            band.add(keys[:, b], ids)
        self._bits = np.concatenate([self._bits, fp.bits])
        self._labels.extend(labels)

    def _match_indexed(self, fp: Fingerprints, keys: np.ndarray, i: int) -> Match | None:
        if not self._labels:
            return None
        exact = self._exact.lookup(int(fp.exact[i]))
        if len(exact):
            return Match(self._labels[int(exact[0])], "exact", 1.0)
        found = [band.lookup(int(keys[i, b])) for b, band in enumerate(self._bands)]
        candidates = np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)
        if not len(candidates):
            return None
        sims = self.hasher.similarity(self._bits[candidates], fp.bits[i])
        best = int(np.argmax(sims))
        if sims[best] >= self.threshold:
            return Match(self._labels[int(candidates[best])], "near", float(sims[best]))
        return None

    def check(self, fp: Fingerprints, labels: Sequence[str], *, add_unique: bool = True) -> list[Match | None]:
        """For each text, its best earlier exact or near copy (or None); with ``add_unique``,
        the texts that had none join the index."""
        out: list[Match | None] = []
        batch_exact: dict[int, int] = {}
        batch_bands: list[dict[int, list[int]]] = [{} for _ in self._bands]
        unique: list[int] = []
        keys = band_keys(fp.bits, self.n_bands, self.rows)
        for i in range(len(fp)):
            match = self._match_indexed(fp, keys, i)
            if match is None and add_unique:
                j = batch_exact.get(int(fp.exact[i]))
                if j is not None:
                    match = Match(labels[j], "exact", 1.0)
                else:
                    cands = {j for b, d in enumerate(batch_bands) for j in d.get(int(keys[i, b]), ())}
                    if cands:
                        cl = sorted(cands)
                        sims = self.hasher.similarity(fp.bits[cl], fp.bits[i])
                        best = int(np.argmax(sims))
                        if sims[best] >= self.threshold:
                            match = Match(labels[cl[best]], "near", float(sims[best]))
            out.append(match)
            if match is None and add_unique:
                unique.append(i)
                batch_exact.setdefault(int(fp.exact[i]), i)
                for b, d in enumerate(batch_bands):
                    d.setdefault(int(keys[i, b]), []).append(i)
        if add_unique and unique:
            self.add(fp.take(unique), [labels[i] for i in unique])
        return out

    @property
    def nbytes(self) -> int:
        return self._exact.nbytes + sum(b.nbytes for b in self._bands) + self._bits.nbytes
