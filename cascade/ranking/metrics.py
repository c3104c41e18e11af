"""Ranking metrics and an offline simulator of a filter → coarse → fine cascade.

- :func:`ndcg_at_k`: NDCG with graded gains ``2**rel - 1`` and ``log2(rank + 1)`` discounts;
  the ideal DCG uses *all* relevance labels of the query, including items a cascade never
  scored, so dropping a relevant item costs NDCG.
- :func:`recall_at_k_vs_reference`: overlap of a top-k with a reference top-k (the full
  fine ranker's), i.e. how faithfully a cascade reproduces the expensive ranking.
- :func:`cascade_rank`: the top-k of one query after filter, coarse top-``n`` and fine rerank.
- :func:`evaluate_cascade`: all of the above over many queries and shortlist sizes, beside
  coarse-only and fine-only, with the compute cost relative to fine-only.

Ties are broken by candidate position (lower first) everywhere, so results are deterministic
and a cascade that keeps every candidate reproduces fine-only exactly.

Example::

    top = cascade_rank(None, 0.0, coarse, fine, n=100, k=10)
    ndcg = ndcg_of_ranking(top, relevance, k=10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from cascade.errors import InputError

__all__ = [
    "CascadeModels",
    "CascadeResult",
    "K",
    "Query",
    "Stage",
    "cascade_rank",
    "evaluate_cascade",
    "format_results",
    "ndcg_at_k",
    "ndcg_of_ranking",
    "recall_at_k_vs_reference",
    "top_k",
]

K = 10
"""Cut-off of the reported metrics (``ndcg_at_10``, ``recall_at_10``)."""

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Scorer = Callable[[FloatArray], npt.NDArray[np.floating]]
_SCORE_CHUNK = 1 << 16


class Query(NamedTuple):
    """One query's candidates: features ``float32 [n, F]``, relevance ``[n]`` and ids ``[n]``.

    Unpacks as ``X, relevance, ids = query``.
    """

    features: FloatArray
    relevance: npt.NDArray[np.floating]
    ids: npt.NDArray[np.int64]


@dataclass(frozen=True)
class Stage:
    """A scorer (rows → one score per row, higher = better) and its per-row cost in µs."""

    score: Scorer
    cost_us: float


@dataclass(frozen=True)
class CascadeModels:
    """The stages of a ranking cascade; the filter keeps rows scoring ``>= filter_threshold``."""

    coarse: Stage
    fine: Stage
    filter: Stage | None = None
    filter_threshold: float = float("-inf")


@dataclass(frozen=True)
class CascadeResult:
    """One row of :func:`evaluate_cascade`; ``n`` is the shortlist size (None: no shortlist).

    ``relative_ndcg`` is ``ndcg_at_10`` over fine-only's, ``relative_cost`` the total compute
    over fine-only's, ``recall_at_10`` the mean overlap with fine-only's top 10.
    """

    name: str
    n: int | None
    ndcg_at_10: float
    relative_ndcg: float
    recall_at_10: float
    relative_cost: float
    n_queries: int
    ndcg_per_query: npt.NDArray[np.float64] | None = field(default=None, repr=False, compare=False)
    """NDCG@10 of each evaluated query, fine-only's row first in :attr:`reference_ndcg`."""
    reference_ndcg: npt.NDArray[np.float64] | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """The scalar fields, for JSON."""
        return {
            "name": self.name, "n": self.n, "ndcg_at_10": self.ndcg_at_10,
            "relative_ndcg": self.relative_ndcg, "recall_at_10": self.recall_at_10,
            "relative_cost": self.relative_cost, "n_queries": self.n_queries,
        }  # fmt: skip


def top_k(scores: npt.ArrayLike, k: int, *, among: npt.ArrayLike | None = None) -> IntArray:
    """Indices of the ``k`` highest ``scores`` (all of them if fewer), best first.

    ``among`` restricts the choice to those indices. Ties go to the lower index; NaN ranks last.

    Example::

        >>> top_k([0.1, 0.9, 0.5, 0.9], 3).tolist()
        [1, 3, 2]
    """
    values = np.asarray(scores, dtype=np.float64)
    indices = (
        np.arange(len(values), dtype=np.int64)
        if among is None
        else np.asarray(among, dtype=np.int64)
    )
    picked = values[indices]
    picked = np.where(np.isnan(picked), -np.inf, picked)
    order = np.lexsort((indices, -picked))
    return indices[order[: max(k, 0)]]


def _gains(relevance: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return np.exp2(np.asarray(relevance, dtype=np.float64)) - 1.0


def _discounts(n: int) -> npt.NDArray[np.float64]:
    return 1.0 / np.log2(np.arange(2, n + 2, dtype=np.float64))


def ndcg_of_ranking(ranking: npt.ArrayLike, relevance: npt.ArrayLike, *, k: int = K) -> float:
    """NDCG@k of ``ranking`` (candidate indices, best first; may be shorter than k).

    Gains are ``2**rel - 1``, the discount of rank ``r`` (1-based) is ``1 / log2(r + 1)``, and
    the ideal DCG sorts *all* of ``relevance``. A query without any relevant item (all
    gains 0) has no defined NDCG: the result is ``nan``, and callers exclude such queries
    (:func:`evaluate_cascade` does).

    Example::

        >>> ndcg_of_ranking([2, 0], [0, 1, 1], k=2)
        0.6131471927654584
    """
    gains = _gains(relevance)
    ranked = np.asarray(ranking, dtype=np.int64)[:k]
    ideal_gains = np.sort(gains)[::-1][:k]
    ideal = float(ideal_gains @ _discounts(len(ideal_gains)))
    if ideal <= 0.0:
        return float("nan")
    return float(gains[ranked] @ _discounts(len(ranked))) / ideal


def ndcg_at_k(scores: npt.ArrayLike, relevance: npt.ArrayLike, *, k: int = K) -> float:
    """NDCG@k of the order given by ``scores`` (higher first); see :func:`ndcg_of_ranking`.

    Example::

        >>> ndcg_at_k([0.2, 0.1, 0.9], [0, 1, 1], k=2)
        0.6131471927654584
    """
    values = np.asarray(scores)
    if values.shape != np.shape(relevance):
        raise InputError(
            f"scores have shape {list(values.shape)}, relevance {list(np.shape(relevance))}"
        )
    return ndcg_of_ranking(top_k(values, k), relevance, k=k)


def recall_at_k_vs_reference(
    ranked_ids: npt.ArrayLike, reference_top_ids: npt.ArrayLike, *, k: int = K
) -> float:
    """Share of the reference's top ``k`` found in ``ranked_ids[:k]``.

    The denominator is ``min(k, len(reference))``; an empty reference gives 1.0.

    Example::

        >>> recall_at_k_vs_reference([5, 3, 9], [3, 4, 5], k=3)
        0.6666666666666666
    """
    reference = np.asarray(reference_top_ids)[:k]
    if len(reference) == 0:
        return 1.0
    found = np.isin(reference, np.asarray(ranked_ids)[:k])
    return float(found.sum()) / len(reference)


def cascade_rank(
    filter_scores: npt.ArrayLike | None,
    filter_threshold: float,
    coarse_scores: npt.ArrayLike,
    fine_scores: npt.ArrayLike,
    n: int,
    k: int = K,
) -> IntArray:
    """Top-``k`` candidate indices after filter → coarse top-``n`` → fine rerank, best first.

    Candidates with ``filter_scores >= filter_threshold`` survive the filter (all do when
    ``filter_scores`` is None), and never fewer than ``k`` of them (the filter's best), as
    at serving time; the coarse scores pick ``n`` of the survivors; the fine scores order
    those and the first ``k`` are returned, so the result has ``min(k, n, candidates)``
    entries, sorted by fine score.

    Example::

        >>> cascade_rank(None, 0.0, [3, 2, 1, 0], [0, 1, 2, 3], n=2, k=1).tolist()
        [1]
    """
    coarse = np.asarray(coarse_scores, dtype=np.float64)
    fine = np.asarray(fine_scores, dtype=np.float64)
    if coarse.shape != fine.shape or coarse.ndim != 1:
        raise InputError(
            f"coarse scores {list(coarse.shape)} and fine scores {list(fine.shape)} "
            "must be 1-d and of equal length"
        )
    survivors = None
    if filter_scores is not None:
        kept = np.asarray(filter_scores, dtype=np.float64)
        if kept.shape != coarse.shape:
            raise InputError(
                f"filter scores {list(kept.shape)} do not match coarse {list(coarse.shape)}"
            )
        survivors = filter_survivors(kept, filter_threshold, k)
    shortlist = top_k(coarse, n, among=survivors)
    return top_k(fine, k, among=np.sort(shortlist))


def filter_survivors(filter_scores: npt.ArrayLike, threshold: float, k: int) -> IntArray:
    """Indices passing the filter, sorted: those scoring ``>= threshold``, and at least the
    filter's best ``k`` (the served :class:`~cascade.ranking.Ranker` does the same)."""
    scores = np.asarray(filter_scores, dtype=np.float64)
    keep = scores >= threshold
    if int(keep.sum()) < min(k, len(scores)):
        keep[top_k(scores, k)] = True
    return np.flatnonzero(keep).astype(np.int64)


def _score_all(scorer: Scorer, queries: Sequence[Query]) -> list[npt.NDArray[np.float64]]:
    """Score every query's rows in large batches; one score array per query."""
    rows = np.concatenate([q.features for q in queries])
    scores = np.concatenate(
        [
            np.asarray(scorer(rows[i : i + _SCORE_CHUNK]), dtype=np.float64).reshape(-1)
            for i in range(0, len(rows), _SCORE_CHUNK)
        ]
    )
    if len(scores) != len(rows):
        raise InputError(f"a scorer returned {len(scores)} scores for {len(rows)} rows")
    bounds = np.cumsum([0, *(len(q.features) for q in queries)])
    return [scores[bounds[i] : bounds[i + 1]] for i in range(len(queries))]


def evaluate_cascade(
    queries: Sequence[Query],
    models: CascadeModels,
    n_values: Sequence[int],
) -> list[CascadeResult]:
    """NDCG@10, recall@10 vs fine-only and relative cost of the cascade for each shortlist size.

    Rows: ``coarse-only`` (coarse over all candidates), ``fine-only`` (fine over all),
    and ``cascade N=n`` for each ``n``. Queries without a relevant item are skipped.
    Cost is summed over queries and divided by fine-only's::

        (filter_cost * all + coarse_cost * survivors + fine_cost * min(n, survivors))
        / (fine_cost * all)

    Example::

        results = evaluate_cascade(queries, open_cascade("models/movielens"), [50, 100, 200])
        print(format_results(results))
    """
    kept = [q for q in queries if np.any(_gains(q.relevance) > 0)]
    if not kept:
        raise InputError(f"none of the {len(queries)} queries has a relevant item")
    coarse_all = _score_all(models.coarse.score, kept)
    fine_all = _score_all(models.fine.score, kept)
    filter_all = _score_all(models.filter.score, kept) if models.filter is not None else None

    rows: list[tuple[str, int | None]] = [("coarse-only", None), ("fine-only", None)]
    rows += [(f"cascade N={n}", int(n)) for n in n_values]
    ndcg = np.zeros((len(rows), len(kept)))
    recall = np.zeros((len(rows), len(kept)))
    cost = np.zeros(len(rows))
    for q, query in enumerate(kept):
        fine, coarse = fine_all[q], coarse_all[q]
        size = len(fine)
        survivors = (
            filter_survivors(filter_all[q], models.filter_threshold, K)
            if filter_all is not None and models.filter is not None
            else np.arange(size, dtype=np.int64)
        )
        front = models.coarse.cost_us * len(survivors)
        if models.filter is not None:
            front += models.filter.cost_us * size
        # Coarse order of the survivors, computed once and cut at each n.
        ranked_survivors = top_k(coarse, size, among=survivors)
        reference = top_k(fine, K)
        tops = [top_k(coarse, K), reference]
        cost[:2] += np.array([models.coarse.cost_us, models.fine.cost_us]) * size
        for i, (_, n) in enumerate(rows[2:], start=2):
            shortlist = np.sort(ranked_survivors[:n])
            tops.append(top_k(fine, K, among=shortlist))
            cost[i] += front + models.fine.cost_us * len(shortlist)
        for i, top in enumerate(tops):
            ndcg[i, q] = ndcg_of_ranking(top, query.relevance, k=K)
            recall[i, q] = recall_at_k_vs_reference(top, reference, k=K)

    mean_ndcg = ndcg.mean(axis=1)
    fine_ndcg, fine_cost = float(mean_ndcg[1]), float(cost[1])
    return [
        CascadeResult(
            name=name,
            n=n,
            ndcg_at_10=float(mean_ndcg[i]),
            relative_ndcg=float(mean_ndcg[i]) / fine_ndcg if fine_ndcg > 0 else float("nan"),
            recall_at_10=float(recall[i].mean()),
            relative_cost=float(cost[i]) / fine_cost if fine_cost > 0 else float("nan"),
            n_queries=len(kept),
            ndcg_per_query=ndcg[i],
            reference_ndcg=ndcg[1],
        )
        for i, (name, n) in enumerate(rows)
    ]


def format_results(results: Sequence[CascadeResult]) -> str:
    """A plain-text table of :func:`evaluate_cascade`'s rows."""
    from cascade._table import table

    header = ["name", "NDCG@10", "rel NDCG", "recall@10 vs fine", "rel cost"]
    rows = [
        [
            r.name,
            f"{r.ndcg_at_10:.4f}",
            f"{r.relative_ndcg:.3f}",
            f"{r.recall_at_10:.3f}",
            f"{r.relative_cost:.3f}",
        ]
        for r in results
    ]
    return table(header, rows)
