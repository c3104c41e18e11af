"""A served policy's answer caches in front of its coalescer: look up, run the misses, store.

Rows found in the exact cache (or, failing that, the similarity cache) are answered at once
with ``reason="cache"``; only the rest reach the cascade. Answers are stored unless they
are degraded or were capped by the request (``max_tier``, deadlines): a capped answer is
this request's compromise, not the policy's answer. A sampled share of similarity hits
(``audit_rate``) is answered by the cascade instead and compared with the cached answer:
that is the live false-hit rate.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from cascade.policy import CacheSection
from cascade.routing import Decision
from cascade.serving._profile import Profile

__all__ = ["AnswerCaches"]

Answer = tuple[np.ndarray, tuple[Decision, ...]]
_STORED_REASONS = ("confident", "last_tier", "max_escalations", "band",
                   "speculative_cheap", "speculative_expensive")  # fmt: skip


class AnswerCaches:
    """The exact and similarity caches of one served policy (per replica)."""

    def __init__(self, section: CacheSection, *, text: bool) -> None:
        from cascade.cache import (
            ExactCache,
            SimilarityCache,
            hashed_char_embedding,
            normalized_rows,
        )

        self.exact = (
            ExactCache(section.exact_max_entries, section.exact_max_bytes, section.ttl_s)
            if section.exact_max_entries > 0
            else None
        )
        similar = section.similarity
        self.similar = (
            SimilarityCache(
                hashed_char_embedding if text else normalized_rows,
                threshold=similar.threshold,
                max_entries=similar.max_entries,
                ttl_s=section.ttl_s,
                audit_rate=similar.audit_rate,
            )
            if similar is not None
            else None
        )
        self.counts = {"exact_hit": 0, "similar_hit": 0, "miss": 0}

    async def read_through(
        self,
        version: str,
        rows: np.ndarray,
        route: Callable[[np.ndarray, Profile | None], Awaitable[Answer]],
        *,
        deadline_ms: float | None,
        profile: Profile | None = None,
    ) -> Answer:
        """Answer ``rows``: cached ones from the caches, the rest by ``route(misses,
        profile)`` (the cascade).

        ``profile``: the lookups, and the stores after the route, are its ``cache`` phases."""
        began = time.perf_counter()
        n = len(rows)
        cached: list[tuple[Any, str, float | None] | None] = [None] * n
        audits: dict[int, tuple[int, Any]] = {}  # row -> (audit id, cached answer)
        open_rows = np.arange(n)
        if self.exact is not None:
            hits, values = self.exact.get_many(version, rows)
            for i in np.flatnonzero(hits):
                cached[i] = (values[i], "exact", 1.0)
            open_rows = np.flatnonzero(~hits)
        embeddings = None
        if self.similar is not None and len(open_rows):
            lookup = self.similar.get_many(version, rows[open_rows])
            embeddings = lookup.embeddings
            for j, i in enumerate(open_rows):
                if not lookup.hits[j]:
                    continue
                audit = lookup.audit_ids[j]
                if audit is not None:  # answered by the cascade, then compared
                    audits[int(i)] = (audit, lookup.values[j])
                else:
                    cached[i] = (lookup.values[j], "similar", float(lookup.similarity[j]))
        lookup_ms = (time.perf_counter() - began) * 1000
        misses = np.array([i for i in range(n) if cached[i] is None], dtype=np.int64)
        self.counts["exact_hit"] += sum(1 for c in cached if c is not None and c[1] == "exact")
        self.counts["similar_hit"] += sum(1 for c in cached if c is not None and c[1] == "similar")
        self.counts["miss"] += len(misses)

        probabilities: np.ndarray | None = None
        decisions: list[Decision | None] = [None] * n
        if profile is not None:
            profile.mark("cache")
        if len(misses):
            got, got_decisions = await route(rows[misses], profile)
            probabilities = np.zeros((n, got.shape[1]), dtype=np.float32)
            probabilities[misses] = got
            for row, decision in zip(misses.tolist(), got_decisions, strict=True):
                decisions[row] = decision
            self._store(version, rows, misses, got, got_decisions, embeddings, open_rows)
            for row, (audit, value) in audits.items():
                agreed = int(np.argmax(probabilities[row])) == value.label
                assert self.similar is not None
                self.similar.report(audit, agreed)
        for row, hit in enumerate(cached):
            if hit is None:
                continue
            value, kind, similarity = hit
            if probabilities is None:
                probabilities = np.zeros((n, len(value.probabilities)), dtype=np.float32)
            probabilities[row] = value.probabilities
            decisions[row] = Decision(
                steps=(), answered_by=value.answered_by, reason="cache", cost=0.0,
                latency_ms=lookup_ms, deadline_ms=deadline_ms, cache_hit=True, cache=kind,
                similarity=None if kind == "exact" else similarity,
            )  # fmt: skip
        assert probabilities is not None and all(d is not None for d in decisions)
        if profile is not None:
            profile.mark("cache")
        return probabilities, tuple(d for d in decisions if d is not None)

    def _store(
        self,
        version: str,
        rows: np.ndarray,
        misses: np.ndarray,
        probabilities: np.ndarray,
        decisions: tuple[Decision, ...],
        embeddings: np.ndarray | None,
        open_rows: np.ndarray,
    ) -> None:
        from cascade.cache import CachedAnswer

        keep = [k for k, d in enumerate(decisions)
                if not d.degraded and d.reason in _STORED_REASONS]  # fmt: skip
        if not keep:
            return
        idx = misses[keep]
        values = [CachedAnswer(probabilities[k], answered_by=decisions[k].answered_by)
                  for k in keep]  # fmt: skip
        if self.exact is not None:
            self.exact.put_many(version, rows[idx], values)
        if self.similar is not None:
            vectors = None
            if embeddings is not None:  # reuse the lookup's embeddings of these rows
                position = {int(r): j for j, r in enumerate(open_rows)}
                if all(int(i) in position for i in idx):
                    vectors = embeddings[[position[int(i)] for i in idx]]
            self.similar.put_many(version, rows[idx], values, embeddings=vectors)

    def stats(self) -> dict[str, Any]:
        """Hits, misses and sizes, for metadata; the similarity cache's false-hit rate."""
        out: dict[str, Any] = dict(self.counts)
        if self.exact is not None:
            out["exact"] = dict(self.exact.stats())
        if self.similar is not None:
            out["similar"] = dict(self.similar.stats())
        return out
