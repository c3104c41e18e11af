"""The exact and similarity answer caches: bounds, TTL, versions, canonical keys, false hits."""

from __future__ import annotations

import math
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.cache import (
    CachedAnswer,
    ExactCache,
    SimilarityCache,
    canonical_key,
    canonical_text,
    hashed_char_embedding,
    normalized_rows,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def answer(label: int, tier: str = "small", **meta: str | int | float | bool) -> CachedAnswer:
    probabilities = np.full(3, 0.1, dtype=np.float32)
    probabilities[label] = 0.8
    return CachedAnswer(probabilities, tier, meta=meta)


def labels(values: list[CachedAnswer | None]) -> list[int | None]:
    return [None if value is None else value.label for value in values]


# -- exact cache ------------------------------------------------------------------------


def test_exact_hit_returns_stored_answer_and_counts() -> None:
    cache = ExactCache(max_entries=10, max_bytes=1 << 20, ttl_s=60.0, clock=Clock())
    cache.put_many("v1", ["book a table"], [answer(2, "large", confidence=0.9)])
    hits, values = cache.get_many("v1", ["book a table", "play jazz"])
    assert hits.tolist() == [True, False]
    assert values[0] is not None and values[1] is None
    assert (values[0].label, values[0].answered_by, values[0].meta) == (
        2,
        "large",
        {"confidence": 0.9},
    )
    assert not values[0].probabilities.flags.writeable
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["size"]) == (1, 1, 1)
    assert cache.hit_rate == 0.5


def test_exact_lru_by_entries_evicts_least_recently_used() -> None:
    cache = ExactCache(max_entries=2, max_bytes=1 << 20, ttl_s=60.0, clock=Clock())
    cache.put_many("v1", ["a", "b"], [answer(0), answer(1)])
    cache.get_many("v1", ["a"])  # "b" is now the least recently used
    cache.put_many("v1", ["c"], [answer(2)])
    assert cache.get_many("v1", ["a", "b", "c"]).hits.tolist() == [True, False, True]
    assert cache.stats()["evictions"] == 1
    assert len(cache) == 2


def test_exact_lru_by_bytes_counts_key_and_value() -> None:
    one = answer(0)
    entry_bytes = len(b"v1") + len(canonical_key("a")) + one.nbytes
    assert one.nbytes == 3 * 4 + len("small")
    cache = ExactCache(max_entries=100, max_bytes=2 * entry_bytes, ttl_s=60.0, clock=Clock())
    cache.put_many("v1", ["a", "b"], [one, one])
    assert cache.stats()["bytes"] == 2 * entry_bytes
    cache.put_many("v1", ["c"], [one])
    assert cache.get_many("v1", ["a", "b", "c"]).hits.tolist() == [False, True, True]
    assert cache.stats()["evictions"] == 1
    assert cache.stats()["bytes"] == 2 * entry_bytes


def test_exact_value_larger_than_max_bytes_is_not_stored() -> None:
    cache = ExactCache(max_entries=100, max_bytes=10, ttl_s=60.0, clock=Clock())
    cache.put_many("v1", ["a"], [answer(0)])
    assert len(cache) == 0 and cache.stats()["bytes"] == 0


def test_exact_replacing_a_key_keeps_bytes_exact() -> None:
    cache = ExactCache(max_entries=100, max_bytes=1 << 20, ttl_s=60.0, clock=Clock())
    cache.put_many("v1", ["a"], [answer(0)])
    before = cache.stats()["bytes"]
    cache.put_many("v1", ["a"], [answer(1)])
    assert cache.stats()["bytes"] == before and len(cache) == 1
    assert labels(cache.get_many("v1", ["a"]).values) == [1]


def test_exact_ttl_expires_on_read() -> None:
    clock = Clock()
    cache = ExactCache(max_entries=10, max_bytes=1 << 20, ttl_s=5.0, clock=clock)
    cache.put_many("v1", ["a"], [answer(0)])
    clock.now = 4.999
    assert cache.get_many("v1", ["a"]).hits.tolist() == [True]
    clock.now = 5.0
    assert cache.get_many("v1", ["a"]).hits.tolist() == [False]
    stats = cache.stats()
    assert (stats["expirations"], stats["size"], stats["bytes"]) == (1, 0, 0)


def test_exact_versions_are_isolated_and_clearable() -> None:
    cache = ExactCache(max_entries=10, max_bytes=1 << 20, ttl_s=60.0, clock=Clock())
    cache.put_many("v1", ["a", "b"], [answer(0), answer(0)])
    cache.put_many("v2", ["a"], [answer(1)])
    assert labels(cache.get_many("v2", ["a", "b"]).values) == [1, None]
    assert labels(cache.get_many("v1", ["a"]).values) == [0]
    assert cache.clear_version("v1") == 2
    assert cache.get_many("v1", ["a"]).hits.tolist() == [False]
    assert len(cache) == 1


def test_canonical_numeric_rows() -> None:
    assert canonical_key([-0.0, 1.0]) == canonical_key([0.0, 1.0])
    # rows equal in float32 are the same row to a float32 tier
    assert canonical_key(np.array([0.1], dtype=np.float64)) == canonical_key([np.float32(0.1)])
    assert canonical_key([1.0, 2.0]) != canonical_key([2.0, 1.0])
    cache = ExactCache(max_entries=10, max_bytes=1 << 20, ttl_s=60.0, clock=Clock())
    cache.put_many("v1", np.array([[-0.0, 1.5]]), [answer(1)])
    assert cache.get_many("v1", np.array([[0.0, 1.5], [0.0, 1.0]])).hits.tolist() == [True, False]


def test_canonical_text_nfc_and_whitespace_but_case_kept() -> None:
    decomposed = unicodedata.normalize("NFD", "café")
    assert decomposed != "café"
    assert canonical_key(decomposed) == canonical_key("café")
    assert canonical_text("  book\t a\n table ") == "book a table"
    assert canonical_key("US") != canonical_key("us")
    # a one-column text row never collides with a numeric one
    assert canonical_key("") != canonical_key(np.zeros(0))


def test_exact_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_entries must be >= 1, got 0"):
        ExactCache(max_entries=0, max_bytes=1, ttl_s=1.0)
    with pytest.raises(ValueError, match="ttl_s must be > 0"):
        ExactCache(max_entries=1, max_bytes=1, ttl_s=math.nan)
    cache = ExactCache(max_entries=1, max_bytes=100, ttl_s=1.0)
    with pytest.raises(ValueError, match="2 rows but 1 values"):
        cache.put_many("v1", ["a", "b"], [answer(0)])


# -- similarity cache -------------------------------------------------------------------


def unit(*values: float) -> list[float]:
    return list(normalized_rows([values])[0])


def test_similarity_threshold_hit_and_miss() -> None:
    cache = SimilarityCache(normalized_rows, threshold=0.9, max_entries=10, ttl_s=60.0)
    cache.put_many("v1", [[1.0, 0.0]], [answer(1)])
    # cosines: 1.0, cos(20 degrees) = 0.94, cos(30 degrees) = 0.87
    rows = [[2.0, 0.0], [math.cos(0.349), math.sin(0.349)], [math.cos(0.524), math.sin(0.524)]]
    lookup = cache.get_many("v1", rows)
    assert lookup.hits.tolist() == [True, True, False]
    assert labels(lookup.values) == [1, 1, None]
    assert lookup.similarity == pytest.approx([1.0, 0.94, 0.866], abs=1e-3)
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (2, 1)


def test_similarity_returns_nearest_entry() -> None:
    cache = SimilarityCache(normalized_rows, threshold=0.5, max_entries=10, ttl_s=60.0)
    cache.put_many("v1", [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], [answer(0), answer(1)])
    assert labels(cache.get_many("v1", [[1.0, 0.2, 0.0], [1.0, 0.8, 0.0]]).values) == [0, 1]


def test_similarity_empty_cache_and_zero_rows_miss() -> None:
    cache = SimilarityCache(normalized_rows, threshold=0.5, max_entries=10, ttl_s=60.0)
    lookup = cache.get_many("v1", [[1.0, 0.0]])
    assert lookup.hits.tolist() == [False] and np.isnan(lookup.similarity[0])
    cache.put_many("v1", [[1.0, 0.0]], [answer(0)])
    assert cache.get_many("v1", [[0.0, 0.0]]).hits.tolist() == [False]


def test_similarity_versions_are_isolated_and_evicted_first() -> None:
    cache = SimilarityCache(normalized_rows, threshold=0.9, max_entries=2, ttl_s=60.0)
    cache.put_many("v1", [[1.0, 0.0]], [answer(0)])
    cache.put_many("v2", [[0.0, 1.0]], [answer(1)])
    assert cache.get_many("v2", [[1.0, 0.0]]).hits.tolist() == [False]
    cache.get_many("v1", [[1.0, 0.0]])  # v1's entry is now the most recently used
    cache.put_many("v2", [[1.0, 1.0]], [answer(2)])  # full: v1's entry goes first anyway
    assert cache.get_many("v1", [[1.0, 0.0]]).hits.tolist() == [False]
    assert labels(cache.get_many("v2", [[0.0, 1.0], [1.0, 1.0]]).values) == [1, 2]
    assert cache.stats()["evictions"] == 1
    assert cache.clear_version("v2") == 2 and len(cache) == 0


def test_similarity_lru_by_entries() -> None:
    cache = SimilarityCache(normalized_rows, threshold=0.99, max_entries=2, ttl_s=60.0)
    cache.put_many("v1", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [answer(0), answer(1)])
    cache.get_many("v1", [[1.0, 0.0, 0.0]])
    cache.put_many("v1", [[0.0, 0.0, 1.0]], [answer(2)])
    hits = cache.get_many("v1", [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).hits
    assert hits.tolist() == [True, False, True]
    assert (cache.stats()["evictions"], len(cache)) == (1, 2)


def test_similarity_ttl() -> None:
    clock = Clock()
    cache = SimilarityCache(normalized_rows, threshold=0.9, max_entries=4, ttl_s=5.0, clock=clock)
    cache.put_many("v1", [[1.0, 0.0]], [answer(0)])
    clock.now = 4.0
    cache.put_many("v1", [[0.0, 1.0]], [answer(1)])
    clock.now = 5.0
    lookup = cache.get_many("v1", [[1.0, 0.0], [0.0, 1.0]])
    assert lookup.hits.tolist() == [False, True]
    assert (cache.stats()["expirations"], len(cache)) == (1, 1)


def test_similarity_false_hit_audit() -> None:
    cache = SimilarityCache(
        normalized_rows, threshold=0.8, max_entries=10, ttl_s=60.0, audit_rate=1.0
    )
    cache.put_many("v1", [[1.0, 0.0]], [answer(0)])
    lookup = cache.get_many("v1", [[1.0, 0.1], [1.0, 0.2], [0.0, 1.0]])
    assert lookup.hits.tolist() == [True, True, False]
    first, second, missed = lookup.audit_ids
    assert first is not None and second is not None and missed is None
    assert cache.false_hit_rate is None
    cache.report(first, agreed=True)
    cache.report(second, agreed=False)
    stats = cache.stats()
    assert (stats["audited"], stats["false_hits"], stats["false_hit_rate"]) == (2, 1, 0.5)
    with pytest.raises(ValueError, match=f"unknown audit id {second}"):
        cache.report(second, agreed=False)


def test_similarity_audit_rate_zero_audits_nothing() -> None:
    cache = SimilarityCache(normalized_rows, threshold=0.8, max_entries=10, ttl_s=60.0)
    cache.put_many("v1", [[1.0, 0.0]], [answer(0)])
    assert cache.get_many("v1", [[1.0, 0.0]]).audit_ids == [None]


def test_similarity_reuses_lookup_embeddings_and_checks_dim() -> None:
    calls: list[int] = []

    def embed(rows: object) -> np.ndarray:
        calls.append(1)
        return normalized_rows(rows)

    cache = SimilarityCache(embed, threshold=0.9, max_entries=10, ttl_s=60.0)
    lookup = cache.get_many("v1", [[1.0, 0.0]])
    cache.put_many("v1", None, [answer(0)], embeddings=lookup.embeddings)
    assert len(calls) == 1 and len(cache) == 1
    with pytest.raises(ValueError, match="embeddings have dim 3, the cache holds dim 2"):
        cache.get_many("v1", [[1.0, 0.0, 0.0]])


def test_similarity_grows_past_its_first_allocation() -> None:
    cache = SimilarityCache(normalized_rows, threshold=0.999, max_entries=200, ttl_s=60.0)
    rows = np.eye(150, dtype=np.float32)
    cache.put_many("v1", rows, [answer(i % 3) for i in range(150)])
    lookup = cache.get_many("v1", rows)
    assert lookup.hits.all() and labels(lookup.values) == [i % 3 for i in range(150)]


def test_similarity_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 1.5"):
        SimilarityCache(normalized_rows, threshold=1.5, max_entries=1, ttl_s=1.0)
    with pytest.raises(ValueError, match=r"audit_rate must be in \[0, 1\], got -0.1"):
        SimilarityCache(normalized_rows, threshold=0.9, max_entries=1, ttl_s=1.0, audit_rate=-0.1)


def test_hashed_char_embedding() -> None:
    texts = ["book a table for two", "Book a  table for two!", "what's the weather", ""]
    e = hashed_char_embedding(texts, dim=256)
    assert e.shape == (4, 256) and e.dtype == np.float32
    assert np.linalg.norm(e[:3], axis=1) == pytest.approx([1.0, 1.0, 1.0])
    assert not e[3].any()
    assert e[0] @ e[1] > 0.85 > e[0] @ e[2]
    np.testing.assert_array_equal(e, hashed_char_embedding(texts, dim=256))
    with pytest.raises(ValueError, match=r"ngram must be \(low, high\)"):
        hashed_char_embedding(["a"], ngram=(3, 2))


def test_similarity_cache_on_text() -> None:
    cache = SimilarityCache(hashed_char_embedding, threshold=0.8, max_entries=10, ttl_s=60.0)
    cache.put_many("v1", ["book a table for two"], [answer(1)])
    lookup = cache.get_many("v1", ["Book a table for two", "what's the weather like"])
    assert lookup.hits.tolist() == [True, False]


# -- properties -------------------------------------------------------------------------

VERSIONS = ("v1", "v2", "v3")
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(VERSIONS), st.integers(0, 5)),
        st.tuples(st.just("get"), st.sampled_from(VERSIONS), st.integers(0, 5)),
        st.tuples(st.just("tick"), st.sampled_from(VERSIONS), st.integers(0, 4)),
        st.tuples(st.just("clear"), st.sampled_from(VERSIONS), st.just(0)),
    ),
    max_size=40,
)


def _row(key: int) -> list[float]:
    row = [0.0] * 6
    row[key] = 1.0
    return row


@settings(max_examples=150, deadline=None)
@given(operations, st.integers(1, 4), st.sampled_from([2.0, 3.0, math.inf]))
def test_caches_never_return_other_versions_or_expired_entries(
    ops: list[tuple[str, str, int]], max_entries: int, ttl_s: float
) -> None:
    clock = Clock()
    exact = ExactCache(max_entries=max_entries, max_bytes=1 << 20, ttl_s=ttl_s, clock=clock)
    similar = SimilarityCache(
        normalized_rows, threshold=0.99, max_entries=max_entries, ttl_s=ttl_s, clock=clock
    )
    latest: dict[tuple[str, int], int] = {}  # (version, key) -> serial of the last put
    for serial, (op, version, key) in enumerate(ops):
        if op == "tick":
            clock.now += key
        elif op == "clear":
            exact.clear_version(version)
            similar.clear_version(version)
        elif op == "put":
            value = answer(0, version=version, key=key, stored_at=clock.now, serial=serial)
            exact.put_many(version, [_row(key)], [value])
            similar.put_many(version, [_row(key)], [value])
            latest[version, key] = serial
        else:
            for cache in (exact, similar):
                (found,) = cache.get_many(version, [_row(key)]).values
                if found is not None:
                    assert found.meta["version"] == version
                    assert found.meta["key"] == key
                    assert clock.now < float(found.meta["stored_at"]) + ttl_s
                    assert found.meta["serial"] == latest[version, key]
        assert len(exact) <= max_entries and len(similar) <= max_entries
