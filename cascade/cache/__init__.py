"""Answer caches for any policy: an exact cache and a similarity ("semantic") cache.

Both are pure, in-process cores, one per replica by default (nothing is shared between
replicas), keyed by policy version so that a reload cannot serve an answer computed under
the old policy, bounded, with a TTL, and driven by an injected clock so tests never sleep.

- :class:`ExactCache`: canonical input row -> answer, LRU by entries and bytes, TTL.
- :class:`SimilarityCache`: the nearest stored input by cosine over a cheap embedding
  (:func:`hashed_char_embedding` for text, :func:`normalized_rows` for numeric rows), a hit
  at or above a threshold; sampled hits can be audited to measure the false-hit rate.

The serving layer looks rows up before the cascade runs, runs the cascade on the misses,
stores their answers, and marks cached answers with ``Decision.cache_hit``.

Example::

    from cascade.cache import CachedAnswer, ExactCache, SimilarityCache, hashed_char_embedding

    exact = ExactCache(max_entries=10_000, max_bytes=64 << 20, ttl_s=600.0)
    similar = SimilarityCache(hashed_char_embedding, threshold=0.85, max_entries=10_000,
                              ttl_s=600.0, audit_rate=0.01)
    lookup = exact.get_many(policy.version, texts)
"""

from __future__ import annotations

from cascade.cache._exact import (
    CachedAnswer,
    CacheLookup,
    ExactCache,
    ExactCacheStats,
    canonical_key,
    canonical_keys,
    canonical_text,
)
from cascade.cache._similar import (
    Embed,
    SimilarityCache,
    SimilarityCacheStats,
    SimilarLookup,
    hashed_char_embedding,
    normalized_rows,
)

__all__ = [
    "CacheLookup",
    "CachedAnswer",
    "Embed",
    "ExactCache",
    "ExactCacheStats",
    "SimilarLookup",
    "SimilarityCache",
    "SimilarityCacheStats",
    "canonical_key",
    "canonical_keys",
    "canonical_text",
    "hashed_char_embedding",
    "normalized_rows",
]
