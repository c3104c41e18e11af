"""Load signals: ongoing counts, windowed percentiles and rates, tracking, per-tier registry."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.errors import BackendError, InputError, ModelTimeout
from cascade.load import LoadSignals, Outcome, TierLoad, TierLoadSnapshot


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance_ms(self, ms: float) -> None:
        self.t += ms / 1000.0


def call(load: TierLoad, latency_ms: float, outcome: Outcome = "ok", rows: int = 1) -> None:
    load.started(rows)
    load.finished(rows, latency_ms, outcome=outcome)


def test_an_idle_tier_has_no_percentiles_and_zero_rates() -> None:
    assert TierLoad("tiny").snapshot() == TierLoadSnapshot(
        tier="tiny",
        ongoing_calls=0,
        ongoing_rows=0,
        queued_rows=0,
        p50_ms=None,
        p95_ms=None,
        p99_ms=None,
        error_rate=0.0,
        timeout_rate=0.0,
        calls_seen=0,
    )


def test_percentiles_match_numpy() -> None:
    latencies = np.random.default_rng(7).lognormal(mean=1.0, sigma=0.6, size=200)
    load = TierLoad("large", window=256)
    for ms in latencies:
        call(load, float(ms))
    snap = load.snapshot()
    expected = np.percentile(latencies, [50, 95, 99])
    assert (snap.p50_ms, snap.p95_ms, snap.p99_ms) == pytest.approx(expected.tolist())
    assert snap.p50_ms is not None and snap.p95_ms is not None and snap.p50_ms < snap.p95_ms


def test_the_ring_buffer_keeps_only_the_last_window() -> None:
    load = TierLoad("large", window=8)
    for ms in range(20):
        call(load, float(ms))
    snap = load.snapshot()
    expected = np.percentile(np.arange(12, 20, dtype=float), [50, 95, 99])
    assert (snap.p50_ms, snap.p95_ms, snap.p99_ms) == pytest.approx(expected.tolist())
    assert snap.calls_seen == 20
    assert len(load._latencies) == 8


def test_errors_stay_out_of_the_percentiles_and_timeouts_stay_in() -> None:
    load = TierLoad("large")
    call(load, 10.0)
    call(load, 0.1, "error")
    call(load, 50.0, "timeout")
    snap = load.snapshot()
    assert snap.p50_ms == pytest.approx(30.0)
    assert snap.p99_ms == pytest.approx(float(np.percentile([10.0, 50.0], 99)))


def test_rates_cover_the_recent_window_of_outcomes() -> None:
    load = TierLoad("large", window=4)
    outcomes: tuple[Outcome, ...] = ("ok", "error", "timeout", "error")
    for outcome in outcomes:
        call(load, 1.0, outcome)
    snap = load.snapshot()
    assert (snap.error_rate, snap.timeout_rate) == (0.5, 0.25)
    call(load, 1.0)
    call(load, 1.0)
    snap = load.snapshot()
    assert (snap.error_rate, snap.timeout_rate) == (0.25, 0.25)
    for _ in range(4):
        call(load, 1.0)
    snap = load.snapshot()
    assert (snap.error_rate, snap.timeout_rate, snap.calls_seen) == (0.0, 0.0, 10)


@settings(max_examples=100, deadline=None)
@given(
    window=st.integers(1, 16),
    outcomes=st.lists(st.sampled_from(["ok", "error", "timeout"]), max_size=60),
)
def test_running_rates_equal_a_recount(window: int, outcomes: list[Outcome]) -> None:
    load = TierLoad("large", window=window)
    for outcome in outcomes:
        call(load, 1.0, outcome)
    recent = outcomes[-window:]
    snap = load.snapshot()
    n = max(len(recent), 1)
    assert snap.error_rate == recent.count("error") / n
    assert snap.timeout_rate == recent.count("timeout") / n
    assert snap.calls_seen == len(outcomes)


def test_ongoing_calls_and_rows_and_queue() -> None:
    load = TierLoad("large")
    load.started(32)
    load.started(8)
    load.queued = 40
    snap = load.snapshot()
    assert (snap.ongoing_calls, snap.ongoing_rows, snap.queued_rows) == (2, 40, 40)
    load.finished(32, 3.0, outcome="ok")
    assert (load.ongoing_calls, load.ongoing_rows, load.queued) == (1, 8, 40)
    load.finished(8, 3.0, outcome="error")
    load.queued = 0
    snap = load.snapshot()
    assert (snap.ongoing_calls, snap.ongoing_rows, snap.queued_rows) == (0, 0, 0)
    assert repr(load) == "TierLoad('large', ongoing_calls=0, ongoing_rows=0, queued=0)"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda load: TierLoad("large", window=0), "tier 'large': window must be >= 1, got 0"),
        (lambda load: load.started(-1), "tier 'large': rows must be >= 0, got -1"),
        (
            lambda load: setattr(load, "queued", -3),
            "tier 'large': queued must be >= 0, got -3",
        ),
        (
            lambda load: load.finished(4, 1.0, outcome="ok"),
            "tier 'large': finished a call of 4 rows, but only 0 calls of 0 rows were started",
        ),
        (
            lambda load: load.finished(1, 1.0, outcome="cancelled"),
            "tier 'large': outcome must be one of ['ok', 'error', 'timeout'], got 'cancelled'",
        ),
        (
            lambda load: load.finished(1, float("nan"), outcome="ok"),
            "tier 'large': latency_ms must be finite and >= 0, got nan",
        ),
        (
            lambda load: load.finished(1, -1.0, outcome="ok"),
            "tier 'large': latency_ms must be finite and >= 0, got -1.0",
        ),
    ],
)
def test_misuse_is_reported(action: Any, message: str) -> None:
    load = TierLoad("large")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        action(load)
    assert load.snapshot().calls_seen == 0


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "ok"),
        (ModelTimeout("tier 'large': no answer within 50 ms"), "timeout"),
        (TimeoutError(), "timeout"),
        (BackendError("tier 'large': RuntimeError: boom"), "error"),
    ],
)
def test_track_times_the_call_and_classifies_its_outcome(
    exc: BaseException | None, outcome: str
) -> None:
    clock = FakeClock()
    load = TierLoad("large", clock=clock)

    async def scenario() -> None:
        with load.track(16):
            assert (load.ongoing_calls, load.ongoing_rows) == (1, 16)
            clock.advance_ms(12.0)
            if exc is not None:
                raise exc

    if exc is None:
        asyncio.run(scenario())
    else:
        with pytest.raises(type(exc)):
            asyncio.run(scenario())
    snap = load.snapshot()
    assert (snap.ongoing_calls, snap.ongoing_rows, snap.calls_seen) == (0, 0, 1)
    assert snap.error_rate == (1.0 if outcome == "error" else 0.0)
    assert snap.timeout_rate == (1.0 if outcome == "timeout" else 0.0)
    assert snap.p50_ms == (None if outcome == "error" else pytest.approx(12.0))


@pytest.mark.parametrize("exc", [InputError("expected 54 features, got 3"), KeyboardInterrupt()])
def test_track_records_no_outcome_for_the_callers_fault_or_an_interruption(
    exc: BaseException,
) -> None:
    load = TierLoad("large", clock=FakeClock())
    with pytest.raises(type(exc)), load.track(4):
        raise exc
    snap = load.snapshot()
    assert (snap.ongoing_calls, snap.ongoing_rows, snap.calls_seen, snap.p50_ms) == (0, 0, 0, None)


def test_track_records_no_outcome_when_cancelled() -> None:
    load = TierLoad("large", clock=FakeClock())

    async def scenario() -> None:
        inside = asyncio.Event()

        async def tracked() -> None:
            with load.track(4):
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(tracked())
        await inside.wait()
        assert load.ongoing_calls == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    snap = load.snapshot()
    assert (snap.ongoing_calls, snap.calls_seen) == (0, 0)


def test_load_signals_keep_one_tier_load_per_tier() -> None:
    clock = FakeClock()
    signals = LoadSignals(["tiny", "large"], window=4, clock=clock)
    assert "small" not in signals
    small = signals.tier("small")
    assert signals.tier("small") is small
    assert "small" in signals
    assert small.window == 4
    with small.track(3):
        clock.advance_ms(5.0)
    signals.tier("large").started(32)
    snap = signals.snapshot()
    assert list(snap) == ["tiny", "large", "small"]
    assert snap["small"].p50_ms == pytest.approx(5.0)
    assert snap["large"].ongoing_rows == 32
    assert snap["tiny"].calls_seen == 0
    with pytest.raises(ValueError, match=r"^window must be >= 1, got 0$"):
        LoadSignals(window=0)
