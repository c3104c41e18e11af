"""Ranking metrics and the cascade simulator: NDCG against independent computations, the
cascade's invariants, and evaluate_cascade's bookkeeping on small fakes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import ndcg_score

from cascade.errors import InputError
from cascade.ranking import (
    CascadeModels,
    Query,
    Stage,
    cascade_rank,
    evaluate_cascade,
    filter_survivors,
    ltr_queries,
    ndcg_at_k,
    ndcg_of_ranking,
    recall_at_k_vs_reference,
    top_k,
)


def direct_ndcg(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """NDCG@k written out longhand: sort, then sum discounted 2**rel - 1 gains."""
    relevance = [float(r) for r in labels]
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    dcg = sum((2.0 ** relevance[i] - 1) / math.log2(rank + 2) for rank, i in enumerate(order))
    ideal = sorted(relevance, reverse=True)[:k]
    idcg = sum((2.0**rel - 1) / math.log2(rank + 2) for rank, rel in enumerate(ideal))
    return float(dcg / idcg)


@pytest.fixture(scope="module")
def ltr_test() -> list[Query]:
    return [q for q in ltr_queries("test") if q.relevance.max() > 0]


@pytest.mark.parametrize("k", [1, 5, 10, 30])
def test_ndcg_matches_a_direct_computation_and_sklearn_on_the_ltr_sample(
    ltr_test: list[Query], k: int
) -> None:
    rng = np.random.default_rng(0)
    projection = rng.normal(size=ltr_test[0].features.shape[1])
    assert len(ltr_test) > 40
    for query in ltr_test:
        scores = query.features.astype(np.float64) @ projection  # continuous: no ties
        assert len(np.unique(scores)) == len(scores)
        ours = ndcg_at_k(scores, query.relevance, k=k)
        assert ours == pytest.approx(direct_ndcg(scores, query.relevance, k), abs=1e-12)
        # sklearn uses y_true as the gain itself, so hand it 2**rel - 1 to match our gains.
        gains = 2.0 ** query.relevance[None, :] - 1
        assert ours == pytest.approx(ndcg_score(gains, scores[None, :], k=k), abs=1e-12)


def test_ndcg_of_a_perfect_ranking_is_one_and_of_no_relevant_item_is_nan() -> None:
    relevance = np.array([0, 3, 1, 2], dtype=np.float32)
    assert ndcg_at_k(relevance, relevance, k=10) == pytest.approx(1.0)
    assert math.isnan(ndcg_at_k([0.3, 0.2, 0.1], [0, 0, 0]))


def test_ndcg_of_a_short_ranking_keeps_the_ideal_of_all_labels() -> None:
    # Only one of two relevant items is returned: the ideal still counts both.
    assert ndcg_of_ranking([1], [0, 1, 1], k=10) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert ndcg_of_ranking([], [0, 1], k=10) == 0.0


def test_ndcg_refuses_scores_and_labels_of_different_lengths() -> None:
    with pytest.raises(InputError, match=r"scores have shape \[3\], relevance \[2\]"):
        ndcg_at_k([1.0, 2.0, 3.0], [0, 1])


def test_recall_against_the_reference_top_k() -> None:
    assert recall_at_k_vs_reference([5, 3, 9], [3, 4, 5], k=3) == pytest.approx(2 / 3)
    assert recall_at_k_vs_reference([1, 2, 3, 4], [4, 3, 2, 1], k=2) == 0.0
    assert recall_at_k_vs_reference([1], [1], k=10) == 1.0  # denominator min(k, len(reference))
    assert recall_at_k_vs_reference([1], [], k=10) == 1.0


def test_top_k_breaks_ties_by_position_and_ranks_nan_last() -> None:
    assert top_k([0.1, 0.9, 0.5, 0.9], 3).tolist() == [1, 3, 2]
    assert top_k([np.nan, 0.0, -1.0], 3).tolist() == [1, 2, 0]
    assert top_k([3.0, 2.0, 1.0], 2, among=[2, 1]).tolist() == [1, 2]


small_ints = st.lists(st.integers(-3, 3), min_size=1, max_size=40)  # many ties


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    coarse=small_ints,
    n=st.integers(0, 50),
    k=st.integers(0, 12),
    use_filter=st.booleans(),
)
def test_cascade_rank_returns_the_fine_order_of_a_coarse_shortlist(
    data: st.DataObject, coarse: list[int], n: int, k: int, use_filter: bool
) -> None:
    size = len(coarse)
    fine = np.array(data.draw(st.lists(st.integers(-3, 3), min_size=size, max_size=size)))
    filt = np.array(data.draw(st.lists(st.integers(0, 2), min_size=size, max_size=size)))
    top = cascade_rank(filt if use_filter else None, 1, coarse, fine, n=n, k=k)

    survivors = filter_survivors(filt, 1, k) if use_filter else np.arange(size)
    # the filter keeps at least its best k, as the served Ranker does
    assert len(survivors) >= min(k, size)
    assert len(top) == min(k, n, len(survivors))
    assert len(set(top.tolist())) == len(top)
    assert set(top.tolist()) <= set(survivors.tolist())
    assert all(fine[a] >= fine[b] for a, b in itertools.pairwise(top))
    # Only the coarse shortlist (the top n survivors, ties to the lower index) is reranked.
    shortlisted = top_k(coarse, n, among=survivors)
    assert set(top.tolist()) <= set(shortlisted.tolist())
    if n >= len(survivors):  # no shortlist cut: the cascade is fine-only over the survivors
        assert top.tolist() == top_k(fine, k, among=survivors).tolist()


def test_cascade_rank_checks_shapes() -> None:
    with pytest.raises(InputError, match="must be 1-d and of equal length"):
        cascade_rank(None, 0.0, [1.0, 2.0], [1.0], n=1)
    with pytest.raises(InputError, match="filter scores"):
        cascade_rank([1.0], 0.0, [1.0, 2.0], [1.0, 2.0], n=1)


def _column(i: int) -> Stage:
    return Stage(lambda rows: rows[:, i], cost_us=0.0)


def _toy_queries() -> list[Query]:
    rng = np.random.default_rng(1)
    queries = []
    for size in (30, 45, 60):
        fine = rng.normal(size=size)
        coarse = fine + rng.normal(scale=1.0, size=size)
        popularity = rng.integers(0, 5, size=size).astype(np.float64)
        features = np.stack([popularity, coarse, fine], axis=1).astype(np.float32)
        relevance = (fine > 1.0).astype(np.float32)
        queries.append(Query(features, relevance, np.arange(size)))
    queries.append(Query(queries[0].features, np.zeros(30, np.float32), np.arange(30)))
    return queries


def test_evaluate_cascade_rows_costs_and_skipped_queries() -> None:
    queries = _toy_queries()
    models = CascadeModels(
        filter=Stage(_column(0).score, cost_us=0.1),
        filter_threshold=1.0,
        coarse=Stage(_column(1).score, cost_us=0.5),
        fine=Stage(_column(2).score, cost_us=10.0),
    )
    results = {r.name: r for r in evaluate_cascade(queries, models, [5, 1000])}
    assert list(results) == ["coarse-only", "fine-only", "cascade N=5", "cascade N=1000"]
    assert {r.n_queries for r in results.values()} == {3}  # the all-zero query is skipped

    fine_only = results["fine-only"]
    assert (fine_only.relative_ndcg, fine_only.recall_at_10, fine_only.relative_cost) == (
        1.0,
        1.0,
        1.0,
    )
    assert results["coarse-only"].relative_cost == pytest.approx(0.05)
    assert results["cascade N=1000"].n == 1000 and results["coarse-only"].n is None

    kept = queries[:3]
    total = sum(len(q.features) for q in kept)
    survivors = sum(int((q.features[:, 0] >= 1.0).sum()) for q in kept)
    expected = (0.1 * total + 0.5 * survivors + 10.0 * 3 * 5) / (10.0 * total)
    assert results["cascade N=5"].relative_cost == pytest.approx(expected)
    expected_ndcg = np.mean(
        [
            ndcg_of_ranking(
                cascade_rank(q.features[:, 0], 1.0, q.features[:, 1], q.features[:, 2], n=5),
                q.relevance,
            )
            for q in kept
        ]
    )
    assert results["cascade N=5"].ndcg_at_10 == pytest.approx(expected_ndcg)


def test_without_filter_a_shortlist_of_everything_is_fine_only() -> None:
    models = CascadeModels(coarse=_column(1), fine=Stage(_column(2).score, cost_us=1.0))
    results = {r.name: r for r in evaluate_cascade(_toy_queries(), models, [60])}
    assert results["cascade N=60"].ndcg_at_10 == results["fine-only"].ndcg_at_10
    assert results["cascade N=60"].recall_at_10 == 1.0
    assert results["cascade N=60"].relative_cost == pytest.approx(1.0)


def test_evaluate_cascade_needs_a_query_with_a_relevant_item() -> None:
    query = Query(np.zeros((3, 3), np.float32), np.zeros(3, np.float32), np.arange(3))
    models = CascadeModels(coarse=_column(1), fine=_column(2))
    with pytest.raises(InputError, match="none of the 1 queries has a relevant item"):
        evaluate_cascade([query], models, [2])
