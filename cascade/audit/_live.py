"""What the live audit keeps and concludes: sliding windows of served and audited rows,
the estimates and bounds read from them, the sampling decision and the alarms.

Pure: no asyncio, no I/O; the clock and the random draw are injected, so tests need no
sleeps. The serving layer (``cascade.serving``) feeds it each answered request and the top
tier's answers to the audited rows.

**Live relative accuracy** is agreement with the top tier: its answer stands in for the
label, as in label-free calibration. Rows the top tier answered agree by definition; of the
rest a random sample is audited. With ``s`` the share of rows answered below the top tier
and ``k`` of ``n`` audited rows disagreeing::

    estimate = 1 - s * k / n
    lower    = 1 - s * upper_bound(k, n)      # the bound calibration uses (cascade.audit)

at the policy's provenance confidence (0.95 without one).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from cascade.audit._bounds import loss_bound
from cascade.audit._drift import DriftReference, DriftWindow

__all__ = ["ALARM_KINDS", "AlarmChange", "Alarms", "AuditLimits", "LiveStats", "Sampler"]

AlarmKind = Literal["accuracy", "cost", "drift"]
ALARM_KINDS: tuple[AlarmKind, ...] = ("accuracy", "cost", "drift")


@dataclass(frozen=True)
class AuditLimits:
    """What the audit is held to: the policy's ``audit`` section with its provenance.

    ``target``: the relative accuracy the policy was calibrated for; ``floor``: the live
    agreement with the top tier below which the accuracy alarm fires (none: no accuracy
    alarm); ``calibrated_cost``: the relative cost it was calibrated at (none: no cost
    alarm); ``confidence``: the level of the bound.
    """

    top: str
    costs: dict[str, float]
    sample_rate: float
    max_rows_per_s: float
    window_rows: int = 20_000
    window_audited: int = 5_000
    window_s: float = 3600.0
    quiet_after_shed_s: float = 5.0
    min_audited_rows: int = 2000
    min_rows: int = 1000
    cost_alarm_factor: float = 1.25
    alarm_after_rows: int = 500
    alarm_after_audited: int = 1000
    drift_threshold: float = 0.2
    drift_window: int = 1000
    drift_min_rows: int = 500
    target: float | None = None
    floor: float | None = None
    calibrated_cost: float | None = None
    confidence: float = 0.95
    reference: DriftReference | None = None


@dataclass
class _Chunk:
    """One request's rows as the windows count them."""

    t: float
    rows: int
    answered: dict[str, int]
    cost: float
    escalated: int


@dataclass
class _Counts:
    """Running sums over a window (or since start)."""

    rows: int = 0
    cost: float = 0.0
    escalated: int = 0
    answered: dict[str, int] = field(default_factory=dict)
    audited: dict[str, int] = field(default_factory=dict)
    disagreed: dict[str, int] = field(default_factory=dict)

    def add_chunk(self, chunk: _Chunk, sign: int) -> None:
        self.rows += sign * chunk.rows
        self.cost += sign * chunk.cost
        self.escalated += sign * chunk.escalated
        for tier, n in chunk.answered.items():
            self.answered[tier] = self.answered.get(tier, 0) + sign * n

    def add_audit(self, tier: str, agreed: bool, sign: int) -> None:
        self.audited[tier] = self.audited.get(tier, 0) + sign
        if not agreed:
            self.disagreed[tier] = self.disagreed.get(tier, 0) + sign


class LiveStats:
    """The audit's windows (the last ``window_rows`` served rows, the last
    ``window_audited`` audited ones, none older than ``window_s``) and totals since start.

    Example::

        stats = LiveStats(limits, clock=time.monotonic)
        stats.served(answered_by=["tiny", "large"], costs=[0.01, 1.01], escalated=1,
                     confidences=[0.99, 0.4])
        stats.audited("tiny", agreed=True)
        stats.snapshot()["window"]["relative_accuracy"]
    """

    def __init__(self, limits: AuditLimits, *, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.started = clock()
        self._chunks: deque[_Chunk] = deque()
        self._audits: deque[tuple[float, str, bool]] = deque()
        self.window = _Counts()
        self.total = _Counts()
        self.drift = (
            None
            if limits.reference is None
            else DriftWindow(
                limits.reference, size=limits.drift_window, min_rows=limits.drift_min_rows
            )
        )
        self.outcomes: dict[str, int] = {}  # dropped, failed, skipped_gear, skipped_shed, ...

    def count(self, outcome: str, rows: int = 1) -> None:
        """Rows that left the audit without an answer, by why."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + rows

    def served(
        self,
        *,
        answered: dict[str, int],
        rows: int,
        cost: float,
        escalated: int,
        confidences: Iterable[float] = (),
    ) -> None:
        """One request's rows: how many each tier answered, their summed cost (card units),
        how many escalated, and the first tier's confidence of each row it saw."""
        chunk = _Chunk(self.clock(), rows, answered, cost, escalated)
        self._chunks.append(chunk)
        self.window.add_chunk(chunk, 1)
        self.total.add_chunk(chunk, 1)
        if self.drift is not None:
            self.drift.add(list(confidences))
        self._expire(chunk.t)

    def audited(self, tier: str, *, agreed: bool) -> None:
        """One audited row that ``tier`` answered: whether the top tier said the same."""
        now = self.clock()
        self._audits.append((now, tier, agreed))
        self.window.add_audit(tier, agreed, 1)
        self.total.add_audit(tier, agreed, 1)
        self._expire(now)

    def _expire(self, now: float) -> None:
        limits, oldest = self.limits, now - self.limits.window_s
        chunks = self._chunks
        while chunks and (
            chunks[0].t < oldest or self.window.rows - chunks[0].rows >= limits.window_rows
        ):
            self.window.add_chunk(chunks.popleft(), -1)
        audits = self._audits
        while audits and (audits[0][0] < oldest or len(audits) > limits.window_audited):
            _, tier, agreed = audits.popleft()
            self.window.add_audit(tier, agreed, -1)

    # ---- what it concludes -------------------------------------------------------------

    def _figures(self, counts: _Counts) -> dict[str, Any]:
        limits = self.limits
        rows = counts.rows
        below = {t: n for t, n in counts.answered.items() if t != limits.top and n > 0}
        share_below = sum(below.values()) / rows if rows else 0.0
        audited = sum(counts.audited.values())
        disagreed = sum(counts.disagreed.values())
        estimate = lower = None
        if rows and (audited or not share_below):
            estimate = 1.0 - share_below * (disagreed / audited if audited else 0.0)
            upper = loss_bound(disagreed, 0, audited, confidence=limits.confidence)
            lower = 1.0 - share_below * (min(upper, 1.0) if audited else 0.0)
        tiers: dict[str, Any] = {}
        for tier in sorted({*counts.answered, *counts.audited}):
            n = counts.audited.get(tier, 0)
            k = counts.disagreed.get(tier, 0)
            entry: dict[str, Any] = {
                "share": counts.answered.get(tier, 0) / rows if rows else None,
            }
            if tier != limits.top:
                entry |= {"audited": n, "agreement": 1.0 - k / n if n else None}
            tiers[tier] = entry
        top_cost = limits.costs.get(limits.top) or 1.0
        return {
            "rows": rows,
            "audited": audited,
            "disagreed": disagreed,
            "share_below_top": share_below,
            "relative_accuracy": {"estimate": estimate, "lower": lower},
            "relative_cost": counts.cost / rows / top_cost if rows else None,
            "escalation": counts.escalated / rows if rows else None,
            "tiers": tiers,
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything the audit reports, as plain JSON types (metadata, ``/config``)."""
        limits = self.limits
        window = self._figures(self.window)
        drift: dict[str, Any]
        if self.drift is None:
            drift = {"score": None, "note": "no reference (calibrate the policy to store one)"}
        else:
            drift = {
                "score": self.drift.score(),
                "threshold": limits.drift_threshold,
                "rows": self.drift.rows,
                "tier": self.drift.reference.tier,
                "measure": self.drift.reference.measure,
            }
        return {
            "top_tier": limits.top,
            "sample_rate": limits.sample_rate,
            "max_rows_per_s": limits.max_rows_per_s,
            "confidence": limits.confidence,
            "target_relative_accuracy": limits.target,
            "agreement_floor": limits.floor,
            "calibrated_relative_cost": limits.calibrated_cost,
            "window": window,
            "total": self._figures(self.total) | {"seconds": self.clock() - self.started},
            "drift": drift,
            "outcomes": dict(self.outcomes),
        }

    def conditions(self, snapshot: dict[str, Any]) -> dict[AlarmKind, str | None]:
        """Per alarm kind, what is wrong now in ``snapshot`` (``None``: nothing)."""
        limits = self.limits
        window = snapshot["window"]
        out: dict[AlarmKind, str | None] = dict.fromkeys(ALARM_KINDS)
        lower = window["relative_accuracy"]["lower"]
        if (
            limits.floor is not None
            and lower is not None
            and window["audited"] >= limits.min_audited_rows
            and lower < limits.floor
        ):
            worst = min(
                (
                    (t, e["agreement"])
                    for t, e in window["tiers"].items()
                    if e.get("agreement") is not None
                ),
                key=lambda item: item[1],
                default=(limits.top, None),
            )
            out["accuracy"] = (
                f"live relative accuracy lower bound {lower:.4f} < floor {limits.floor:.4f} "
                f"(target {limits.target}) "
                f"(estimate {window['relative_accuracy']['estimate']:.4f}, "
                f"{window['audited']} audited rows; tier={worst[0]} agreement="
                f"{'n/a' if worst[1] is None else f'{worst[1]:.4f}'})"
            )
        cost = window["relative_cost"]
        if (
            limits.calibrated_cost is not None
            and cost is not None
            and window["rows"] >= limits.min_rows
        ):
            allowed = limits.calibrated_cost * limits.cost_alarm_factor
            if cost > allowed:
                answered = {t: e["share"] for t, e in window["tiers"].items()}
                out["cost"] = (
                    f"live relative cost {cost:.4f} > calibrated {limits.calibrated_cost:g} "
                    f"x {limits.cost_alarm_factor:g} = {allowed:.4f} (answered by tier: "
                    + ", ".join(f"{t}={s:.3f}" for t, s in answered.items() if s is not None)
                    + ")"
                )
        score = snapshot["drift"]["score"]
        if score is not None and score > limits.drift_threshold:
            out["drift"] = (
                f"drift score {score:.3f} > {limits.drift_threshold:g} "
                f"(tier={snapshot['drift']['tier']} {snapshot['drift']['measure']}, "
                f"last {snapshot['drift']['rows']} rows)"
            )
        return out


class Sampler:
    """Which answered rows go to the top tier: a ``sample_rate`` draw per row below the top
    tier, only in the normal gear, not within ``quiet_after_shed_s`` of a shed request, and
    at most ``max_rows_per_s`` (a token bucket of one second's worth).

    Example::

        sampler = Sampler(rate=0.1, max_rows_per_s=50, quiet_after_shed_s=5, clock=clock)
        picked = sampler.pick(n_candidates, gear="normal")   # indices among the candidates
    """

    def __init__(
        self,
        *,
        rate: float,
        max_rows_per_s: float,
        quiet_after_shed_s: float,
        clock: Callable[[], float],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.rate = rate
        self.max_rows_per_s = max_rows_per_s
        self.quiet_after_shed_s = quiet_after_shed_s
        self.clock = clock
        self.rng = rng
        self._tokens = max(1.0, max_rows_per_s)
        self._filled = clock()
        self._shed_at = -math.inf
        self.refused: dict[str, int] = {}

    def shed(self) -> None:
        """A request was refused for overload: no audit for ``quiet_after_shed_s``."""
        self._shed_at = self.clock()

    def quiet(self) -> bool:
        """Whether a request was shed within ``quiet_after_shed_s``."""
        return self.clock() - self._shed_at < self.quiet_after_shed_s

    def _refuse(self, why: str, rows: int) -> list[int]:
        self.refused[why] = self.refused.get(why, 0) + rows
        return []

    def pick(self, candidates: int, *, gear: str) -> list[int]:
        """Indices (of ``candidates`` rows answered below the top tier) to audit now."""
        if candidates == 0 or self.rate <= 0:
            return []
        if gear != "normal":
            return self._refuse("skipped_gear", candidates)
        if self.quiet():
            return self._refuse("skipped_shed", candidates)
        now = self.clock()
        rng, rate = self.rng, self.rate
        drawn = [i for i in range(candidates) if rate >= 1.0 or rng() < rate]
        if not drawn:
            return []
        capacity = max(1.0, self.max_rows_per_s)
        self._tokens = min(capacity, self._tokens + (now - self._filled) * self.max_rows_per_s)
        self._filled = now
        allowed = int(self._tokens)
        if allowed < len(drawn):
            self._refuse("rate_limited", len(drawn) - allowed)
            drawn = drawn[:allowed]
        self._tokens -= len(drawn)
        return drawn


@dataclass(frozen=True)
class AlarmChange:
    """An alarm raised (``message``: what is wrong) or cleared (``message`` None)."""

    kind: AlarmKind
    raised: bool
    message: str | None


class Alarms:
    """The alarms raised now, each with its message; :meth:`update` returns what changed,
    so that a caller logs one line per alarm raised or cleared, never one per request.

    The cost and drift alarms are raised once their condition has held over ``after_rows``
    served rows; the accuracy alarm once it has held while ``after_audited`` more rows were
    audited. A sliding window tested again and again crosses its line by chance now and
    then; served rows alone are not enough for the accuracy bound, whose evidence grows
    with audited rows only (a hold of 500 served rows is ~100 audited ones against a window
    of 2,000: one poll in 200 over 20,000 unshifted covertype requests alarmed with it).
    An alarm clears as soon as its condition no longer holds.
    """

    def __init__(self, *, after_rows: int = 0, after_audited: int = 0) -> None:
        self.after_rows = after_rows
        self.after_audited = after_audited
        self.active: dict[AlarmKind, str] = {}
        self._since: dict[AlarmKind, int] = {}  # the count when the condition first held

    def update(
        self, conditions: dict[AlarmKind, str | None], *, rows: int = 0, audited: int = 0
    ) -> list[AlarmChange]:
        """Take the ``conditions`` now, ``rows`` served and ``audited`` so far; what was
        raised or cleared."""
        changes = []
        for kind in ALARM_KINDS:
            message = conditions.get(kind)
            count, hold = (
                (audited, self.after_audited) if kind == "accuracy" else (rows, self.after_rows)
            )
            if message is not None:
                since = self._since.setdefault(kind, count)
                if kind in self.active:
                    self.active[kind] = message
                elif count - since >= hold:
                    self.active[kind] = message
                    changes.append(AlarmChange(kind, True, message))
            else:
                self._since.pop(kind, None)
                if kind in self.active:
                    del self.active[kind]
                    changes.append(AlarmChange(kind, False, None))
        return changes
