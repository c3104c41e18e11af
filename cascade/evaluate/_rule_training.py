"""Training a learned deferral rule: a classifier of "this tier's answer is wrong" over the
deferral features of :func:`cascade.routing.deferral_features`, exported to ONNX (issue 19).

Apart from the certification in ``_deferral`` (which needs calibration's search) so that
calibration itself can train rules without an import circle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["train_deferral"]


def train_deferral(
    features: np.ndarray,
    cheap_wrong: np.ndarray,
    path: Path,
    *,
    kind: str = "logistic",
    seed: int = 0,
) -> Path:
    """Fit a classifier of "the cheap tier is wrong" on deferral features; export it to ONNX.

    ``kind``: ``logistic`` (standardised logistic regression) or ``boosting`` (a small
    histogram gradient-boosting model). The ONNX graph's probability of class 1 is the score.
    Its fidelity to scikit-learn is checked before the file is written; never a pickle.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cascade.zoo.export import check_fidelity, onnx_probabilities, sklearn_to_onnx

    labels = np.asarray(cheap_wrong, dtype=np.int64)
    if labels.min() == labels.max():
        raise ValueError("cannot train a deferral rule: the cheap tier is always or never wrong")
    model: object
    if kind == "logistic":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    elif kind == "boosting":
        model = HistGradientBoostingClassifier(
            max_iter=100, max_leaf_nodes=15, learning_rate=0.1, random_state=seed
        )
    else:
        raise ValueError(f"unknown deferral model {kind!r} (allowed: logistic, boosting)")
    model.fit(features, labels)  # type: ignore[attr-defined]
    graph = sklearn_to_onnx(
        model, n_features=features.shape[1], metadata={"tier": "deferral-scorer"}
    )
    check_fidelity(
        onnx_probabilities(graph, features),
        model.predict_proba(features),  # type: ignore[attr-defined]
        what=str(path),
    )
    path.write_bytes(graph.SerializeToString())
    return path
