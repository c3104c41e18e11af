"""Drift of the first tier's confidence: the population stability index (PSI) of a sliding
window of live rows against the calibration split's distribution.

The reference is the calibration split's confidence (the measure the policy routes on, as
the first tier computes it, calibration applied) cut at ~10 of its own quantiles: the bins
hold ~equal shares of the reference, so every bin weighs alike, and ties (forest vote shares,
probabilities of exactly 1) merge bins instead of making empty ones. ``cascade calibrate``
stores it in the policy's provenance (``provenance.reference``).

PSI = sum over bins of (live - ref) * ln(live / ref), shares floored at
:data:`SHARE_FLOOR`. Its noise on a window of ``n`` rows drawn from the reference itself is
about (bins - 1) / n (a chi-square / n): ~0.01 for 10 bins and 1,000 rows, far below the
customary alarm level of 0.2 (0.1-0.25: "some shift"; above 0.25: "major shift"), which a
real shift of the confidence reaches within a window.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SHARE_FLOOR", "DriftReference", "DriftWindow", "psi", "reference_from"]

SHARE_FLOOR = 1e-4
"""Shares below this count as this in PSI: an empty bin would otherwise weigh infinitely."""


@dataclass(frozen=True)
class DriftReference:
    """A confidence distribution cut into bins: ``edges`` (ascending, the inner cut points;
    a value ``v`` falls in bin ``bisect_right(edges, v)``) and each bin's ``shares``."""

    tier: str
    measure: str
    edges: tuple[float, ...]
    shares: tuple[float, ...]
    rows: int

    def __post_init__(self) -> None:
        if len(self.shares) != len(self.edges) + 1:
            raise ValueError(
                f"drift reference: {len(self.edges)} edges need {len(self.edges) + 1} shares, "
                f"got {len(self.shares)}"
            )
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"drift reference: edges must rise strictly, got {self.edges}")

    def bin(self, value: float) -> int:
        """The bin ``value`` falls in."""
        return bisect.bisect_right(self.edges, value)


def reference_from(
    values: Sequence[float] | np.ndarray, *, tier: str, measure: str, bins: int = 10
) -> DriftReference:
    """The reference of ``values`` (one confidence per calibration row): cut at its
    ``bins`` quantiles, equal ones merged.

    Example::

        >>> ref = reference_from(np.linspace(0, 1, 1001), tier="tiny", measure="max_prob")
        >>> len(ref.shares), round(sum(ref.shares), 6)
        (10, 1.0)
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("drift reference: no values")
    quantiles = np.quantile(x, np.linspace(0, 1, bins + 1)[1:-1])
    # each cut point rounded as it is written to the policy; bins then counted with the
    # rounded edges, so the shares are exactly those a server computes from the file
    edges = [float(e) for e in np.unique(np.round(quantiles, 6))]
    while True:
        counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1)
        empty = np.flatnonzero(counts == 0)
        if not len(empty):
            break
        # a rounded edge past every value (0.9999997 written as 1.0) leaves a bin empty:
        # merge it into its neighbour, or a live row landing there would weigh as a shift
        del edges[min(int(empty[0]), len(edges) - 1)]
    shares = tuple(round(float(c) / x.size, 6) for c in counts)
    return DriftReference(tier, measure, tuple(edges), shares, int(x.size))


def psi(live: Sequence[float], reference: Sequence[float]) -> float:
    """Population stability index of share vectors ``live`` against ``reference``.

    Example::

        >>> psi([0.5, 0.5], [0.5, 0.5])
        0.0
        >>> round(psi([0.9, 0.1], [0.5, 0.5]), 3)
        0.879
    """
    total = 0.0
    for a, b in zip(live, reference, strict=True):
        a, b = max(a, SHARE_FLOOR), max(b, SHARE_FLOOR)
        total += (a - b) * math.log(a / b)
    return total


class DriftWindow:
    """The last ``size`` rows' confidences, binned against ``reference``, and their PSI.

    Adding a batch costs one bisection per row; the score costs one pass over the bins.

    Example::

        window = DriftWindow(reference, size=1000, min_rows=500)
        window.add([0.99, 0.42])
        window.score()     # None until min_rows rows are in
    """

    def __init__(self, reference: DriftReference, *, size: int, min_rows: int) -> None:
        self.reference = reference
        self.size = size
        self.min_rows = min(min_rows, size)
        self._bins: deque[int] = deque()
        self._counts = [0] * len(reference.shares)

    def add(self, confidences: Sequence[float]) -> None:
        """Rows' confidences, oldest first; the oldest leave beyond ``size``."""
        bins, counts, edges = self._bins, self._counts, self.reference.edges
        for value in confidences:
            b = bisect.bisect_right(edges, value)
            bins.append(b)
            counts[b] += 1
        while len(bins) > self.size:
            counts[bins.popleft()] -= 1

    @property
    def rows(self) -> int:
        return len(self._bins)

    def score(self) -> float | None:
        """PSI of the window against the reference; ``None`` below ``min_rows`` rows."""
        n = len(self._bins)
        if n < self.min_rows or n == 0:
            return None
        return psi([c / n for c in self._counts], self.reference.shares)
