"""Complexity routing: train the "cheap tier will be wrong" scorer and search its bands."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from cascade.backends import OnnxModel
from cascade.errors import PolicyError
from cascade.evaluate._candidate import Candidate
from cascade.evaluate._replay import Evaluator
from cascade.policy import ComplexityRouting, PolicyFile

__all__ = ["complexity_search", "train_scorer"]

_GRID_2 = 60
_GRID_3 = 24


def train_scorer(X: np.ndarray, cheap_wrong: np.ndarray, path: Path, *, seed: int = 0) -> Path:
    """Fit a small gradient-boosting classifier of ``cheap_wrong`` and export it to ONNX.

    Its probability of class 1 is the score: the chance that the cheapest tier errs.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    from cascade.zoo.export import check_fidelity, onnx_probabilities, sklearn_to_onnx

    if cheap_wrong.all() or not cheap_wrong.any():
        raise PolicyError(
            "cannot train a complexity scorer: the cheapest tier is "
            + ("always wrong" if cheap_wrong.all() else "never wrong")
            + " on the calibration rows"
        )
    model = HistGradientBoostingClassifier(
        max_iter=100, max_leaf_nodes=15, learning_rate=0.1, random_state=seed
    ).fit(X, cheap_wrong.astype(np.int64))
    graph = sklearn_to_onnx(model, n_features=X.shape[1], metadata={"tier": "complexity-scorer"})
    check_fidelity(onnx_probabilities(graph, X), model.predict_proba(X), what=str(path))
    path.write_bytes(graph.SerializeToString())
    return path


def complexity_search(
    evaluator: Evaluator,
    loaded: PolicyFile,
    routing: ComplexityRouting,
    X: np.ndarray,
    y: np.ndarray,
    *,
    reference_correct: np.ndarray,
) -> tuple[list[Any], np.ndarray, Path]:
    """Train the scorer on half A of (X, y), score band settings on half B.

    Returns the candidates, the reference (always-large) correctness on half B, and the
    scorer's path (beside the cheapest tier's model file).
    """

    tiers = [band.tier for band in routing.bands]
    cheap = tiers[0]
    order = np.random.default_rng(0).permutation(len(y))
    half_a, half_b = np.sort(order[: len(y) // 2]), np.sort(order[len(y) // 2 :])
    cheap_wrong = evaluator.probabilities(cheap, X[half_a]).argmax(axis=1) != y[half_a]
    path = evaluator.tiers[cheap].path.with_name(f"{loaded.policy.name}.complexity.onnx")
    train_scorer(X[half_a], cheap_wrong, path)

    scores = OnnxModel(path).predict_sync(X[half_b])[:, 1].astype(np.float64)
    scorer_cost = evaluator.model_cost(path)
    correct = {t: evaluator.probabilities(t, X[half_b]).argmax(axis=1) == y[half_b] for t in tiers}
    costs = np.array([evaluator.costs[t] for t in tiers])
    cuts_needed = len(tiers) - 1
    quantiles = np.unique(np.quantile(scores, np.linspace(0, 1, _GRID_2 if cuts_needed == 1
                                                           else _GRID_3)))  # fmt: skip
    grid = np.unique(np.r_[0.0, quantiles, 1.0])
    candidates = []
    for cuts in itertools.combinations(grid, cuts_needed):
        band = np.searchsorted(np.asarray(cuts), scores, side="right")
        row_correct = np.zeros(len(scores), dtype=bool)
        for index, tier in enumerate(tiers):
            mask = band == index
            row_correct[mask] = correct[tier][mask]
        candidates.append(
            Candidate(
                {f"band{i}": float(c) for i, c in enumerate(cuts)},
                row_correct,
                float(scorer_cost + costs[band].mean()),
                float((band > 0).mean()),
            )
        )
    return candidates, reference_correct[half_b], path
