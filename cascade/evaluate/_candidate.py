"""One candidate setting of a policy's thresholds (or bands), as calibration scores it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Candidate"]


@dataclass
class Candidate:
    """A setting and what it did on the calibration split: which rows it got right, its mean
    relative cost per row and the share of rows it escalated."""

    params: dict[str, Any]
    correct: np.ndarray
    cost: float
    escalation: float
