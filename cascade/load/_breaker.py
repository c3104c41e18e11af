"""A circuit breaker per tier: fail fast while a tier keeps failing, probe it once to recover.

Closed, it counts consecutive failures; at ``failure_threshold`` it opens and refuses every
call for ``reset_after_s``; then it is half-open and lets exactly one probe call through.
The probe's success closes it, its failure opens it again for another ``reset_after_s``.
Time comes from the injected clock only, so tests drive it without sleeping.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from cascade.errors import BackendError, CircuitOpen

_LOG = logging.getLogger("cascade.load")

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]
_Verdict = Literal["success", "failure", "release"]


@dataclass(frozen=True)
class BreakerStats:
    """A breaker's state at one moment.

    ``opened_at`` is the clock time it last opened (None while closed); ``times_opened``
    counts every opening, re-openings after a failed probe included.

    Example::

        BreakerStats(state="open", consecutive_failures=5, opened_at=12.5, times_opened=1)
    """

    state: BreakerState
    consecutive_failures: int
    opened_at: float | None
    times_opened: int


class CircuitBreaker:
    """Guards calls to one tier: ``async with breaker.guard(): await tier.predict(rows)``.

    ``guard`` raises ``CircuitOpen`` without calling when the breaker refuses; a
    ``TimeoutError`` or ``BackendError`` from the body counts as a failure, a normal exit as
    a success; cancellation and any other exception (such as ``InputError``, the caller's
    fault) give no verdict. Code that cannot use ``guard`` pairs ``try_acquire`` with
    exactly one of ``record_success``, ``record_failure`` or ``release``.

    The half-open probe stays out until its verdict arrives, so the probe's call must be
    bounded by a timeout. One breaker serves one event loop; it is not thread-safe.

    Example::

        breaker = CircuitBreaker("large", failure_threshold=5, reset_after_s=5.0)
        try:
            async with breaker.guard():
                probabilities = await large.predict(rows)
        except CircuitOpen as exc:
            ...  # answer from a cheaper tier; exc.retry_after_s says when to expect a probe
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(
                f"breaker '{name}': failure_threshold must be >= 1, got {failure_threshold}"
            )
        if not (math.isfinite(reset_after_s) and reset_after_s >= 0):
            raise ValueError(
                f"breaker '{name}': reset_after_s must be finite and >= 0, got {reset_after_s}"
            )
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at: float | None = None
        self._times_opened = 0
        self._probe_out = False
        # Bumped on every state change. A verdict from a call permitted in an earlier epoch
        # is stale: a slow call from before the breaker opened must neither close it, nor
        # re-open it, nor hand back a probe permit it never held.
        self._epoch = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state!r})"

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"``; open turns half-open once it is due."""
        self._refresh()
        return self._state

    def stats(self) -> BreakerStats:
        """The state, failure count, last opening time and number of openings."""
        return BreakerStats(
            state=self.state,
            consecutive_failures=self._failures,
            opened_at=self._opened_at,
            times_opened=self._times_opened,
        )

    def try_acquire(self) -> bool:
        """Whether the caller may call the tier now; in half-open this takes the one probe."""
        return self._acquire() is not None

    def record_success(self) -> None:
        """A permitted call succeeded: reset the failure count, or close after a probe."""
        self._settle(self._epoch, "success")

    def record_failure(self) -> None:
        """A permitted call failed: count it, opening at the threshold or after a probe."""
        self._settle(self._epoch, "failure")

    def release(self) -> None:
        """A permitted call ended without a verdict (cancelled); a probe permit goes back."""
        self._settle(self._epoch, "release")

    def guard(self) -> AbstractAsyncContextManager[None]:
        """An ``async with`` block that runs only when permitted and reports its outcome.

        Raises ``CircuitOpen`` on entry when the breaker refuses the call.
        """
        return _Guard(self)

    def _refresh(self) -> None:
        if (
            self._state == "open"
            and self._opened_at is not None
            and self._clock() - self._opened_at >= self.reset_after_s
        ):
            self._state = "half_open"
            self._probe_out = False
            self._epoch += 1

    def _acquire(self) -> int | None:
        """The epoch of the permit handed out, or None when the call is refused."""
        self._refresh()
        if self._state == "closed":
            return self._epoch
        if self._state == "half_open" and not self._probe_out:
            self._probe_out = True
            return self._epoch
        return None

    def _settle(self, epoch: int, verdict: _Verdict) -> None:
        self._refresh()
        if epoch != self._epoch:
            return
        if self._state == "closed":
            if verdict == "success":
                self._failures = 0
            elif verdict == "failure":
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._open()
        elif self._state == "half_open" and self._probe_out:
            if verdict == "success":
                self._state = "closed"
                _LOG.info("breaker closed tier=%s (the probe call succeeded)", self.name)
                self._failures = 0
                self._opened_at = None
                self._probe_out = False
                self._epoch += 1
            elif verdict == "failure":
                self._failures += 1
                self._open()
            else:
                self._probe_out = False
        # Open, or half-open with no probe out: nobody current was permitted, so no verdict.

    def _open(self) -> None:
        _LOG.warning("breaker opened tier=%s failures=%d retry_after_s=%g",
                     self.name, self._failures, self.reset_after_s)  # fmt: skip
        self._state = "open"
        self._opened_at = self._clock()
        self._times_opened += 1
        self._probe_out = False
        self._epoch += 1

    def _refusal(self) -> CircuitOpen:
        if self._state == "half_open":
            return CircuitOpen(
                f"tier '{self.name}': circuit half-open after {self._failures} consecutive "
                "failures; a probe call is in flight",
                tier=self.name,
                retry_after_s=0.0,
            )
        opened_at = self._opened_at if self._opened_at is not None else self._clock()
        wait_s = max(0.0, opened_at + self.reset_after_s - self._clock())
        return CircuitOpen(
            f"tier '{self.name}': circuit open after {self._failures} consecutive failures; "
            f"next probe in {wait_s:.1f} s",
            tier=self.name,
            retry_after_s=wait_s,
        )


class _Guard(AbstractAsyncContextManager[None]):
    """One guarded call: holds the permit's epoch so that a late verdict can be told stale."""

    __slots__ = ("_breaker", "_epoch")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._epoch: int | None = None

    async def __aenter__(self) -> None:
        self._epoch = self._breaker._acquire()
        if self._epoch is None:
            raise self._breaker._refusal()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._epoch is None:
            return
        if exc is None:
            verdict: _Verdict = "success"
        elif isinstance(exc, TimeoutError | BackendError):
            verdict = "failure"
        else:
            # Cancelled, or the caller's own fault (bad input): says nothing about the tier.
            verdict = "release"
        self._breaker._settle(self._epoch, verdict)
