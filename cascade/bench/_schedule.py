"""Open-loop arrival schedules: when each request is sent, as offsets in seconds.

Both schedules are Poisson processes drawn from a seeded numpy generator, so the same
arguments always give the same offsets. A fixed rate has exponential gaps; a ramp's rate
rises (or falls) linearly from ``start_rate`` to ``end_rate`` over the duration. The ramp is
drawn by time change: unit-rate arrivals ``s`` are mapped through the inverse of the
integrated rate ``Λ(t) = r0·t + (r1 − r0)·t² / (2·T)``, which is exact (no thinning loss).

Example::

    >>> offsets = poisson_arrivals(100, duration_s=30, seed=0)
    >>> len(offsets) > 2500, bool(offsets[-1] < 30)
    (True, True)
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["poisson_arrivals", "ramp_arrivals"]


def _check(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def _unit_arrivals(total: float, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Arrival times of a unit-rate Poisson process on ``[0, total)``."""
    chunks: list[npt.NDArray[np.float64]] = []
    last = 0.0
    # Draw the expected count plus a wide margin, then more only in the rare short case.
    size = int(total + 6 * math.sqrt(total) + 16)
    while last < total:
        times = last + np.cumsum(rng.exponential(1.0, size))
        chunks.append(times)
        last = float(times[-1])
    arrivals = np.concatenate(chunks)
    return arrivals[arrivals < total]


def ramp_arrivals(
    start_rate: float,
    end_rate: float,
    *,
    duration_s: float,
    max_requests: int | None = None,
    seed: int = 0,
) -> npt.NDArray[np.float64]:
    """Send offsets (seconds, ascending) of a Poisson process whose rate ramps linearly.

    The rate is ``start_rate`` requests/s at 0 and ``end_rate`` at ``duration_s``; the
    schedule stops at ``duration_s`` or after ``max_requests`` requests, whichever is first.

    Example::

        >>> offsets = ramp_arrivals(50, 400, duration_s=30, seed=0)
        >>> bool((offsets < 15).sum() < (offsets >= 15).sum())
        True
    """
    _check("start_rate", start_rate)
    _check("end_rate", end_rate)
    _check("duration_s", duration_s)
    if max_requests is not None and max_requests < 1:
        raise ValueError(f"max_requests must be >= 1, got {max_requests}")
    rng = np.random.default_rng(seed)
    slope = (end_rate - start_rate) / duration_s
    total = duration_s * (start_rate + end_rate) / 2  # Λ(T), the expected count
    s = _unit_arrivals(total, rng)
    if max_requests is not None:
        s = s[:max_requests]
    # Inverse of Λ: the root of slope/2·t² + r0·t − s = 0, written without the cancellation
    # of (−r0 + √…)/slope; it stays exact for a flat rate (slope 0) and for a falling one.
    root = np.sqrt(np.maximum(start_rate**2 + 2 * slope * s, 0.0))
    offsets: npt.NDArray[np.float64] = 2 * s / (start_rate + root)
    return np.minimum(offsets, np.nextafter(duration_s, 0))


def poisson_arrivals(
    rate: float,
    *,
    duration_s: float,
    max_requests: int | None = None,
    seed: int = 0,
) -> npt.NDArray[np.float64]:
    """Send offsets (seconds, ascending) of Poisson arrivals at ``rate`` requests/s.

    Gaps are exponential with mean ``1 / rate``; the schedule stops at ``duration_s`` or
    after ``max_requests`` requests, whichever is first.

    Example::

        >>> poisson_arrivals(10, duration_s=60, max_requests=5, seed=1).round(3).tolist()
        [0.107, 0.138, 0.676, 0.712, 0.724]
    """
    return ramp_arrivals(rate, rate, duration_s=duration_s, max_requests=max_requests, seed=seed)
