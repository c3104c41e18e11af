"""The exact answer cache: canonical input row -> answer, LRU + TTL, bounded, versioned.

A key is ``(policy_version, canonical bytes of the row)``, so an answer stored under one
policy version is never returned for another: a reload that bumps the version cannot serve
stale answers. Old-version entries are never read again; they age out of the LRU order, or
``clear_version`` drops them at once.

Canonicalisation (:func:`canonical_key`):

- numeric rows: the float32 bytes of the row (the tiers run float32, so rows equal in
  float32 share an answer), with ``-0.0`` turned into ``0.0``. NaN is not canonicalised:
  inputs are validated before they reach the cache.
- text rows: Unicode NFC, then every run of whitespace collapsed to one space and the ends
  stripped. Case is kept: a tier may answer "US" and "us" differently, and lowercasing is
  only safe where every tier lowercases its own input.

Time comes from the injected clock only; one cache serves one replica's event loop and is
not thread-safe.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict

import numpy as np
import numpy.typing as npt

__all__ = [
    "CacheLookup",
    "CachedAnswer",
    "ExactCache",
    "ExactCacheStats",
    "canonical_key",
    "canonical_keys",
    "canonical_text",
]

MetaValue = str | int | float | bool


@dataclass(frozen=True, eq=False)
class CachedAnswer:
    """One cached answer: the answering tier's probabilities, the tier, small metadata.

    ``probabilities`` is stored as a read-only float32 copy. ``meta`` is for a few small
    scalars (say the confidence or the route); the caches count its bytes but do not read it.

    Example::

        CachedAnswer(np.array([0.1, 0.9]), answered_by="small", meta={"confidence": 0.9})
    """

    probabilities: npt.NDArray[np.float32]
    answered_by: str
    meta: Mapping[str, MetaValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        probabilities = np.array(self.probabilities, dtype=np.float32).reshape(-1)
        probabilities.flags.writeable = False
        object.__setattr__(self, "probabilities", probabilities)
        object.__setattr__(self, "meta", dict(self.meta))

    @property
    def label(self) -> int:
        """The answered class (argmax of the probabilities)."""
        return int(self.probabilities.argmax())

    @property
    def nbytes(self) -> int:
        """Payload bytes: probabilities, tier name and metadata (no Python object overhead)."""
        meta = sum(len(key.encode()) + len(str(value).encode()) for key, value in self.meta.items())
        return int(self.probabilities.nbytes) + len(self.answered_by.encode()) + meta


class CacheLookup(NamedTuple):
    """What ``get_many`` found: a hit mask and, per row, the answer or None."""

    hits: npt.NDArray[np.bool_]
    values: list[CachedAnswer | None]


class ExactCacheStats(TypedDict):
    """Counters since construction, and the current size (entries and payload bytes)."""

    hits: int
    misses: int
    evictions: int
    expirations: int
    size: int
    bytes: int


def canonical_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, ends stripped; case kept.

    Example::

        >>> canonical_text("  Cafe\\u0301   au\\tlait ")
        'Café au lait'
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def canonical_key(row: str | npt.ArrayLike) -> bytes:
    """The canonical bytes of one input row (text or numeric), as the exact cache keys it.

    Example::

        >>> canonical_key([0.0, 1.5]) == canonical_key(np.array([-0.0, 1.5]))
        True
    """
    if isinstance(row, str):
        return b"t" + canonical_text(row).encode("utf-8")
    values = np.asarray(row, dtype=np.float32).reshape(-1) + np.float32(0.0)  # -0.0 -> 0.0
    return b"f" + values.tobytes()


def canonical_keys(rows: Sequence[Any] | npt.NDArray[Any]) -> list[bytes]:
    """``canonical_key`` of each row; a 2-D numeric array is converted in one go."""
    if isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.dtype.kind in "fiub":
        values = np.ascontiguousarray(rows, dtype=np.float32) + np.float32(0.0)
        return [b"f" + row.tobytes() for row in values]
    return [canonical_key(row) for row in rows]


@dataclass(slots=True)
class _Entry:
    value: CachedAnswer
    expires_at: float
    nbytes: int


class ExactCache:
    """Exact-input answer cache, LRU-bounded by entries and by payload bytes, with a TTL.

    An entry's bytes are its key (version and canonical row) plus its value's payload
    (``CachedAnswer.nbytes``); Python's own per-entry overhead (a few hundred bytes) is not
    counted. An entry is live for ``ttl_s`` seconds from its ``put`` (``math.inf``: no
    expiry); an expired entry found by ``get_many`` is dropped and counted as an expiration
    and a miss. A value bigger than ``max_bytes`` on its own is not stored.

    Example::

        cache = ExactCache(max_entries=10_000, max_bytes=64 << 20, ttl_s=300.0)
        lookup = cache.get_many("v3", ["what's my balance", "book a table"])
        missed = [row for row, hit in zip(rows, lookup.hits) if not hit]
        ...  # run the cascade on the missed rows
        cache.put_many("v3", missed, [CachedAnswer(p, tier) for p, tier in answers])
        cache.stats()["hits"]
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"exact cache: max_entries must be >= 1, got {max_entries}")
        if max_bytes < 1:
            raise ValueError(f"exact cache: max_bytes must be >= 1, got {max_bytes}")
        if not ttl_s > 0:  # also rejects NaN
            raise ValueError(f"exact cache: ttl_s must be > 0 (math.inf: no expiry), got {ttl_s}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expirations = 0

    def __repr__(self) -> str:
        return (
            f"ExactCache(size={len(self._entries)}, bytes={self._bytes}, "
            f"max_entries={self.max_entries}, max_bytes={self.max_bytes}, ttl_s={self.ttl_s})"
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, version: str, rows: Sequence[Any] | npt.NDArray[Any]) -> CacheLookup:
        """Look each row up under ``version``; hits move to the LRU's most recent end.

        ``rows`` is a sequence of strings (text) or a 2-D numeric array (one row per input).
        """
        now = self._clock()
        keys = canonical_keys(rows)
        hits = np.zeros(len(keys), dtype=bool)
        values: list[CachedAnswer | None] = [None] * len(keys)
        for i, canonical in enumerate(keys):
            key = (version, canonical)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at <= now:
                self._drop(key)
                self._expirations += 1
                entry = None
            if entry is None:
                self._misses += 1
                continue
            self._entries.move_to_end(key)
            self._hits += 1
            hits[i] = True
            values[i] = entry.value
        return CacheLookup(hits, values)

    def put_many(
        self,
        version: str,
        rows: Sequence[Any] | npt.NDArray[Any],
        values: Iterable[CachedAnswer],
    ) -> None:
        """Store an answer per row under ``version`` (replacing any), then evict LRU entries."""
        keys = canonical_keys(rows)
        values = list(values)
        if len(keys) != len(values):
            raise ValueError(f"exact cache: put_many got {len(keys)} rows but {len(values)} values")
        expires_at = self._clock() + self.ttl_s
        version_bytes = len(version.encode())
        for canonical, value in zip(keys, values, strict=True):
            key = (version, canonical)
            if key in self._entries:
                self._drop(key)
            nbytes = version_bytes + len(canonical) + value.nbytes
            if nbytes > self.max_bytes:
                continue
            self._entries[key] = _Entry(value, expires_at, nbytes)
            self._bytes += nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
                self._evictions += 1

    def clear_version(self, version: str) -> int:
        """Drop every entry stored under ``version``; returns how many were dropped."""
        stale = [key for key in self._entries if key[0] == version]
        for key in stale:
            self._drop(key)
        return len(stale)

    def clear(self) -> None:
        """Drop every entry; the counters are kept."""
        self._entries.clear()
        self._bytes = 0

    def stats(self) -> ExactCacheStats:
        """Hits, misses, evictions, expirations since construction; current size and bytes."""
        return ExactCacheStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            expirations=self._expirations,
            size=len(self._entries),
            bytes=self._bytes,
        )

    @property
    def hit_rate(self) -> float:
        """Hits over lookups so far (NaN before the first lookup)."""
        lookups = self._hits + self._misses
        return self._hits / lookups if lookups else math.nan

    def _drop(self, key: tuple[str, bytes]) -> None:
        self._bytes -= self._entries.pop(key).nbytes
