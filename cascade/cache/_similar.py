"""The similarity cache: the nearest stored input by cosine, a hit above a threshold.

Inputs are embedded by a cheap function (``embed``: rows -> L2-normalised float32
``[n, d]``); a lookup finds the stored embedding of the same policy version with the
highest cosine and returns its answer when that cosine is at least ``threshold``. The search
is brute force over all stored embeddings, touching only the dimensions where the queries
are non-zero, so a sparse text embedding costs about ``nnz x entries`` rather than
``d x entries`` (dense numeric rows use every dimension). Memory: ``4 * d * max_entries``
bytes for the embeddings. The scores are small matrix products: on a replica limit BLAS to
one thread (Ray's default ``OMP_NUM_THREADS=1`` does), as two BLAS threads on busy cores
turn a 50 µs lookup into milliseconds.

Built-in embeddings:

- :func:`hashed_char_embedding`, for text: character 2- to 4-grams of the
  casefolded, NFC, whitespace-collapsed text, hashed with CRC-32 into ``dim`` signed
  buckets, L2-normalised. It sees spelling, not meaning: "cancel my card" and "cancel my
  cart" are near, "freeze my card" and "lock my card" less so.
- :func:`normalized_rows`, for numeric rows: the row itself, L2-normalised. Cosine ignores
  scale, so standardise the columns first where scale matters.

A hit is *false* when the cached answer differs from what the cascade would have answered
for the query itself. The cache cannot tell online, so it samples hits for audit at
``audit_rate``: a sampled hit carries an audit id; the caller runs the cascade on that query
too and calls ``report(audit_id, agreed)``. ``stats()["false_hits"]`` and
``false_hit_rate`` count the reported disagreements.

Time comes from the injected clock only; one cache serves one replica's event loop and is
not thread-safe.
"""

from __future__ import annotations

import hashlib
import math
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, NamedTuple, TypedDict

import numpy as np
import numpy.typing as npt

from cascade.cache._exact import CachedAnswer, canonical_text

__all__ = [
    "Embed",
    "SimilarLookup",
    "SimilarityCache",
    "SimilarityCacheStats",
    "hashed_char_embedding",
    "normalized_rows",
]

Embed = Callable[[Any], npt.NDArray[np.float32]]
"""Rows (a sequence or array) -> float32 ``[n, d]``, each row of L2 norm 1 (or all zero)."""

_MAX_PENDING_AUDITS = 4096
# Gathering the queries' non-zero dimensions pays off only while they are a minority.
_SPARSE_FRACTION = 0.5


@lru_cache(maxsize=1 << 18)
def _gram_bucket(gram: str, dim: int) -> tuple[int, float]:
    code = zlib.crc32(gram.encode("utf-8"))
    # the low bits pick the bucket, the top bit the sign, so that colliding grams cancel
    # on average instead of inflating every cosine
    return code % dim, -1.0 if code >> 31 else 1.0


def hashed_char_embedding(
    texts: Iterable[str], *, dim: int = 1024, ngram: tuple[int, int] = (2, 4)
) -> npt.NDArray[np.float32]:
    """Embed texts as signed, hashed character n-gram counts, L2-normalised (float32 [n, dim]).

    Each text is NFC-normalised, whitespace-collapsed, casefolded and padded with a space
    at each end; every character n-gram with ``ngram[0] <= n <= ngram[1]`` adds +-1 to bucket
    ``crc32(gram) % dim``. An empty text embeds as all zeros (similar to nothing).

    Example::

        >>> e = hashed_char_embedding(["book a table", "book a table for two", "play jazz"])
        >>> bool(e[0] @ e[1] > e[0] @ e[2])
        True
    """
    low, high = ngram
    if not 1 <= low <= high:
        raise ValueError(
            f"hashed_char_embedding: ngram must be (low, high) with 1 <= low <= high, got {ngram}"
        )
    if dim < 1:
        raise ValueError(f"hashed_char_embedding: dim must be >= 1, got {dim}")
    texts = list(texts)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        padded = f" {canonical_text(text).casefold()} "
        if padded == "  ":
            continue
        buckets: list[int] = []
        signs: list[float] = []
        for n in range(low, high + 1):
            for start in range(len(padded) - n + 1):
                bucket, sign = _gram_bucket(padded[start : start + n], dim)
                buckets.append(bucket)
                signs.append(sign)
        if buckets:
            out[i] = np.bincount(buckets, weights=signs, minlength=dim)
    return _l2_normalise(out)


def normalized_rows(rows: Any) -> npt.NDArray[np.float32]:
    """Numeric rows as float32 ``[n, d]``, each scaled to L2 norm 1 (all-zero rows stay zero).

    Example::

        >>> normalized_rows([[3.0, 4.0]]).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    values = np.array(rows, dtype=np.float32, ndmin=2)
    return _l2_normalise(values)


def _l2_normalise(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    np.divide(values, norms, out=values, where=norms > 0)
    return values


class SimilarLookup(NamedTuple):
    """What ``SimilarityCache.get_many`` found, per row.

    ``similarity`` is the best cosine among entries of the version (NaN when there were
    none), hit or not; ``audit_ids`` holds an id for each hit sampled for audit (else None);
    ``embeddings`` are the queries' embeddings, to hand to ``put_many`` for the misses.
    """

    hits: npt.NDArray[np.bool_]
    values: list[CachedAnswer | None]
    similarity: npt.NDArray[np.float32]
    audit_ids: list[int | None]
    embeddings: npt.NDArray[np.float32]


class SimilarityCacheStats(TypedDict):
    """Counters since construction, the current size, and the audited false hits."""

    hits: int
    misses: int
    evictions: int
    expirations: int
    size: int
    audited: int
    false_hits: int
    false_hit_rate: float | None


class SimilarityCache:
    """Nearest-neighbour answer cache: a hit when the best cosine is >= ``threshold``.

    Entries are keyed by policy version like the exact cache's: a lookup under one version
    only sees entries stored under it; entries of other versions are evicted first when the
    cache is full, or dropped by ``clear_version``. Bounded by ``max_entries`` (LRU) and
    expired ``ttl_s`` seconds after their ``put``. ``audit_rate`` is the fraction of hits
    sampled for audit (see the module docstring); ``seed`` seeds that sampling. With
    :func:`hashed_char_embedding`, 0.85 is the lowest threshold that kept false hits <= 1 %
    on a Zipf replay of CLINC150 (``benchmarks/cache.py``).

    Example::

        cache = SimilarityCache(hashed_char_embedding, threshold=0.85, max_entries=10_000,
                                ttl_s=300.0, audit_rate=0.01)
        lookup = cache.get_many("v3", texts)
        miss = ~lookup.hits
        ...  # run the cascade on texts[miss]; also on audited hits, then
        cache.put_many("v3", texts[miss], answers, embeddings=lookup.embeddings[miss])
        for audit_id, cached, fresh in audited:
            cache.report(audit_id, agreed=cached.label == fresh.label)
        cache.stats()["false_hits"], cache.false_hit_rate
    """

    def __init__(
        self,
        embed: Embed,
        threshold: float,
        max_entries: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        audit_rate: float = 0.0,
        seed: int | None = 0,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"similarity cache: threshold must be in (0, 1], got {threshold}")
        if max_entries < 1:
            raise ValueError(f"similarity cache: max_entries must be >= 1, got {max_entries}")
        if not ttl_s > 0:  # also rejects NaN
            raise ValueError(
                f"similarity cache: ttl_s must be > 0 (math.inf: no expiry), got {ttl_s}"
            )
        if not 0.0 <= audit_rate <= 1.0:
            raise ValueError(f"similarity cache: audit_rate must be in [0, 1], got {audit_rate}")
        self.embed = embed
        self.threshold = threshold
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.audit_rate = audit_rate
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._dim: int | None = None
        # one column per slot: the queries' non-zero dimensions are then contiguous rows
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._version = np.zeros(0, dtype=np.int64)  # -1: free slot
        self._expires = np.zeros(0, dtype=np.float64)
        self._last_used = np.zeros(0, dtype=np.int64)
        self._answers: list[CachedAnswer | None] = []
        self._free: list[int] = []
        # (version code, digest of the embedding) -> slot: a put of an input already stored
        # replaces its entry rather than adding a twin that lookups could still pick
        self._slot_of: dict[tuple[int, bytes], int] = {}
        self._key_of: list[tuple[int, bytes] | None] = []
        self._codes: dict[str, int] = {}
        self._tick = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expirations = 0
        self._audited = 0
        self._false_hits = 0
        self._next_audit = 0
        self._pending: OrderedDict[int, None] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"SimilarityCache(size={len(self)}, threshold={self.threshold}, "
            f"max_entries={self.max_entries}, ttl_s={self.ttl_s})"
        )

    def __len__(self) -> int:
        return len(self._answers) - len(self._free)

    def get_many(
        self,
        version: str,
        rows: Any,
        *,
        embeddings: npt.NDArray[np.float32] | None = None,
    ) -> SimilarLookup:
        """Find each row's nearest entry of ``version``; a hit when its cosine >= threshold.

        ``embeddings`` skips ``embed`` when the caller already has them.
        """
        self._expire(self._clock())
        queries = self._embeddings(rows, embeddings)
        n = len(queries)
        similarity = np.full(n, np.nan, dtype=np.float32)
        hits = np.zeros(n, dtype=bool)
        values: list[CachedAnswer | None] = [None] * n
        audit_ids: list[int | None] = [None] * n
        code = self._codes.get(version)
        live = (
            np.flatnonzero(self._version == code)
            if code is not None and n
            else np.zeros(0, np.intp)
        )
        if live.size == 0:
            self._misses += n
            return SimilarLookup(hits, values, similarity, audit_ids, queries)
        scores = self._scores(queries)
        candidates = scores[:, live]
        best = candidates.argmax(axis=1)
        similarity[:] = candidates[np.arange(n), best]
        hits[:] = similarity >= self.threshold
        for i in np.flatnonzero(hits):
            slot = int(live[best[i]])
            self._tick += 1
            self._last_used[slot] = self._tick
            values[i] = self._answers[slot]
            if self.audit_rate > 0 and self._rng.random() < self.audit_rate:
                audit_ids[i] = self._new_audit()
        n_hits = int(hits.sum())
        self._hits += n_hits
        self._misses += n - n_hits
        return SimilarLookup(hits, values, similarity, audit_ids, queries)

    def put_many(
        self,
        version: str,
        rows: Any,
        values: Iterable[CachedAnswer],
        *,
        embeddings: npt.NDArray[np.float32] | None = None,
    ) -> None:
        """Store an answer per row under ``version``, evicting LRU entries when full.

        A row whose embedding equals a stored one of the same version replaces that entry.
        """
        values = list(values)
        vectors = self._embeddings(rows, embeddings)
        if len(vectors) != len(values):
            raise ValueError(
                f"similarity cache: put_many got {len(vectors)} rows but {len(values)} values"
            )
        now = self._clock()
        self._expire(now)
        code = self._codes.setdefault(version, len(self._codes))
        for vector, value in zip(vectors, values, strict=True):
            key = (code, hashlib.blake2b(vector.tobytes(), digest_size=16).digest())
            slot = self._slot_of.get(key)
            if slot is None:
                slot = self._slot(code)
                self._slot_of[key] = slot
                self._key_of[slot] = key
            self._vectors[:, slot] = vector
            self._version[slot] = code
            self._expires[slot] = now + self.ttl_s
            self._tick += 1
            self._last_used[slot] = self._tick
            self._answers[slot] = value

    def report(self, audit_id: int, agreed: bool) -> None:
        """The verdict on an audited hit: did the cached answer agree with the fresh one?"""
        if audit_id not in self._pending:
            raise ValueError(
                f"similarity cache: unknown audit id {audit_id} (already reported, or one of "
                f"more than {_MAX_PENDING_AUDITS} left unreported)"
            )
        del self._pending[audit_id]
        self._audited += 1
        self._false_hits += not agreed

    @property
    def false_hit_rate(self) -> float | None:
        """Reported false hits over audited hits; None before the first report."""
        return self._false_hits / self._audited if self._audited else None

    @property
    def hit_rate(self) -> float:
        """Hits over lookups so far (NaN before the first lookup)."""
        lookups = self._hits + self._misses
        return self._hits / lookups if lookups else math.nan

    def clear_version(self, version: str) -> int:
        """Drop every entry stored under ``version``; returns how many were dropped."""
        code = self._codes.get(version)
        if code is None:
            return 0
        slots = np.flatnonzero(self._version == code)
        self._free_slots(slots)
        return int(slots.size)

    def clear(self) -> None:
        """Drop every entry; the counters are kept."""
        self._free_slots(np.flatnonzero(self._version >= 0))

    def stats(self) -> SimilarityCacheStats:
        """Hits, misses, evictions, expirations, size, and the audited false hits."""
        return SimilarityCacheStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            expirations=self._expirations,
            size=len(self),
            audited=self._audited,
            false_hits=self._false_hits,
            false_hit_rate=self.false_hit_rate,
        )

    def _embeddings(
        self, rows: Any, embeddings: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.float32]:
        vectors = self.embed(rows) if embeddings is None else embeddings
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(
                f"similarity cache: embeddings must be 2-D [rows, dim], got shape {vectors.shape}"
            )
        if self._dim is None:
            self._dim = vectors.shape[1]
        elif vectors.shape[1] != self._dim:
            raise ValueError(
                f"similarity cache: embeddings have dim {vectors.shape[1]}, the cache holds "
                f"dim {self._dim}"
            )
        return vectors

    def _scores(self, queries: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Cosine of each query with every slot (free slots hold stale data; callers mask)."""
        nonzero = queries != 0
        if nonzero.sum() >= _SPARSE_FRACTION * queries.size:
            dense: npt.NDArray[np.float32] = queries @ self._vectors
            return dense
        # row by row: each query reads only its own dimensions, where the union of a
        # batch's dimensions would read most of them
        scores = np.empty((len(queries), self._vectors.shape[1]), dtype=np.float32)
        for i, (query, mask) in enumerate(zip(queries, nonzero, strict=True)):
            dims = np.flatnonzero(mask)
            scores[i] = query[dims] @ self._vectors[dims]
        return scores

    def _slot(self, code: int) -> int:
        if self._free:
            return self._free.pop()
        capacity = len(self._answers)
        if capacity < self.max_entries:
            self._grow(min(self.max_entries, max(64, 2 * capacity)))
            return self._free.pop()
        # full: evict the least recently used entry, entries of other versions first
        priority = self._last_used + np.where(self._version == code, self._tick + 1, 0)
        victim = int(priority.argmin())
        self._free_slots(np.array([victim]))
        self._evictions += 1
        return self._free.pop()

    def _grow(self, capacity: int) -> None:
        old = len(self._answers)
        assert self._dim is not None
        vectors = np.zeros((self._dim, capacity), dtype=np.float32)
        if old:
            vectors[:, :old] = self._vectors
        self._vectors = vectors
        self._version = np.concatenate([self._version, np.full(capacity - old, -1, np.int64)])
        self._expires = np.concatenate([self._expires, np.zeros(capacity - old)])
        self._last_used = np.concatenate([self._last_used, np.zeros(capacity - old, np.int64)])
        self._answers.extend([None] * (capacity - old))
        self._key_of.extend([None] * (capacity - old))
        # pop() hands out the lowest new slot first
        self._free.extend(range(capacity - 1, old - 1, -1))

    def _expire(self, now: float) -> None:
        expired = np.flatnonzero((self._version >= 0) & (self._expires <= now))
        if expired.size:
            self._free_slots(expired)
            self._expirations += int(expired.size)

    def _free_slots(self, slots: npt.NDArray[np.intp]) -> None:
        for slot in slots.tolist():
            self._version[slot] = -1
            self._answers[slot] = None
            key = self._key_of[slot]
            if key is not None:
                del self._slot_of[key]
                self._key_of[slot] = None
            self._free.append(slot)

    def _new_audit(self) -> int:
        audit_id = self._next_audit
        self._next_audit += 1
        self._pending[audit_id] = None
        if len(self._pending) > _MAX_PENDING_AUDITS:
            self._pending.popitem(last=False)
        return audit_id
