"""Coalesce concurrent requests into engine batches.

Many small HTTP requests arriving together are answered by one ``Engine.run`` over their
concatenated rows, so every tier sees one batched call instead of one per request. Each
caller gets back exactly its own rows' answers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from cascade.errors import BackendError, OverloadedError
from cascade.load import DEFAULT_PRIORITY, ServiceTimer
from cascade.routing import BatchResult, Decision
from cascade.serving._profile import Profile

__all__ = ["Coalescer", "Discipline", "RunBatch"]

Answer = tuple[np.ndarray, tuple[Decision, ...]]
Discipline = Literal["fifo", "adaptive-lifo"]


class RunBatch(Protocol):
    """``run(rows, deadlines, max_tiers)``: one engine batch. It is called with
    ``timeline=True`` too (and then must return the batch's tier calls, as
    ``Engine.run_validated`` does) when a profiled request is in the batch."""

    def __call__(
        self,
        rows: np.ndarray,
        deadlines: list[float | None],
        max_tiers: list[str | None],
        /,
        *,
        timeline: bool = ...,
    ) -> Awaitable[BatchResult]: ...


@dataclass(eq=False)
class _Waiting:
    rows: np.ndarray
    deadline_ms: float | None
    max_tier: str | None
    arrived_s: float
    future: asyncio.Future[Answer] = field(repr=False)
    profile: Profile | None = field(default=None, repr=False)
    priority: int = DEFAULT_PRIORITY  # 1 first; lower classes wait behind higher ones


class Coalescer:
    """Merges concurrent ``submit`` calls into one call of ``run(rows, deadlines, max_tiers)``.

    With ``eager`` (the default) a request reaching an idle coalescer runs at once, and
    requests arriving while a batch runs gather into the next one, which starts when that
    batch ends (or after ``max_wait_ms``): batches form under load only, so light traffic
    pays no waiting window. Without ``eager`` every request waits up to ``max_wait_ms`` for
    company. A batch starts once ``max_batch_rows`` rows wait, and a request of
    ``max_batch_rows`` rows or more makes a batch of its own. ``run`` gets one deadline per row (its
    request's, less the time the request waited here) and one ``max_tier`` per row (its
    request's). If ``run`` raises, every request of that batch gets the exception.

    The queue knows its deadlines. At most ``max_running`` batches run at once; beyond
    them requests wait here, where their deadlines are seen (not in the event loop or a
    tier's queue, where nothing checks them). A batch takes the waiting requests by
    priority class (1 first), oldest first within a class (``discipline="adaptive-lifo"``:
    newest first while more than a batch waits, Facebook's adaptive LIFO; measured against
    FIFO in ``benchmarks/overload.py --queue``), and a request whose remaining
    budget is shorter than the batch's predicted service time is refused then
    (:class:`~cascade.errors.OverloadedError`), before any work is spent on it. The
    service time is measured: ``timer`` fits the time per batch and per row from the
    batches served (the time between completions while batches overlap, so a batch that
    waited for another is not counted twice); :meth:`ahead_ms` is the work queued ahead of
    a new request, which admission compares with its budget on arrival.

    Profiling crosses into the batch explicitly, not through context variables (the batch
    runs in a task of its own): a request submitted with a :class:`Profile` gets its wait,
    the batch's tier calls and route work, and its wake-up recorded in it; a batch holding
    a profiled request asks ``run`` for its timeline (``timeline=True``), and only such a
    batch reads the clock for it.

    Example::

        coalescer = Coalescer(
            lambda rows, d, m, **timeline: engine.run(rows, deadlines_ms=d, max_tiers=m,
                                                      **timeline),
            max_wait_ms=2,
        )
        probabilities, decisions = await coalescer.submit(request.rows, deadline_ms=50)
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_rows: int = 256,
        max_wait_ms: float = 2.0,
        eager: bool = True,
        max_running: int = 2,
        discipline: Discipline = "fifo",
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        if discipline not in ("fifo", "adaptive-lifo"):
            raise ValueError(f"discipline must be 'fifo' or 'adaptive-lifo', got {discipline!r}")
        self._lifo = discipline == "adaptive-lifo"
        self._run = run
        self._eager = eager
        self._max_batch_rows = max_batch_rows
        self._max_wait_s = max_wait_ms / 1000.0
        self._max_running = max_running
        self._pending: list[_Waiting] = []
        self._pending_rows = 0
        self._batch_ms: float | None = None  # EWMA of how long a batch run takes
        self._timer: asyncio.TimerHandle | None = None
        # strong references: the event loop keeps only weak ones to running tasks
        self._batches: set[asyncio.Task[None]] = set()
        self.timer = ServiceTimer()
        self._running_rows = 0
        self._running_since: list[float] = []  # start times of the running batches
        self._last_done_s = 0.0

    @property
    def pending_rows(self) -> int:
        """Rows waiting for their batch to start."""
        return self._pending_rows

    @property
    def busy(self) -> bool:
        """Whether a batch is running (a request arriving now waits for it)."""
        return bool(self._batches)

    @property
    def batch_ms(self) -> float | None:
        """A moving average of how long recent batch runs took (``None`` before the first)."""
        return self._batch_ms

    def ahead_ms(self, rows: int) -> tuple[float, float]:
        """Predicted ms of the work ahead of a request of ``rows`` rows arriving now (the
        running batches' rest and the rows waiting) and of its own rows; ``(0, 0)`` before
        the first batch has been measured."""
        estimate = self.timer.estimate()
        if estimate is None:
            return 0.0, 0.0
        own = estimate.ms(rows)
        waiting = self._pending_rows + self._running_rows
        if not waiting:
            return 0.0, own
        batches = len(self._running_since) + math.ceil(self._pending_rows / self._max_batch_rows)
        ahead = estimate.ms(waiting, batches)
        if self._running_since:
            now = asyncio.get_running_loop().time()
            ahead -= (now - max(self._last_done_s, min(self._running_since))) * 1000.0
        return max(0.0, ahead), own

    async def submit(
        self,
        rows: np.ndarray,
        *,
        deadline_ms: float | None = None,
        max_tier: str | None = None,
        profile: Profile | None = None,
        priority: int = DEFAULT_PRIORITY,
    ) -> Answer:
        """Answer ``rows`` as part of a coalesced batch: this request's probabilities and
        decisions, one per row.

        ``rows`` must be validated already (``validate_batch``, as the request parser
        does), so that no bad request reaches a batch it would share with others: the
        coalescer only merges them. ``deadline_ms``: the request's budget from now;
        ``priority``: its class (1 first, see :mod:`cascade.load`). ``profile``: this
        request is profiled (see the class). Raises ``OverloadedError`` when the request's
        budget runs out before its batch could serve it.
        """
        batch = rows
        loop = asyncio.get_running_loop()
        waiting = _Waiting(batch, deadline_ms, max_tier, loop.time(), loop.create_future(),
                           profile, priority or DEFAULT_PRIORITY)  # fmt: skip
        self._pending.append(waiting)
        self._pending_rows += len(batch)
        if len(self._batches) < self._max_running and (
            self._pending_rows >= self._max_batch_rows or (self._eager and not self._batches)
        ):
            # An idle engine has nothing to wait for: waiting for company would only add
            # the window to every request at low load (measured: +2.5 ms p50 at c=1).
            self._flush()
        elif self._timer is None and len(self._batches) < self._max_running:
            self._timer = loop.call_later(self._max_wait_s, self._flush)
        try:
            answer = await waiting.future
        except asyncio.CancelledError:
            self._withdraw(waiting)
            raise
        if profile is not None:
            profile.mark("wake")
        return answer

    def _withdraw(self, waiting: _Waiting) -> None:
        """Drop a cancelled request that has not been dispatched yet."""
        if waiting in self._pending:
            self._pending.remove(waiting)
            self._pending_rows -= len(waiting.rows)
            if not self._pending and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _flush(self) -> None:
        """Start batches of what is waiting, while fewer than ``max_running`` run."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        while self._pending and len(self._batches) < self._max_running:
            batch = self._take(loop.time())
            if not batch:
                continue  # every request taken was refused: take the next ones
            rows = sum(len(w.rows) for w in batch)
            self._running_rows += rows
            task = loop.create_task(self._run_batch(batch, rows))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _take(self, now_s: float) -> list[_Waiting]:
        """The next batch: by priority class, oldest first, up to ``max_batch_rows`` rows of
        one shape. Every waiting request that cannot be answered in time from its place in
        the queue is refused now, not when its turn comes: a shed is fast, and no batch
        carries a request whose client has given up."""
        if self._lifo and self._pending_rows > self._max_batch_rows:
            # a queue is forming: newest first, they have the most budget left
            self._pending.sort(key=lambda w: (w.priority, -w.arrived_s))
        else:
            self._pending.sort(key=lambda w: (w.priority, w.arrived_s))
        self._sweep(now_s)
        if not self._pending:
            return []
        first = self._pending[0]
        taken: list[_Waiting] = []
        rest: list[_Waiting] = []
        rows = 0
        for w in self._pending:
            fits = rows + len(w.rows) <= self._max_batch_rows or not taken
            if fits and w.rows.shape[1:] == first.rows.shape[1:]:
                taken.append(w)
                rows += len(w.rows)
            else:
                rest.append(w)
        self._pending = rest
        self._pending_rows -= rows
        return taken

    def _sweep(self, now_s: float) -> None:
        """Refuse the waiting requests (in queue order) whose budget is shorter than the
        predicted time to serve the rows up to and including theirs."""
        estimate = self.timer.estimate()
        if estimate is None or not any(w.deadline_ms is not None for w in self._pending):
            return
        kept: list[_Waiting] = []
        rows = 0
        for w in self._pending:
            if w.deadline_ms is not None:
                through = rows + len(w.rows)
                batches = math.ceil(through / self._max_batch_rows)
                need_ms = estimate.ms(through, batches)
                waited_ms = (now_s - w.arrived_s) * 1000.0
                left_ms = w.deadline_ms - waited_ms
                if left_ms < need_ms:
                    self._pending_rows -= len(w.rows)
                    w.future.set_exception(OverloadedError(
                        f"shed after {waited_ms:.3g} ms in the queue: {max(0.0, left_ms):.3g} "
                        f"ms of the deadline left, serving it from its place in the queue "
                        f"needs about {need_ms:.3g} ms",
                        retry_after_s=need_ms / 1000.0,
                    ))  # fmt: skip
                    continue
            kept.append(w)
            rows += len(w.rows)
        self._pending = kept

    async def _run_batch(self, batch: list[_Waiting], rows: int) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        self._running_since.append(began)
        try:
            await self._answer(batch, began)
        finally:
            # Leave the running set now, not in the done-callback: that runs only after the
            # callers resumed, and a caller submitting again at once would find the engine
            # "busy" and wait a whole window for nothing.
            task = asyncio.current_task()
            if task is not None:
                self._batches.discard(task)
            now = loop.time()
            # the service time of this batch: since the later of its start and the previous
            # completion, so overlapping batches share the time instead of each counting it
            self.timer.observe(rows, (now - max(began, self._last_done_s)) * 1000.0)
            self._last_done_s = now
            self._running_since.remove(began)
            self._running_rows -= rows
        if self._pending and (self._eager or self._pending_rows >= self._max_batch_rows):
            self._flush()  # the rows that gathered while this batch ran go now
        elif self._pending and self._timer is None:
            self._timer = loop.call_later(self._max_wait_s, self._flush)

    async def _answer(self, batch: list[_Waiting], now_s: float) -> None:
        rows = np.concatenate([w.rows for w in batch])
        deadlines: list[float | None] = []
        max_tiers: list[str | None] = []
        profiled: Profile | None = None  # any profiled request's: they share the clock
        for w in batch:
            max_tiers.extend([w.max_tier] * len(w.rows))
            remaining = (
                None
                if w.deadline_ms is None
                else max(0.0, w.deadline_ms - (now_s - w.arrived_s) * 1000.0)
            )
            deadlines.extend([remaining] * len(w.rows))
            if w.profile is not None:
                profiled = w.profile
        began_s = ended_s = 0.0
        try:
            if profiled is None:
                result = await self._run(rows, deadlines, max_tiers)
            else:
                began_s = profiled.clock()
                result = await self._run(rows, deadlines, max_tiers, timeline=True)
                ended_s = profiled.clock()
            took_ms = (asyncio.get_running_loop().time() - now_s) * 1000.0
            self._batch_ms = (
                took_ms if self._batch_ms is None else 0.8 * self._batch_ms + 0.2 * took_ms
            )
            if len(result.decisions) != len(rows) or len(result.probabilities) != len(rows):
                raise BackendError(
                    f"the batch run answered {len(result.decisions)} of {len(rows)} rows"
                )
        except asyncio.CancelledError:
            for w in batch:
                w.future.cancel()
            raise
        except Exception as exc:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        start = 0
        for w in batch:
            if not w.future.done():  # its caller may have been cancelled meanwhile
                if w.profile is not None:
                    w.profile.ran_in_batch(began_s, ended_s, result.calls,
                                           requests=len(batch), rows=len(rows))  # fmt: skip
                w.future.set_result(_slice(result, start, start + len(w.rows)))
            start += len(w.rows)


def _slice(result: BatchResult, start: int, stop: int) -> Answer:
    return result.probabilities[start:stop], result.decisions[start:stop]
