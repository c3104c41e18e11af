"""Fitting a calibration of a tier's confidence (temperature scaling, isotonic knots).

The workshop half of calibration: :mod:`cascade.routing` applies what is fitted here, with
numpy alone; fitting needs scipy and scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_ISOTONIC_KNOTS", "fit_isotonic", "fit_temperature"]

MAX_ISOTONIC_KNOTS = 64
"""Most knots ``fit_isotonic`` returns, so that a calibration stays readable in a policy file."""

EPS = 1e-12


def fit_temperature(probabilities: np.ndarray, y: np.ndarray | Sequence[int]) -> float:
    """Return the temperature T minimising the log loss of ``softmax(log(p) / T)`` on labels ``y``.

    T > 1 softens an overconfident model, T < 1 sharpens an underconfident one. The search is
    bounded to T in [e^-3, e^3].

    Example::

        T = fit_temperature(tiny.predict_sync(X_val), y_val)
        Calibration(method="temperature", temperature=T)
    """
    from scipy.optimize import minimize_scalar

    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must have shape (n, n_classes), got {list(p.shape)}")
    labels = np.asarray(y)
    if labels.shape != (p.shape[0],) or p.shape[0] == 0:
        raise ValueError(
            f"need one label per row: {p.shape[0]} rows, labels of shape {list(labels.shape)}"
        )
    if labels.min() < 0 or labels.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in [0, {p.shape[1] - 1}] for {p.shape[1]} classes")
    log_p = np.log(np.clip(p, 0.0, None) + EPS)
    rows = np.arange(p.shape[0])

    def nll(log_t: float) -> float:
        z = log_p / math.exp(log_t)
        z_max = z.max(axis=1)
        log_norm = z_max + np.log(np.exp(z - z_max[:, None]).sum(axis=1))
        return float(np.mean(log_norm - z[rows, labels]))

    result = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


def fit_isotonic(
    confidences: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[bool]
) -> tuple[list[float], list[float]]:
    """Fit a monotone map from raw confidence to the chance of being right.

    Returns knots ``(x, y)`` for an isotonic ``Calibration``: at least 2 and at most
    ``MAX_ISOTONIC_KNOTS``, x ascending and y non-decreasing, both in [0, 1].

    Example::

        x, y = fit_isotonic(confidence(p_val, "max_prob"), p_val.argmax(1) == y_val)
        Calibration(method="isotonic", x=x, y=y)
    """
    from sklearn.isotonic import IsotonicRegression

    conf = np.clip(np.asarray(confidences, dtype=np.float64), 0.0, 1.0)
    hits = np.asarray(correct, dtype=np.float64)
    if conf.ndim != 1 or conf.shape != hits.shape or conf.size == 0:
        raise ValueError(
            f"need one correctness flag per confidence: shapes {list(conf.shape)} and "
            f"{list(hits.shape)}"
        )
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(conf, hits)
    x = np.asarray(model.X_thresholds_, dtype=np.float64)
    y = np.asarray(model.y_thresholds_, dtype=np.float64)
    if x.size > MAX_ISOTONIC_KNOTS:
        # keeping a subset of the knots of a monotone map keeps it monotone
        keep = np.unique(np.linspace(0, x.size - 1, MAX_ISOTONIC_KNOTS).round().astype(int))
        x, y = x[keep], y[keep]
    if x.size < 2:
        level = float(y[0]) if y.size else float(hits.mean())
        return [0.0, 1.0], [level, level]
    y = np.maximum.accumulate(np.clip(y, 0.0, 1.0))
    return [float(v) for v in x], [float(v) for v in y]
