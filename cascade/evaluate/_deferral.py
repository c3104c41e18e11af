"""Escalation rules for a two-tier step, measured against the oracle (issue 19).

The **oracle** knows the labels: it escalates only rows the expensive tier fixes (cheap
wrong, expensive right), and only as many as the relative-accuracy target needs. No rule
can escalate fewer rows and meet the target, so its cost is the floor; ``share of the
oracle's saving`` = (1 − cost) / (1 − oracle cost) says how much of the possible saving a
rule captures.

A **rule** is any per-row confidence (higher: keep the cheap answer) — max_prob, margin, a
per-class calibrated max_prob, or ``1 − score`` of a learned deferral model. It is
thresholded exactly as ``cascade calibrate`` thresholds a chain: candidate thresholds
from :func:`threshold_grid`, certified by :func:`select_certified` (fixed-sequence testing of
an upper confidence bound on the accuracy lost against the expensive tier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cascade.evaluate._calibrate import Target, select_certified, threshold_grid
from cascade.evaluate._candidate import Candidate

__all__ = ["Certified", "certified_threshold"]

_GRID = 200


@dataclass(frozen=True)
class Certified:
    """A rule's threshold as certified on calibration rows (``threshold`` None: none was)."""

    threshold: float | None
    bound: float | None
    allowed: float | None
    calibration_escalation: float | None


def certified_threshold(
    keep: np.ndarray,
    cheap_correct: np.ndarray,
    expensive_correct: np.ndarray,
    *,
    target: Target,
    cheap_cost: float,
    expensive_cost: float,
) -> Certified:
    """Certify a threshold on ``keep`` (a row keeps the cheap answer when ``keep >= t``) with
    the margin of ``cascade calibrate``; labels of these rows are used only to test the
    candidates, whose order comes from ``keep`` alone."""
    keep = np.asarray(keep, dtype=np.float64)
    candidates = []
    for t in threshold_grid(keep, _GRID):
        kept = keep >= t
        candidates.append(
            Candidate(
                {"threshold": float(t)},
                np.where(kept, cheap_correct, expensive_correct),
                cheap_cost + float((~kept).mean()) * expensive_cost,
                float((~kept).mean()),
            )
        )
    chosen, bound, allowed, _ = select_certified(candidates, expensive_correct, target)
    if chosen is None:
        return Certified(None, None, allowed, None)
    return Certified(chosen.params["threshold"], bound, allowed, chosen.escalation)
