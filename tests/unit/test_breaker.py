"""The circuit breaker: thresholds, fail-fast, the single half-open probe, verdicts.

Time is a fake clock moved by hand; concurrency is asyncio tasks ordered by events.
"""

from __future__ import annotations

import asyncio
import pickle
import re
from typing import Any

import pytest

from cascade.errors import (
    BackendError,
    CircuitOpen,
    InputError,
    ModelTimeout,
    ModelUnavailable,
)
from cascade.load import BreakerStats, CircuitBreaker


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def make(threshold: int = 5, reset_after_s: float = 5.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(
        "large", failure_threshold=threshold, reset_after_s=reset_after_s, clock=clock
    )
    return breaker, clock


async def succeed(breaker: CircuitBreaker) -> None:
    async with breaker.guard():
        pass


async def fail(breaker: CircuitBreaker, exc: BaseException | None = None) -> None:
    with pytest.raises(type(exc) if exc is not None else ModelTimeout):
        async with breaker.guard():
            raise exc if exc is not None else ModelTimeout("tier 'large': no answer")


def trip(breaker: CircuitBreaker) -> None:
    async def failures() -> None:
        for _ in range(breaker.failure_threshold):
            await fail(breaker)

    asyncio.run(failures())
    assert breaker.state == "open"


def test_opens_exactly_at_the_threshold() -> None:
    breaker, clock = make(threshold=3)
    clock.t = 12.5

    async def scenario() -> None:
        await fail(breaker)
        await fail(breaker)
        assert breaker.state == "closed"
        assert breaker.try_acquire()
        await fail(breaker)

    asyncio.run(scenario())
    assert breaker.stats() == BreakerStats(
        state="open", consecutive_failures=3, opened_at=12.5, times_opened=1
    )


@pytest.mark.parametrize(
    "exc", [ModelTimeout("slow"), TimeoutError(), BackendError("boom"), ModelUnavailable("gone")]
)
def test_timeouts_and_backend_errors_count_as_failures(exc: BaseException) -> None:
    breaker, _ = make(threshold=1)
    asyncio.run(fail(breaker, exc))
    assert breaker.state == "open"


def test_a_success_resets_the_count() -> None:
    breaker, _ = make(threshold=3)

    async def scenario() -> None:
        await fail(breaker)
        await fail(breaker)
        await succeed(breaker)
        await fail(breaker)
        await fail(breaker)

    asyncio.run(scenario())
    assert breaker.state == "closed"
    assert breaker.stats().consecutive_failures == 2


def test_fails_fast_while_open() -> None:
    breaker, clock = make()
    trip(breaker)
    clock.advance(1.8)
    ran = False

    async def call() -> None:
        nonlocal ran
        async with breaker.guard():
            ran = True

    with pytest.raises(CircuitOpen) as info:
        asyncio.run(call())
    assert str(info.value) == (
        "tier 'large': circuit open after 5 consecutive failures; next probe in 3.2 s"
    )
    assert isinstance(info.value, ModelUnavailable)
    assert info.value.tier == "large"
    assert info.value.retry_after_s == pytest.approx(3.2)
    assert not ran
    assert not breaker.try_acquire()
    clock.advance(3.1)
    assert breaker.state == "open"
    assert breaker.stats().times_opened == 1


def test_circuit_open_survives_pickling() -> None:
    exc = CircuitOpen("tier 'large': circuit open", tier="large", retry_after_s=1.5)
    back = pickle.loads(pickle.dumps(exc))
    assert (type(back), str(back), back.tier, back.retry_after_s) == (
        CircuitOpen,
        "tier 'large': circuit open",
        "large",
        1.5,
    )


def test_exactly_one_of_many_concurrent_callers_gets_the_probe() -> None:
    breaker, clock = make()
    trip(breaker)
    clock.advance(5.0)
    assert breaker.state == "half_open"
    n = 6

    async def scenario() -> list[str | BaseException]:
        probe_may_finish = asyncio.Event()
        all_tried = asyncio.Event()
        tried = 0

        def note_try() -> None:
            nonlocal tried
            tried += 1
            if tried == n:
                all_tried.set()

        async def call() -> str:
            try:
                async with breaker.guard():
                    note_try()
                    await probe_may_finish.wait()
                return "probe"
            except CircuitOpen:
                note_try()
                raise

        async def finish_probe() -> str:
            await all_tried.wait()
            assert breaker.state == "half_open"
            probe_may_finish.set()
            return "released"

        return await asyncio.gather(
            *(call() for _ in range(n)), finish_probe(), return_exceptions=True
        )

    results = asyncio.run(scenario())
    assert results.count("probe") == 1
    refusals = [r for r in results if isinstance(r, CircuitOpen)]
    assert len(refusals) == n - 1
    assert str(refusals[0]) == (
        "tier 'large': circuit half-open after 5 consecutive failures; a probe call is in flight"
    )
    assert refusals[0].retry_after_s == 0.0
    assert breaker.stats() == BreakerStats(
        state="closed", consecutive_failures=0, opened_at=None, times_opened=1
    )


def test_probe_failure_reopens_and_restarts_the_timer() -> None:
    breaker, clock = make()
    trip(breaker)
    clock.advance(7.0)
    asyncio.run(fail(breaker, TimeoutError()))
    assert breaker.stats() == BreakerStats(
        state="open", consecutive_failures=6, opened_at=7.0, times_opened=2
    )
    clock.advance(4.9)
    with pytest.raises(CircuitOpen, match=r"after 6 consecutive failures; next probe in 0\.1 s$"):
        asyncio.run(succeed(breaker))
    clock.advance(0.1)
    assert breaker.state == "half_open"


def test_probe_success_closes() -> None:
    breaker, clock = make(threshold=2)
    trip(breaker)
    clock.advance(5.0)
    asyncio.run(succeed(breaker))
    assert breaker.stats() == BreakerStats(
        state="closed", consecutive_failures=0, opened_at=None, times_opened=1
    )
    # Closed again means counting from zero: one failure does not re-open it.
    asyncio.run(fail(breaker))
    assert breaker.state == "closed"


def test_cancelling_the_probe_hands_the_permit_to_the_next_caller() -> None:
    breaker, clock = make()
    trip(breaker)
    clock.advance(5.0)

    async def scenario() -> None:
        probe_in = asyncio.Event()

        async def probe() -> None:
            async with breaker.guard():
                probe_in.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(probe())
        await probe_in.wait()
        assert not breaker.try_acquire()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert breaker.state == "half_open"
        await succeed(breaker)

    asyncio.run(scenario())
    assert breaker.state == "closed"


def test_the_callers_fault_gives_no_verdict() -> None:
    breaker, clock = make(threshold=3)

    async def bad_input() -> None:
        with pytest.raises(InputError):
            async with breaker.guard():
                raise InputError("expected 54 features, got 3")

    async def closed() -> None:
        await fail(breaker)
        await fail(breaker)
        await bad_input()

    asyncio.run(closed())
    assert breaker.stats().consecutive_failures == 2
    assert breaker.stats().state == "closed"

    asyncio.run(fail(breaker))
    assert breaker.stats().state == "open"
    clock.advance(5.0)
    asyncio.run(bad_input())
    assert breaker.state == "half_open"
    assert breaker.try_acquire()


def test_a_stale_call_cannot_settle_the_probe() -> None:
    breaker, clock = make(threshold=1)

    async def scenario() -> None:
        old_in = asyncio.Event()
        old_may_fail = asyncio.Event()

        async def old_call() -> None:
            async with breaker.guard():
                old_in.set()
                await old_may_fail.wait()
                raise ModelTimeout("tier 'large': no answer")

        old = asyncio.create_task(old_call())
        await old_in.wait()
        await fail(breaker)
        clock.advance(5.0)
        assert breaker.try_acquire()
        old_may_fail.set()
        with pytest.raises(ModelTimeout):
            await old
        # The call permitted before the breaker opened neither re-opened it nor freed the
        # probe permit: the probe is still out.
        assert breaker.state == "half_open"
        assert not breaker.try_acquire()
        breaker.record_success()

    asyncio.run(scenario())
    assert breaker.state == "closed"


def test_try_acquire_and_record_without_guard() -> None:
    breaker, clock = make(threshold=2)
    assert breaker.try_acquire()
    breaker.record_failure()
    assert breaker.try_acquire()
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.try_acquire()
    clock.advance(5.0)
    assert breaker.try_acquire()
    assert not breaker.try_acquire()
    breaker.release()
    assert breaker.try_acquire()
    breaker.record_failure()
    assert breaker.state == "open"
    clock.advance(5.0)
    assert breaker.try_acquire()
    breaker.record_success()
    assert breaker.stats().state == "closed"
    assert repr(breaker) == "CircuitBreaker('large', state='closed')"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failure_threshold": 0}, "breaker 'large': failure_threshold must be >= 1, got 0"),
        (
            {"reset_after_s": -1.0},
            "breaker 'large': reset_after_s must be finite and >= 0, got -1.0",
        ),
        (
            {"reset_after_s": float("nan")},
            "breaker 'large': reset_after_s must be finite and >= 0, got nan",
        ),
    ],
)
def test_options_are_validated(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        CircuitBreaker("large", **options)


def test_opening_and_closing_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    breaker, clock = make(threshold=2, reset_after_s=3.0)
    with caplog.at_level("INFO", logger="cascade.load"):
        trip(breaker)
        clock.advance(3.0)
        asyncio.run(succeed(breaker))  # the probe
    assert breaker.state == "closed"
    assert [r.getMessage() for r in caplog.records] == [
        "breaker opened tier=large failures=2 retry_after_s=3",
        "breaker closed tier=large (the probe call succeeded)",
    ]
