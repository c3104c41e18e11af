"""Degradation gears: under load, cap the tiers and escalate fewer rows (CascadeServe's gear plan).

A gear plan is a list of gears ordered by the load level at which each engages. The load is
any non-negative number that rises with pressure (say, the share of capacity in use); the
gears' ``above`` levels are in the same unit. ``shift_gear`` is a pure function of the gears,
the current ``GearState``, the load and the time: it shifts up at once when the load demands
it, and down one gear at a time once the load has stayed clearly below the current gear for
a while, so a load hovering around a boundary does not make it flap.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Gear", "GearShifter", "GearState", "check_gears", "shift_gear"]


@dataclass(frozen=True)
class Gear:
    """One gear: from load ``above`` on, route no higher than ``max_tier``, escalate less.

    ``max_tier`` None leaves the tiers uncapped; ``threshold_shift`` is subtracted from the
    confidence thresholds in this gear, so fewer rows escalate. The first gear of a plan has
    ``above == 0``.

    Example::

        plan = [
            Gear("normal", above=0.0, max_tier=None),
            Gear("busy", above=0.7, max_tier="large", threshold_shift=0.05),
            Gear("brownout", above=0.9, max_tier="small", threshold_shift=0.15),
        ]
    """

    name: str
    above: float
    max_tier: str | None = None
    threshold_shift: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("gear name must be a non-empty string, got ''")
        if not (math.isfinite(self.above) and self.above >= 0):
            raise ValueError(f"gear '{self.name}': above must be finite and >= 0, got {self.above}")
        if not (math.isfinite(self.threshold_shift) and self.threshold_shift >= 0):
            raise ValueError(
                f"gear '{self.name}': threshold_shift must be finite and >= 0, "
                f"got {self.threshold_shift}"
            )
        if self.max_tier == "":
            raise ValueError(f"gear '{self.name}': max_tier must be a tier name or None, got ''")


@dataclass(frozen=True)
class GearState:
    """Where a gear plan stands: the engaged gear's ``index``, and since when it is calm.

    ``calm_since`` is the time the load first fell below the current gear's hysteresis band
    and has stayed there since; None while it has not.

    Example::

        state = GearState(index=0, calm_since=None)
    """

    index: int
    calm_since: float | None = None


def check_gears(gears: Sequence[Gear]) -> None:
    """Raise ``ValueError`` unless ``gears`` is a usable plan.

    A plan is non-empty, starts with a gear at ``above == 0``, has strictly increasing
    ``above`` levels and unique names.

    Example::

        check_gears([Gear("normal", 0.0, None), Gear("busy", 0.8, "small")])
    """
    if not gears:
        raise ValueError("a gear plan needs at least one gear, got none")
    first = gears[0]
    if first.above != 0:
        raise ValueError(f"the first gear ('{first.name}') must have above == 0, got {first.above}")
    for lower, upper in itertools.pairwise(gears):
        if not upper.above > lower.above:
            raise ValueError(
                "gears must be sorted by strictly increasing above: "
                f"'{upper.name}' ({upper.above}) follows '{lower.name}' ({lower.above})"
            )
    names = [gear.name for gear in gears]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"gear names must be unique, got {duplicates} more than once")


def _check_options(hysteresis: float, hold_s: float) -> None:
    if not 0.0 <= hysteresis < 1.0:
        raise ValueError(f"hysteresis must lie in [0, 1), got {hysteresis}")
    if not (math.isfinite(hold_s) and hold_s >= 0):
        raise ValueError(f"hold_s must be finite and >= 0, got {hold_s}")


def shift_gear(
    gears: Sequence[Gear],
    state: GearState,
    load: float,
    now: float,
    *,
    hysteresis: float = 0.2,
    hold_s: float = 2.0,
) -> GearState:
    """The gear state after observing ``load`` at time ``now`` (seconds).

    Shifts up at once to the highest gear whose ``above <= load``, skipping gears if need
    be. Shifts down one gear only after the load has stayed below
    ``gears[index].above * (1 - hysteresis)`` for ``hold_s`` seconds; a load at or above
    that level restarts the wait. After a down-shift the next one waits ``hold_s`` again.

    Example::

        state = GearState(0)
        state = shift_gear(plan, state, load=0.95, now=10.0)  # index 2 at once
        state = shift_gear(plan, state, load=0.1, now=10.5)  # calm since 10.5, still 2
        state = shift_gear(plan, state, load=0.1, now=12.5)  # index 1
    """
    check_gears(gears)
    _check_options(hysteresis, hold_s)
    if not 0 <= state.index < len(gears):
        raise ValueError(f"state.index ({state.index}) is out of range for {len(gears)} gears")
    if math.isnan(load):
        raise ValueError("load must be a number, got nan")
    wanted = max(0, bisect.bisect_right([gear.above for gear in gears], load) - 1)
    if wanted > state.index:
        return GearState(wanted, None)
    if state.index == 0:
        return GearState(0, None)
    if load >= gears[state.index].above * (1.0 - hysteresis):
        return GearState(state.index, None)
    calm_since = now if state.calm_since is None else state.calm_since
    if now - calm_since < hold_s:
        return GearState(state.index, calm_since)
    lower = state.index - 1
    # The hold for the next gear down starts now, so each step down waits hold_s afresh.
    calm = lower > 0 and load < gears[lower].above * (1.0 - hysteresis)
    return GearState(lower, now if calm else None)


class GearShifter:
    """Keeps a gear plan's state over time; ``update`` feeds it the load of the moment.

    A thin stateful wrapper around ``shift_gear`` with the clock injected; ``history`` keeps
    the latest ``max_history`` switches as ``(time, gear name)``.

    Example::

        shifter = GearShifter(plan, hysteresis=0.2, hold_s=2.0)
        gear = shifter.update(load=len(pending) / capacity)
        max_tier, shift = gear.max_tier, gear.threshold_shift
    """

    def __init__(
        self,
        gears: Sequence[Gear],
        *,
        hysteresis: float = 0.2,
        hold_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_history: int = 256,
    ) -> None:
        check_gears(gears)
        _check_options(hysteresis, hold_s)
        if max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {max_history}")
        self._gears = tuple(gears)
        self._hysteresis = hysteresis
        self._hold_s = hold_s
        self._clock = clock
        self._state = GearState(0, None)
        self._history: deque[tuple[float, str]] = deque(maxlen=max_history)

    @property
    def gears(self) -> tuple[Gear, ...]:
        """The plan, lowest gear first."""
        return self._gears

    @property
    def gear(self) -> Gear:
        """The engaged gear."""
        return self._gears[self._state.index]

    @property
    def state(self) -> GearState:
        """The engaged gear's index and since when the load has been calm."""
        return self._state

    @property
    def history(self) -> tuple[tuple[float, str], ...]:
        """The latest switches as ``(time, name of the gear engaged)``, oldest first."""
        return tuple(self._history)

    def update(self, load: float) -> Gear:
        """Observe ``load`` now and return the gear engaged after it."""
        now = self._clock()
        state = shift_gear(
            self._gears,
            self._state,
            load,
            now,
            hysteresis=self._hysteresis,
            hold_s=self._hold_s,
        )
        if state.index != self._state.index:
            self._history.append((now, self._gears[state.index].name))
        self._state = state
        return self.gear
