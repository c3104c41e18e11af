"""The live audit's logic: what a server concludes about the cascade on live traffic.

Pure (no asyncio, no Ray, nothing of the workshop), so that both runtimes' serving code
and calibration share it:

- :func:`loss_bound`, :func:`clopper_pearson_upper`: the upper confidence bounds
  ``cascade calibrate`` certifies a policy with, from counts, without scipy;
- :class:`LiveStats`: sliding windows of served and audited rows, and the live relative
  accuracy (agreement with the top tier) with its lower bound, relative cost, escalation,
  drift;
- :class:`Sampler`: which answered rows go to the top tier (rate, gears, sheds, a token
  bucket); :class:`Alarms`: raised and cleared, once each;
- :func:`reference_from`, :class:`DriftWindow`, :func:`psi`: the drift score of the first
  tier's confidence against the calibration split's.

Example::

    from cascade.audit import AuditLimits, LiveStats, Sampler

    stats = LiveStats(AuditLimits(top="large", costs=costs, sample_rate=0.05,
                                  max_rows_per_s=50), clock=time.monotonic)
"""

from __future__ import annotations

from cascade.audit._bounds import MIN_EVENTS, clopper_pearson_upper, loss_bound
from cascade.audit._drift import SHARE_FLOOR, DriftReference, DriftWindow, psi, reference_from
from cascade.audit._live import (
    ALARM_KINDS,
    AlarmChange,
    Alarms,
    AuditLimits,
    LiveStats,
    Sampler,
)

__all__ = [
    "ALARM_KINDS",
    "MIN_EVENTS",
    "SHARE_FLOOR",
    "AlarmChange",
    "Alarms",
    "AuditLimits",
    "DriftReference",
    "DriftWindow",
    "LiveStats",
    "Sampler",
    "clopper_pearson_upper",
    "loss_bound",
    "psi",
    "reference_from",
]
