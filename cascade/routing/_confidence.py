"""Confidence measures over class probabilities, calibration maps, and fitting them.

Every measure lies in [0, 1], higher meaning surer, so one threshold scale serves all::

    max_prob  top probability
    margin    top probability minus the second
    entropy   1 - H(p) / log(n_classes)

Fitting (``fit_temperature``, ``fit_isotonic``) imports scipy / scikit-learn on first use, so
serving processes that only apply calibration never load them.
"""

from __future__ import annotations

import math

import numpy as np

from cascade.policy import Calibration, ConfidenceMeasure

__all__ = ["calibrate", "confidence"]

_EPS = 1e-12
_MEASURES = ("max_prob", "margin", "entropy")


def _as_probabilities(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must have shape (n, n_classes), got {list(p.shape)}")
    return p


def confidence(probabilities: np.ndarray, measure: ConfidenceMeasure) -> np.ndarray:
    """Return each row's confidence in [0, 1] under ``measure``, as float64 of shape ``(n,)``.

    Example::

        confidence(np.array([[0.7, 0.2, 0.1]]), "margin")   # array([0.5])
    """
    p = _as_probabilities(probabilities)
    n, n_classes = p.shape
    if n_classes < 2:  # one class: nothing to doubt
        return np.ones(n)
    if measure == "max_prob":
        value = p.max(axis=1)
    elif measure == "margin":
        top2 = np.partition(p, n_classes - 2, axis=1)[:, -2:]
        value = top2[:, 1] - top2[:, 0]
    elif measure == "entropy":
        q = np.clip(p, 0.0, None)
        # 0 * log 0 is taken as 0; np.where alone would still evaluate log(0) and warn
        terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
        value = 1.0 + terms.sum(axis=1) / math.log(n_classes)
    else:
        raise ValueError(f"unknown confidence measure {measure!r} (allowed: {list(_MEASURES)})")
    clipped: np.ndarray = np.clip(value, 0.0, 1.0)
    return clipped


def _tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(np.clip(probabilities, 0.0, None) + _EPS) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    tempered: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return tempered


def calibrate(
    probabilities: np.ndarray,
    confidences: np.ndarray,
    calibration: Calibration | None,
    measure: ConfidenceMeasure,
) -> np.ndarray:
    """Map raw ``confidences`` (of ``probabilities`` under ``measure``) to calibrated ones.

    ``None`` leaves them as they are; ``temperature`` recomputes the measure on
    ``softmax(log(p) / T)``; ``isotonic`` interpolates the knots (flat beyond the ends).

    Example::

        cal = Calibration(method="temperature", temperature=2.0)
        calibrate(p, confidence(p, "max_prob"), cal, "max_prob")
    """
    if calibration is None:
        return np.asarray(confidences, dtype=np.float64)
    if calibration.method == "temperature":
        assert calibration.temperature is not None  # guaranteed by the policy model
        p = _as_probabilities(probabilities)
        return confidence(_tempered(p, calibration.temperature), measure)
    assert calibration.x is not None and calibration.y is not None
    mapped = np.interp(np.asarray(confidences, dtype=np.float64), calibration.x, calibration.y)
    return np.clip(mapped, 0.0, 1.0)
