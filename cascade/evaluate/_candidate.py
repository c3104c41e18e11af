"""One candidate setting of a policy's thresholds (or bands), as calibration scores it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Candidate"]


@dataclass
class Candidate:
    """A setting and what it did on the calibration split: which rows it got right, its mean
    relative cost per row, the share of rows it escalated and (where known) the share of rows
    reaching each tier."""

    params: dict[str, Any]
    correct: np.ndarray
    cost: float
    escalation: float
    reach: dict[str, float] = field(default_factory=dict)
