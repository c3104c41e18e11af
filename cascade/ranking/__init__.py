"""Ranking cascades, offline half: data, features, ONNX scorers and evaluation.

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
    from cascade.ranking import load_cascade, movielens_queries

    build_movielens("../shared/data/movielens_small", "models/movielens")
    queries = movielens_queries("../shared/data/movielens_small")
    results = evaluate_cascade(queries, load_cascade("models/movielens"), [100, 200, 400])
    print(format_results(results))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cascade.ranking._ranker import Ranker, Ranking, StageTrace
    from cascade.ranking.export import (
        LinearScorer,
        RankingBuild,
        ScorerCard,
        load_cascade,
        onnx_scores,
        read_scorer_cards,
    )
    from cascade.ranking.features import FEATURE_NAMES as MOVIELENS_FEATURES
    from cascade.ranking.ltr import (
        LtrSplit,
        build_ltr,
        load_ltr,
        ltr_queries,
    )
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
        load_movielens,
        movielens_queries,
        split_by_time,
        training_examples,
    )

# Exports load on first use: the run-time side of ranking lives in this package too, and
# must not pull in scikit-learn, pandas or skl2onnx when it is imported for serving.
_LAZY = {
    "CascadeModels": "cascade.ranking.metrics",
    "CascadeResult": "cascade.ranking.metrics",
    "LinearScorer": "cascade.ranking.export",
    "LtrSplit": "cascade.ranking.ltr",
    "MovieLens": "cascade.ranking.movielens",
    "Query": "cascade.ranking.metrics",
    "Ranker": "cascade.ranking._ranker",
    "Ranking": "cascade.ranking._ranker",
    "RankingBuild": "cascade.ranking.export",
    "ScorerCard": "cascade.ranking.export",
    "Stage": "cascade.ranking.metrics",
    "StageTrace": "cascade.ranking._ranker",
    "build_ltr": "cascade.ranking.ltr",
    "build_movielens": "cascade.ranking.movielens",
    "cascade_rank": "cascade.ranking.metrics",
    "evaluate_cascade": "cascade.ranking.metrics",
    "filter_survivors": "cascade.ranking.metrics",
    "format_results": "cascade.ranking.metrics",
    "load_cascade": "cascade.ranking.export",
    "load_ltr": "cascade.ranking.ltr",
    "load_movielens": "cascade.ranking.movielens",
    "ltr_queries": "cascade.ranking.ltr",
    "movielens_queries": "cascade.ranking.movielens",
    "ndcg_at_k": "cascade.ranking.metrics",
    "ndcg_of_ranking": "cascade.ranking.metrics",
    "onnx_scores": "cascade.ranking.export",
    "read_scorer_cards": "cascade.ranking.export",
    "recall_at_k_vs_reference": "cascade.ranking.metrics",
    "split_by_time": "cascade.ranking.movielens",
    "top_k": "cascade.ranking.metrics",
    "training_examples": "cascade.ranking.movielens",
}
_ALIASES = {"MOVIELENS_FEATURES": ("cascade.ranking.features", "FEATURE_NAMES")}

__all__ = [
    "MOVIELENS_FEATURES",
    "CascadeModels",
    "CascadeResult",
    "LinearScorer",
    "LtrSplit",
    "MovieLens",
    "Query",
    "Ranker",
    "Ranking",
    "RankingBuild",
    "ScorerCard",
    "Stage",
    "StageTrace",
    "build_ltr",
    "build_movielens",
    "cascade_rank",
    "evaluate_cascade",
    "filter_survivors",
    "format_results",
    "load_cascade",
    "load_ltr",
    "load_movielens",
    "ltr_queries",
    "movielens_queries",
    "ndcg_at_k",
    "ndcg_of_ranking",
    "onnx_scores",
    "read_scorer_cards",
    "recall_at_k_vs_reference",
    "split_by_time",
    "top_k",
    "training_examples",
]


def __getattr__(name: str) -> Any:
    if name in _ALIASES:
        source, attribute = _ALIASES[name]
        return getattr(importlib.import_module(source), attribute)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cascade.ranking' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
