"""Ranking cascades, the workshop half: data, features, ONNX scorers and evaluation.

The run-time half (the :class:`~cascade.routing.Ranker`) is in :mod:`cascade.routing`.

A ranking cascade scores one query's candidates in stages: a cheap *filter* drops obvious
negatives, a *coarse* scorer keeps the best ``N`` survivors, a *fine* scorer orders those and
the top ``k`` are returned. Every stage is an ONNX graph with the same interface (``input``
``float32 [None, n_features]`` → ``score`` ``float32 [None, 1]``, higher = better), so each
stage is handed the same candidate matrix.

Two data sets:

- MovieLens small (read from a path; its licence forbids bundling): per-user time split,
  ~9,000 candidates per user, 14 features (:data:`MOVIELENS_FEATURES`);
- LightGBM's learning-to-rank sample (bundled, MIT): 300 features, graded relevance.

Example::

    from cascade.ranking import build_movielens, evaluate_cascade, format_results
    from cascade.ranking import open_cascade, movielens_queries

    build_movielens("../shared/data/movielens_small", "models/movielens")
    queries = movielens_queries("../shared/data/movielens_small")
    results = evaluate_cascade(queries, open_cascade("models/movielens"), [100, 200, 400])
    print(format_results(results))
"""

from __future__ import annotations

from cascade.ranking.export import LinearScorer, RankingBuild, onnx_scores, open_cascade
from cascade.ranking.features import FEATURE_NAMES as MOVIELENS_FEATURES
from cascade.ranking.ltr import LtrSplit, build_ltr, ltr_queries, read_ltr
from cascade.ranking.metrics import (
    CascadeModels,
    CascadeResult,
    Query,
    Stage,
    cascade_rank,
    evaluate_cascade,
    filter_survivors,
    format_results,
    ndcg_at_k,
    ndcg_of_ranking,
    recall_at_k_vs_reference,
    top_k,
)
from cascade.ranking.movielens import (
    MovieLens,
    build_movielens,
    movielens_queries,
    read_movielens,
    split_by_time,
    training_examples,
)

__all__ = [
    "MOVIELENS_FEATURES",
    "CascadeModels",
    "CascadeResult",
    "LinearScorer",
    "LtrSplit",
    "MovieLens",
    "Query",
    "RankingBuild",
    "Stage",
    "build_ltr",
    "build_movielens",
    "cascade_rank",
    "evaluate_cascade",
    "filter_survivors",
    "format_results",
    "ltr_queries",
    "movielens_queries",
    "ndcg_at_k",
    "ndcg_of_ranking",
    "onnx_scores",
    "open_cascade",
    "read_ltr",
    "read_movielens",
    "recall_at_k_vs_reference",
    "split_by_time",
    "top_k",
    "training_examples",
]
