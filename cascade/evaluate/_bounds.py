"""Statistical margins for calibration: bound the accuracy a cascade loses on unseen data.

A cascade answers some rows with a cheaper tier. Against always-large, each calibration row
contributes ``d = 1`` if large is right and the cascade wrong, ``d = -1`` if the cascade is
right and large wrong, else ``0``. The accuracy lost is ``E[d]``; the relative-accuracy target
``r`` holds when ``E[d] <= (1 - r) * acc_large``. We accept a candidate only when a one-sided
upper confidence bound on ``E[d]`` clears that budget — not merely the calibration mean, which
in our text trials missed the target on test by up to 0.4 points.

The bound is the normal (CLT) bound on a mean of bounded i.i.d. terms with the sample
standard deviation. With fewer than ``MIN_EVENTS`` disagreement rows the CLT is not to be
trusted, so the bound falls back to the exact one-sided Clopper–Pearson bound on the rate of
loss rows alone (gains ignored: conservative), so that a small calibration split is never
certified by a variance it has not seen.
"""

from __future__ import annotations

import numpy as np

from cascade.audit import MIN_EVENTS, loss_bound

__all__ = ["MIN_EVENTS", "loss_upper_bound", "net_loss"]


def net_loss(cascade_correct: np.ndarray, large_correct: np.ndarray) -> np.ndarray:
    """Per-row ``d`` in {-1, 0, 1}: accuracy lost against always-large (see module doc)."""
    return large_correct.astype(np.int8) - cascade_correct.astype(np.int8)


def loss_upper_bound(d: np.ndarray, *, confidence: float) -> float:
    """One-sided ``confidence`` upper bound on ``E[d]`` for rows of ``d`` in {-1, 0, 1}.

    Example::

        >>> round(loss_upper_bound(np.zeros(1000, dtype=np.int8), confidence=0.95), 4)
        0.003
        >>> d = np.r_[np.ones(30), -np.ones(20), np.zeros(950)].astype(np.int8)
        >>> round(loss_upper_bound(d, confidence=0.95), 4)
        0.0216
    """
    # the bound itself lives in cascade.audit, shared with the live audit of a server
    losses, gains = int(np.count_nonzero(d > 0)), int(np.count_nonzero(d < 0))
    return loss_bound(losses, gains, len(d), confidence=confidence)
