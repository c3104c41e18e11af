"""Time-aware admission: refuse at once the work that cannot finish within its deadline.

A queue that counts requests (Serve's ``max_queued_requests``) cannot tell a request that
will be answered in time from one that will not: under overload it serves requests whose
clients have already given up, and goodput collapses. Here every queue a request waits in
asks instead "can this request still be answered in time?", from live estimates: the
queue's measured service time (a fixed part per batch and a part per row, fitted online by
:class:`ServiceTimer`) times the work ahead of the request, plus its own work. A request
that cannot make it is refused when it arrives, and again when it is dequeued (its budget
ran out while it waited), so the queue's work goes to requests that can still use it.

``admit`` is a pure function of the budget, the work ahead, the estimate and the priority:
the serving layer measures, this module decides.

Priorities (the request's ``parameters.priority``, Triton's convention: 1 is the highest,
0 means the default): a lower class keeps more headroom, so it is refused first as the
queue grows. ``HEADROOM`` gives the share of its budget a class may spend waiting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_PRIORITY",
    "HEADROOM",
    "Refusal",
    "ServiceEstimate",
    "ServiceTimer",
    "StandingDelay",
    "admit",
    "behind",
    "headroom",
]

DEFAULT_PRIORITY = 2
# Share of a request's budget its predicted completion may use, per priority class: a
# class-3 request is refused once the work ahead would take half its budget, while a
# class-1 request is still admitted until its whole budget is needed. Lower classes shed
# first, and what they leave goes to the higher ones.
HEADROOM = {1: 1.0, 2: 0.85, 3: 0.5}


def headroom(priority: int) -> float:
    """The share of its budget a request of ``priority`` may be predicted to use.

    Example::

        headroom(1), headroom(0), headroom(7)  # (1.0, 0.85, 0.5): 0 is the default class
    """
    if priority < 0:
        raise ValueError(f"priority must be >= 0, got {priority}")
    if priority == 0:
        priority = DEFAULT_PRIORITY
    return HEADROOM[min(priority, max(HEADROOM))]


@dataclass(frozen=True)
class ServiceEstimate:
    """How long a queue takes to serve work: ``per_batch_ms`` for each batch it runs and
    ``per_row_ms`` for each row in it.

    Example::

        ServiceEstimate(per_batch_ms=2.0, per_row_ms=0.05).ms(rows=64)  # 5.2
    """

    per_batch_ms: float
    per_row_ms: float

    def ms(self, rows: int, batches: int = 1) -> float:
        """Predicted time to serve ``rows`` rows in ``batches`` batches."""
        return batches * self.per_batch_ms + rows * self.per_row_ms


class ServiceTimer:
    """An online fit of a queue's service time, ``ms = per_batch + per_row * rows``.

    Each ``observe`` adds one served batch; older batches weigh less (``half_life``
    batches), so the estimate follows the machine as its load and its neighbours change.
    Exponentially weighted least squares over (rows, ms), two sums per moment: O(1), no
    allocation. While every batch had the same size the split between the fixed part and
    the per-row part is unknown; the fit then charges it all per row, which predicts that
    size exactly and scales with the rows ahead.

    Example::

        timer = ServiceTimer()
        timer.observe(rows=64, ms=5.0)
        timer.observe(rows=8, ms=2.2)
        timer.estimate().ms(rows=32)
    """

    def __init__(self, *, half_life: float = 32.0, prior: ServiceEstimate | None = None) -> None:
        if not (math.isfinite(half_life) and half_life > 0):
            raise ValueError(f"half_life must be a positive number of batches, got {half_life}")
        self._decay = 0.5 ** (1.0 / half_life)
        self._prior = prior
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.batches = 0

    def observe(self, rows: int, ms: float) -> None:
        """One batch of ``rows`` rows was served in ``ms`` milliseconds."""
        if rows < 0 or not (math.isfinite(ms) and ms >= 0):
            raise ValueError(f"a batch needs rows >= 0 and a finite ms >= 0, got {rows}, {ms}")
        d = self._decay
        self._w = d * self._w + 1.0
        self._x = d * self._x + rows
        self._y = d * self._y + ms
        self._xx = d * self._xx + rows * rows
        self._xy = d * self._xy + rows * ms
        self.batches += 1

    def estimate(self) -> ServiceEstimate | None:
        """The current fit; the prior (or None) before the first batch."""
        if self.batches == 0:
            return self._prior
        mean_x, mean_y = self._x / self._w, self._y / self._w
        var_x = self._xx / self._w - mean_x * mean_x
        if var_x > 1e-6 * max(1.0, mean_x * mean_x):
            slope = (self._xy / self._w - mean_x * mean_y) / var_x
            intercept = mean_y - slope * mean_x
            if slope >= 0 and intercept >= 0:
                return ServiceEstimate(intercept, slope)
        # one size only (or a fit that makes no physical sense): all of it per row
        if mean_x > 0:
            return ServiceEstimate(0.0, mean_y / mean_x)
        return ServiceEstimate(mean_y, 0.0)


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the message for its 503, the predicted completion time,
    and when to retry (once the work ahead of it would have drained)."""

    reason: str
    predicted_ms: float
    retry_after_s: float


def admit(
    budget_ms: float | None,
    *,
    ahead_ms: float,
    own_ms: float,
    priority: int = 0,
    where: str = "queue",
) -> Refusal | None:
    """Whether a request with ``budget_ms`` left can still be answered in time.

    ``ahead_ms``: predicted time to serve the work ahead of it in this queue (service time
    times the work ahead, see :class:`ServiceEstimate`); ``own_ms``: its own work. The
    request is refused when ``ahead_ms + own_ms`` exceeds its priority's share of the
    budget (:func:`headroom`). No budget: always admitted (nothing to miss). A budget
    already spent is refused whatever the queue.

    Example::

        admit(250.0, ahead_ms=40.0, own_ms=5.0)  # None: admitted
        admit(250.0, ahead_ms=400.0, own_ms=5.0).retry_after_s  # 0.4
    """
    if budget_ms is None:
        return None
    predicted = ahead_ms + own_ms
    allowed = budget_ms * headroom(priority)
    if budget_ms > 0 and predicted <= allowed:
        return None
    if budget_ms <= 0:
        reason = f"the deadline passed before the request reached the {where}"
    else:
        reason = (
            f"cannot answer within the deadline: the {where} needs about {predicted:.3g} ms "
            f"now, {budget_ms:.3g} ms are left"
        )
        if allowed < budget_ms:
            reason += f" (priority {priority or DEFAULT_PRIORITY} may use {allowed:.3g})"
    return Refusal(reason, predicted, max(ahead_ms, 0.0) / 1000.0)


class StandingDelay:
    """CoDel's test for a standing queue, applied to the delay before the service's code.

    When the process cannot read its requests as fast as they arrive (its core is busy
    answering the ones it admitted), they wait in sockets and in the event loop, where no
    queue of ours sees them, and a shed costs as much as it did before. Their delay on
    arrival (from the client's send time) shows it: a burst delays a few requests, a backlog
    delays all of them. As in CoDel, the *minimum* delay over an interval is the standing
    part; ``standing_ms`` is that of the last complete interval (0 before one).

    Example::

        delay = StandingDelay(interval_s=0.1)
        delay.observe(12.0)
        delay.standing_ms  # the least delay of the previous 100 ms
    """

    def __init__(
        self, *, interval_s: float = 0.1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a positive number, got {interval_s}")
        self._interval_s = interval_s
        self._clock = clock
        self._ends = clock() + interval_s
        self._least = math.inf
        self.standing_ms = 0.0

    def observe(self, delay_ms: float) -> float:
        """One request arrived ``delay_ms`` after its send; the standing delay now."""
        now = self._clock()
        if now >= self._ends:
            # an interval with no arrival at all had no queue either
            idle = now >= self._ends + self._interval_s
            self.standing_ms = 0.0 if idle or math.isinf(self._least) else self._least
            self._least = math.inf
            self._ends = now + self._interval_s
        self._least = min(self._least, max(0.0, delay_ms))
        return self.standing_ms


def behind(
    delay_ms: float | None,
    standing_ms: float,
    budget_ms: float | None,
    priority: int = 0,
    *,
    allowed_ms: float = 0.0,
) -> Refusal | None:
    """Refuse a request that reached the service ``delay_ms`` after its send, while the
    delay before the service's code stands above the target: 3 % of the request's whole
    budget (``budget_ms``, from its send), at least 5 ms; twice that for priority 1; plus
    ``allowed_ms``, the wait a bounded queue in front of the process may add on purpose
    (HAProxy's in front of a Ray replica: it holds the excess so that the replica stays
    busy, and refuses what waited longer itself).

    Shedding on arrival is then not enough: the process spends its core on the work it
    admitted and reads requests late, so even its 503s are late. Refusing the delayed ones
    until the backlog is gone frees the core to read, and keeps a shed fast.

    Example::

        behind(80.0, standing_ms=60.0, budget_ms=1000.0)  # refused: 60 ms > 30 ms
    """
    if delay_ms is None or budget_ms is None:
        return None
    target = max(5.0, 0.03 * budget_ms) * (2.0 if priority == 1 else 1.0) + allowed_ms
    if standing_ms <= target or delay_ms <= target:
        return None
    return Refusal(
        f"the server is behind its arrivals: requests reach it {standing_ms:.3g} ms or more "
        f"after they are sent (target {target:.3g} ms)",
        delay_ms,
        standing_ms / 1000.0,
    )
