"""One-sided upper confidence bounds on a loss rate, shared by calibration and the live audit.

Calibration bounds the mean of per-row ``d`` in {-1, 0, 1} (accuracy lost against the top
tier, see ``cascade.evaluate``); the live audit bounds the rate of audited rows that
disagree with the top tier (``d`` in {0, 1}). Both are the same bound, computed here from
counts alone, so that a serving process (which may not load scipy) certifies live traffic
exactly as ``cascade calibrate`` certified the calibration split:

- with at least :data:`MIN_EVENTS` non-zero rows, the normal (CLT) bound on the mean with
  the sample standard deviation;
- with fewer, the exact one-sided Clopper–Pearson bound on the rate of loss rows alone
  (gains ignored: conservative), computed by bisection on the binomial CDF in log space.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["MIN_EVENTS", "clopper_pearson_upper", "loss_bound"]

MIN_EVENTS = 10
"""Fewer non-zero rows than this and the CLT is not trusted: Clopper–Pearson instead."""


def _log_binomial_cdf(k: int, n: int, p: float) -> float:
    """``log P(Binomial(n, p) <= k)`` for ``0 <= k < n`` and ``0 < p < 1``."""
    log_p, log_q = math.log(p), math.log1p(-p)
    lg_n = math.lgamma(n + 1)
    terms = [
        lg_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return top + math.log(math.fsum(math.exp(t - top) for t in terms))


def clopper_pearson_upper(events: int, n: int, *, confidence: float) -> float:
    """The exact one-sided ``confidence`` upper bound on a rate seen ``events`` times in
    ``n`` trials: the ``p`` at which ``P(Binomial(n, p) <= events) = 1 - confidence``
    (scipy's ``beta.ppf(confidence, events + 1, n - events)``).

    Example::

        >>> round(clopper_pearson_upper(0, 1000, confidence=0.95), 6)
        0.002991
        >>> clopper_pearson_upper(5, 5, confidence=0.95)
        1.0
    """
    if n <= 0:
        return 1.0
    if not 0 <= events <= n:
        raise ValueError(f"events must lie in [0, n={n}], got {events}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if events == n:
        return 1.0
    alpha = 1.0 - confidence
    if events == 0:  # closed form: (1 - p)^n = alpha
        return -math.expm1(math.log(alpha) / n)
    target = math.log(alpha)
    low, high = 0.0, 1.0  # the CDF falls from 1 at p = 0 to 0 at p = 1
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        if _log_binomial_cdf(events, n, mid) > target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def loss_bound(losses: int, gains: int, n: int, *, confidence: float) -> float:
    """One-sided ``confidence`` upper bound on ``E[d]`` over ``n`` rows of ``d`` in
    {-1, 0, 1}, of which ``losses`` are 1 and ``gains`` are -1 (``gains=0``: a plain rate).

    Example::

        >>> round(loss_bound(0, 0, 1000, confidence=0.95), 4)
        0.003
        >>> round(loss_bound(30, 20, 1000, confidence=0.95), 4)
        0.0216
    """
    if n <= 0:
        return math.inf
    if losses + gains < MIN_EVENTS:
        return clopper_pearson_upper(losses, n, confidence=confidence)
    mean = (losses - gains) / n
    # sample variance (ddof=1) of n values of which `losses` are 1 and `gains` are -1
    variance = max(0.0, (losses + gains - n * mean * mean) / (n - 1)) if n > 1 else 0.0
    z = NormalDist().inv_cdf(confidence)
    return mean + z * math.sqrt(variance) / math.sqrt(n)
