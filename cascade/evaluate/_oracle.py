"""The label-aware oracle of a two-tier step: the floor under any router's cost (issue 19).

The **oracle** knows the labels: it escalates only rows the expensive tier fixes (cheap
wrong, expensive right), and only as many as an accuracy level needs. No router can escalate
fewer rows and reach that accuracy, so its cost is the floor; ``share of the oracle's
saving`` = (1 − cost) / (1 − oracle cost) at the same accuracy says how much of the possible
saving a router captures (1: all of it; 0: none, as always-expensive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Oracle", "oracle", "oracle_curve", "oracle_share"]


@dataclass(frozen=True)
class Oracle:
    """What the label-aware oracle does on some rows: ``escalated`` of ``n`` rows go to the
    expensive tier, out of ``fixable`` (cheap wrong, expensive right). Escalating every
    fixable row reaches always-expensive's accuracy or more, so any target up to 1 is met."""

    n: int
    escalated: int
    fixable: int

    @property
    def escalation(self) -> float:
        return self.escalated / self.n if self.n else 0.0

    def relative_cost(self, cheap_cost: float, expensive_cost: float) -> float:
        """Cost per row relative to always-expensive: every row runs the cheap tier."""
        return (cheap_cost + self.escalation * expensive_cost) / expensive_cost


def oracle(
    cheap_correct: np.ndarray, expensive_correct: np.ndarray, *, relative_accuracy: float
) -> Oracle:
    """The fewest escalations of fixable rows that reach ``relative_accuracy`` of always-expensive.

    Example::

        >>> o = oracle(np.array([1, 0, 0, 1, 0], bool), np.array([1, 1, 0, 1, 0], bool),
        ...            relative_accuracy=1.0)
        >>> o.escalated, o.fixable
        (1, 1)
    """
    cheap = np.asarray(cheap_correct, dtype=bool)
    expensive = np.asarray(expensive_correct, dtype=bool)
    if cheap.shape != expensive.shape or cheap.ndim != 1:
        raise ValueError(f"need two equal 1-d arrays, got {cheap.shape} and {expensive.shape}")
    fixable = int(np.count_nonzero(expensive & ~cheap))
    # cheap_right + k >= r * expensive_right, in whole rows (a tiny tolerance keeps an exact
    # product such as 0.995 * 200 from rounding up to one row too many)
    need = max(0, math.ceil(relative_accuracy * int(expensive.sum()) - int(cheap.sum()) - 1e-9))
    return Oracle(len(cheap), min(need, fixable), fixable)


def oracle_curve(
    cheap_correct: np.ndarray,
    expensive_correct: np.ndarray,
    *,
    cheap_cost: float,
    expensive_cost: float,
) -> list[tuple[float, float]]:
    """The oracle's (relative cost, relative accuracy) from escalating nothing to escalating
    every fixable row: a straight line, each fixed row buying the same accuracy at the same
    cost. Relative to always-expensive; empty when the expensive tier is never right.

    Example::

        >>> oracle_curve(np.array([1, 0, 0, 1], bool), np.array([1, 1, 0, 1], bool),
        ...              cheap_cost=0.1, expensive_cost=1.0)
        [(0.1, 0.6666666666666666), (0.35, 1.0)]
    """
    cheap = np.asarray(cheap_correct, dtype=bool)
    expensive = np.asarray(expensive_correct, dtype=bool)
    right = int(expensive.sum())
    if right == 0 or len(cheap) == 0:
        return []
    fixable = int(np.count_nonzero(expensive & ~cheap))
    base = int(cheap.sum())
    start = Oracle(len(cheap), 0, fixable).relative_cost(cheap_cost, expensive_cost)
    end = Oracle(len(cheap), fixable, fixable).relative_cost(cheap_cost, expensive_cost)
    return [(start, base / right), (end, (base + fixable) / right)]


def oracle_share(
    relative_cost: float,
    relative_accuracy: float,
    cheap_correct: np.ndarray,
    expensive_correct: np.ndarray,
    *,
    cheap_cost: float,
    expensive_cost: float,
) -> float | None:
    """(1 − ``relative_cost``) / (1 − the oracle's cost at ``relative_accuracy``): the share of
    the possible saving at that accuracy a router captures. ``None`` where it means nothing:
    an accuracy outside what the oracle's escalation spans (below the cheap tier's own, or
    above what escalating every fixable row reaches), or an oracle that saves nothing.

    Example::

        >>> ok_cheap, ok_large = np.array([1, 0, 0, 1], bool), np.array([1, 1, 0, 1], bool)
        >>> oracle_share(0.6, 1.0, ok_cheap, ok_large, cheap_cost=0.1, expensive_cost=1.0)
        0.6153846153846154
    """
    cheap = np.asarray(cheap_correct, dtype=bool)
    expensive = np.asarray(expensive_correct, dtype=bool)
    right = int(expensive.sum())
    if right == 0:
        return None
    base = int(cheap.sum())
    reachable = (base + int(np.count_nonzero(expensive & ~cheap))) / right
    if not base / right - 1e-12 <= relative_accuracy <= reachable + 1e-12:
        return None
    floor = oracle(cheap, expensive, relative_accuracy=relative_accuracy)
    floor_cost = floor.relative_cost(cheap_cost, expensive_cost)
    if floor_cost >= 1.0:
        return None
    return (1.0 - relative_cost) / (1.0 - floor_cost)
