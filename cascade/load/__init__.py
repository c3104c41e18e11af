"""Load handling: time-aware admission, circuit breakers, gears, live load signals per tier.

Nothing here sleeps or reads the wall clock behind your back: every class takes a ``clock``
and ``shift_gear`` is a pure function, so the serving layer decides when time passes.

Example::

    from cascade.load import CircuitBreaker, Gear, GearShifter, LoadSignals

    breakers = {tier: CircuitBreaker(tier) for tier in ("tiny", "small", "large")}
    shifter = GearShifter([Gear("normal", 0.0, None), Gear("brownout", 0.9, "small", 0.1)])
    signals = LoadSignals(["tiny", "small", "large"])
"""

from __future__ import annotations

from cascade.load._admission import (
    DEFAULT_PRIORITY,
    HEADROOM,
    Refusal,
    ServiceEstimate,
    ServiceTimer,
    StandingDelay,
    admit,
    behind,
    headroom,
)
from cascade.load._breaker import BreakerState, BreakerStats, CircuitBreaker
from cascade.load._gears import Gear, GearShifter, GearState, check_gears, shift_gear
from cascade.load._signals import LoadSignals, Outcome, TierLoad, TierLoadSnapshot

__all__ = [
    "DEFAULT_PRIORITY",
    "HEADROOM",
    "BreakerState",
    "BreakerStats",
    "CircuitBreaker",
    "Gear",
    "GearShifter",
    "GearState",
    "LoadSignals",
    "Outcome",
    "Refusal",
    "ServiceEstimate",
    "ServiceTimer",
    "StandingDelay",
    "TierLoad",
    "TierLoadSnapshot",
    "admit",
    "behind",
    "check_gears",
    "headroom",
    "shift_gear",
]
