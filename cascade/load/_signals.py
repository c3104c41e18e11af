"""Live load signals per tier, updated in-line on every call to the tier.

An update is a few integer operations and a bounded ``deque`` append, O(1), with no extra hop
and no lock (one event loop owns a ``TierLoad``). Percentiles are computed with numpy over
the recent window only when someone asks for a ``snapshot``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import numpy as np

from cascade.errors import BackendError, ModelTimeout

__all__ = ["LoadSignals", "Outcome", "TierLoad", "TierLoadSnapshot"]

Outcome = Literal["ok", "error", "timeout"]
_OUTCOMES: tuple[Outcome, ...] = ("ok", "error", "timeout")


@dataclass(frozen=True)
class TierLoadSnapshot:
    """One tier's load at one moment.

    The percentiles (ms) and rates cover the recent window of finished calls; the
    percentiles are None until a call has finished with a latency. ``calls_seen`` counts
    every finished call since the signal was created.

    Example::

        TierLoadSnapshot(
            tier="large", ongoing_calls=3, ongoing_rows=96, queued_rows=40,
            p50_ms=2.1, p95_ms=4.0, p99_ms=7.5, error_rate=0.0, timeout_rate=0.01,
            calls_seen=1200,
        )
    """

    tier: str
    ongoing_calls: int
    ongoing_rows: int
    queued_rows: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    error_rate: float
    timeout_rate: float
    calls_seen: int


class TierLoad:
    """Calls in flight, rows queued, recent latencies and failure rates of one tier.

    The owner brackets each call with ``started`` and ``finished`` (or wraps it in
    ``track``) and may set ``queued`` (say, the coalescer's pending rows). The last
    ``window`` outcomes give the error and timeout rates; the latencies of the last
    ``window`` calls that answered or timed out give the percentiles.

    Example::

        load = TierLoad("large", window=256)
        load.started(rows=32)
        ...
        load.finished(rows=32, latency_ms=3.4, outcome="ok")
        load.snapshot().p95_ms
    """

    def __init__(
        self, tier: str, *, window: int = 256, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if window < 1:
            raise ValueError(f"tier '{tier}': window must be >= 1, got {window}")
        self.tier = tier
        self.window = window
        self._clock = clock
        self._ongoing_calls = 0
        self._ongoing_rows = 0
        self._queued = 0
        self._latencies: deque[float] = deque(maxlen=window)
        self._outcomes: deque[Outcome] = deque(maxlen=window)
        self._errors = 0
        self._timeouts = 0
        self._calls_seen = 0

    def __repr__(self) -> str:
        return (
            f"TierLoad({self.tier!r}, ongoing_calls={self._ongoing_calls}, "
            f"ongoing_rows={self._ongoing_rows}, queued={self._queued})"
        )

    @property
    def queued(self) -> int:
        """Rows waiting for this tier outside it, as last set by the owner."""
        return self._queued

    @queued.setter
    def queued(self, rows: int) -> None:
        if rows < 0:
            raise ValueError(f"tier '{self.tier}': queued must be >= 0, got {rows}")
        self._queued = rows

    @property
    def ongoing_calls(self) -> int:
        """Calls started and not yet finished."""
        return self._ongoing_calls

    @property
    def ongoing_rows(self) -> int:
        """Rows in the calls started and not yet finished."""
        return self._ongoing_rows

    def started(self, rows: int) -> None:
        """A call of ``rows`` rows to the tier begins."""
        if rows < 0:
            raise ValueError(f"tier '{self.tier}': rows must be >= 0, got {rows}")
        self._ongoing_calls += 1
        self._ongoing_rows += rows

    def finished(self, rows: int, latency_ms: float, *, outcome: Outcome) -> None:
        """The call of ``rows`` rows begun by ``started`` ended after ``latency_ms``.

        An error's latency is left out of the percentiles: a fast failure says nothing
        about how fast the tier answers. A timeout's is kept: the caller did wait that long.
        """
        if outcome not in _OUTCOMES:
            raise ValueError(
                f"tier '{self.tier}': outcome must be one of {list(_OUTCOMES)}, got {outcome!r}"
            )
        if not (math.isfinite(latency_ms) and latency_ms >= 0):
            raise ValueError(
                f"tier '{self.tier}': latency_ms must be finite and >= 0, got {latency_ms}"
            )
        self._leave(rows)
        if len(self._outcomes) == self.window:
            self._forget(self._outcomes[0])
        self._outcomes.append(outcome)
        if outcome == "error":
            self._errors += 1
        else:
            if outcome == "timeout":
                self._timeouts += 1
            self._latencies.append(latency_ms)
        self._calls_seen += 1

    def track(self, rows: int) -> _Tracked:
        """A ``with`` block timed by the clock: ``started`` on entry, ``finished`` on exit.

        ``TimeoutError`` and ``ModelTimeout`` count as timeouts, other ``BackendError``s as
        errors; any other exception (cancellation, bad input) ends the call with no outcome.

        Example::

            with load.track(len(rows)):
                probabilities = await model.predict(rows)
        """
        return _Tracked(self, rows)

    def snapshot(self) -> TierLoadSnapshot:
        """The tier's load now; percentiles are computed here, over the recent window."""
        p50: float | None = None
        p95: float | None = None
        p99: float | None = None
        if self._latencies:
            values = np.percentile(np.fromiter(self._latencies, dtype=np.float64), [50, 95, 99])
            p50, p95, p99 = (float(v) for v in values)
        seen = len(self._outcomes)
        return TierLoadSnapshot(
            tier=self.tier,
            ongoing_calls=self._ongoing_calls,
            ongoing_rows=self._ongoing_rows,
            queued_rows=self._queued,
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            error_rate=self._errors / seen if seen else 0.0,
            timeout_rate=self._timeouts / seen if seen else 0.0,
            calls_seen=self._calls_seen,
        )

    def _leave(self, rows: int) -> None:
        if rows < 0:
            raise ValueError(f"tier '{self.tier}': rows must be >= 0, got {rows}")
        if self._ongoing_calls < 1 or rows > self._ongoing_rows:
            raise ValueError(
                f"tier '{self.tier}': finished a call of {rows} rows, but only "
                f"{self._ongoing_calls} calls of {self._ongoing_rows} rows were started"
            )
        self._ongoing_calls -= 1
        self._ongoing_rows -= rows

    def _forget(self, outcome: Outcome) -> None:
        # The outcome about to fall out of the window stops counting towards the rates.
        if outcome == "error":
            self._errors -= 1
        elif outcome == "timeout":
            self._timeouts -= 1


class _Tracked:
    """One call tracked by ``TierLoad.track``."""

    __slots__ = ("_load", "_rows", "_started_s")

    def __init__(self, load: TierLoad, rows: int) -> None:
        self._load = load
        self._rows = rows
        self._started_s = 0.0

    def __enter__(self) -> None:
        self._load.started(self._rows)
        self._started_s = self._load._clock()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        latency_ms = max(0.0, (self._load._clock() - self._started_s) * 1000.0)
        outcome: Outcome
        if exc is None:
            outcome = "ok"
        elif isinstance(exc, TimeoutError | ModelTimeout):
            outcome = "timeout"
        elif isinstance(exc, BackendError):
            outcome = "error"
        else:
            self._load._leave(self._rows)
            return
        self._load.finished(self._rows, latency_ms, outcome=outcome)


class LoadSignals:
    """One ``TierLoad`` per tier, created on first use.

    Example::

        signals = LoadSignals(["tiny", "small", "large"])
        signals.tier("large").started(rows=32)
        signals.snapshot()["large"].ongoing_rows  # 32
    """

    def __init__(
        self,
        tiers: Iterable[str] = (),
        *,
        window: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window = window
        self._clock = clock
        self._tiers: dict[str, TierLoad] = {}
        for name in tiers:
            self.tier(name)

    def __contains__(self, tier: object) -> bool:
        return tier in self._tiers

    def tier(self, name: str) -> TierLoad:
        """The signals of tier ``name``, created empty on first use."""
        load = self._tiers.get(name)
        if load is None:
            load = self._tiers[name] = TierLoad(name, window=self._window, clock=self._clock)
        return load

    def snapshot(self) -> dict[str, TierLoadSnapshot]:
        """Every known tier's load now, by tier name."""
        return {name: load.snapshot() for name, load in self._tiers.items()}
