"""The coalescer: concurrent requests share one engine run, and each gets its own answers.

Rows carry their id in column 0, so every answer can be traced back to the row it is for.
Nothing here asserts on timing: requests are submitted together with ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from cascade.backends import FakeModel
from cascade.errors import BackendError, OverloadedError
from cascade.policy import Policy
from cascade.routing import BatchResult, Decision, Engine
from cascade.serving import Coalescer


def rows_with_ids(*ids: int, width: int = 2) -> np.ndarray:
    rows = np.zeros((len(ids), width), dtype=np.float32)
    rows[:, 0] = ids
    return rows


def table_answer(rows: np.ndarray) -> np.ndarray:
    """Two-class probabilities that encode the row id: p(class 1) = id / 100."""
    p = rows[:, 0] / 100.0
    return np.column_stack([1.0 - p, p]).astype(np.float32)


def decision(tier: str = "fake") -> Decision:
    return Decision(
        steps=(), answered_by=tier, reason="last_tier", cost=0.0, latency_ms=0.0, deadline_ms=None
    )


class Recorder:
    """A plain async ``run`` that records its calls and can be told to fail or wait."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, list[float | None]]] = []
        self.max_tiers: list[list[str | None]] = []
        self.fail_next: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(
        self, rows: np.ndarray, deadlines: list[float | None], max_tiers: list[str | None]
    ) -> BatchResult:
        self.calls.append((rows.copy(), list(deadlines)))
        self.max_tiers.append(list(max_tiers))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return BatchResult(table_answer(rows), tuple(decision() for _ in rows))


def check_own_answers(rows: np.ndarray, answer: tuple[np.ndarray, tuple[Decision, ...]]) -> None:
    probabilities, decisions = answer
    np.testing.assert_allclose(probabilities, table_answer(rows))
    assert len(decisions) == len(rows)


def test_concurrent_submits_share_one_engine_run_and_get_their_own_rows() -> None:
    tiny = FakeModel(table_answer, width=2, name="tiny")
    large = FakeModel(lambda rows: np.tile([0.0, 1.0], (len(rows), 1)), width=2, name="large")
    policy = Policy.model_validate(
        {
            "name": "p",
            "tiers": {"tiny": {"model": "tiny.onnx"}, "large": {"model": "large.onnx"}},
            "routing": {
                "kind": "confidence",
                "chain": [{"tier": "tiny", "threshold": 0.9}, {"tier": "large"}],
            },
        }
    )
    engine = Engine(
        policy,
        {"tiny": tiny, "large": large},
        costs={"tiny": 0.01, "large": 1.0},
        latency_ms={"tiny": 0.1, "large": 1.0},
    )
    # ids >= 90 are confident on tiny (p = id/100); the others escalate to large
    requests = [rows_with_ids(95, 10), rows_with_ids(20), rows_with_ids(99, 98, 30)]

    async def main() -> list[tuple[np.ndarray, tuple[Decision, ...]]]:
        coalescer = Coalescer(
            lambda rows, d, m: engine.run(rows, deadlines_ms=d, max_tiers=m),
            max_batch_rows=64,
            max_wait_ms=20,
            eager=False,
        )
        return await asyncio.gather(*(coalescer.submit(r) for r in requests))

    answers = asyncio.run(main())
    assert tiny.calls == [6]  # one batched call for all three requests
    assert large.calls == [3]
    for rows, (probabilities, decisions) in zip(requests, answers, strict=True):
        ids = rows[:, 0].tolist()
        assert [d.answered_by for d in decisions] == ["tiny" if i >= 90 else "large" for i in ids]
        for i, row in zip(ids, probabilities, strict=True):
            expected = table_answer(rows_with_ids(int(i)))[0] if i >= 90 else [0.0, 1.0]
            np.testing.assert_allclose(row, expected)


def test_max_batch_rows_splits_batches_and_big_requests_run_alone() -> None:
    requests = [rows_with_ids(1, 2, 3), rows_with_ids(4, 5, 6), rows_with_ids(7, 8)]
    big = rows_with_ids(*range(10, 15))

    async def main() -> tuple[Recorder, list[Any]]:
        run = Recorder()
        coalescer = Coalescer(run, eager=False, max_batch_rows=4, max_wait_ms=20)
        answers = await asyncio.gather(*(coalescer.submit(r) for r in [*requests, big]))
        return run, answers

    run, answers = asyncio.run(main())
    assert sorted(len(rows) for rows, _ in run.calls) == [2, 3, 3, 5]
    for rows, answer in zip([*requests, big], answers, strict=True):
        check_own_answers(rows, answer)


def test_a_full_batch_starts_without_waiting() -> None:
    async def main() -> Recorder:
        run = Recorder()
        coalescer = Coalescer(run, eager=False, max_batch_rows=3, max_wait_ms=60_000)
        await asyncio.gather(
            coalescer.submit(rows_with_ids(1, 2)), coalescer.submit(rows_with_ids(3))
        )
        return run

    run = asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert [len(rows) for rows, _ in run.calls] == [3]


def test_a_failed_run_reaches_every_caller_of_its_batch_and_the_next_batch_works() -> None:
    async def main() -> tuple[Recorder, list[Any], Any]:
        run = Recorder()
        run.fail_next = BackendError("tier 'tiny': boom")
        coalescer = Coalescer(run, eager=False, max_wait_ms=5)
        failed = await asyncio.gather(
            coalescer.submit(rows_with_ids(1)),
            coalescer.submit(rows_with_ids(2, 3)),
            return_exceptions=True,
        )
        later = await coalescer.submit(rows_with_ids(4))
        return run, failed, later

    run, failed, later = asyncio.run(main())
    assert len(run.calls) == 2
    assert all(isinstance(exc, BackendError) and "boom" in str(exc) for exc in failed)
    check_own_answers(rows_with_ids(4), later)


def test_a_run_answering_too_few_rows_fails_its_batch() -> None:
    async def short(rows: np.ndarray, deadlines: list[float | None], _: object) -> BatchResult:
        return BatchResult(table_answer(rows[:1]), (decision(),))

    async def main() -> None:
        coalescer = Coalescer(short, eager=False, max_wait_ms=1)
        await coalescer.submit(rows_with_ids(1, 2))

    with pytest.raises(BackendError, match="the batch run answered 1 of 2 rows"):
        asyncio.run(main())


def test_cancelling_a_waiting_caller_withdraws_its_rows_and_serves_the_others() -> None:
    async def main() -> tuple[Recorder, list[Any], int, int]:
        run = Recorder()
        coalescer = Coalescer(run, eager=False, max_wait_ms=20)
        a = asyncio.create_task(coalescer.submit(rows_with_ids(1)))
        b = asyncio.create_task(coalescer.submit(rows_with_ids(2, 3)))
        c = asyncio.create_task(coalescer.submit(rows_with_ids(4)))
        await asyncio.sleep(0)  # all three are pending now
        before = coalescer.pending_rows
        b.cancel()
        answers = await asyncio.gather(a, b, c, return_exceptions=True)
        return run, answers, before, coalescer.pending_rows

    run, (a, b, c), before, after = asyncio.run(main())
    assert (before, after) == (4, 0)
    assert isinstance(b, asyncio.CancelledError)
    assert [rows[:, 0].tolist() for rows, _ in run.calls] == [[1.0, 4.0]]
    check_own_answers(rows_with_ids(1), a)
    check_own_answers(rows_with_ids(4), c)


def test_cancelling_a_caller_during_its_batch_run_leaves_the_others_served() -> None:
    async def main() -> list[Any]:
        run = Recorder()
        run.gate = asyncio.Event()
        coalescer = Coalescer(run, eager=False, max_wait_ms=1)
        a = asyncio.create_task(coalescer.submit(rows_with_ids(1)))
        b = asyncio.create_task(coalescer.submit(rows_with_ids(2)))
        await run.started.wait()
        b.cancel()
        await asyncio.sleep(0)
        run.gate.set()
        return await asyncio.gather(a, b, return_exceptions=True)

    a, b = asyncio.run(main())
    assert isinstance(b, asyncio.CancelledError)
    check_own_answers(rows_with_ids(1), a)


def test_cancelling_every_waiting_caller_runs_nothing() -> None:
    async def main() -> Recorder:
        run = Recorder()
        coalescer = Coalescer(run, eager=False, max_wait_ms=1)
        task = asyncio.create_task(coalescer.submit(rows_with_ids(1)))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.01)  # past max_wait_ms: the timer must have been cancelled
        return run

    assert asyncio.run(main()).calls == []


def test_deadlines_are_passed_per_row_less_the_time_waited() -> None:
    async def main() -> Recorder:
        run = Recorder()
        coalescer = Coalescer(run, eager=False, max_wait_ms=1)
        await asyncio.gather(
            coalescer.submit(rows_with_ids(1, 2), deadline_ms=50.0),
            coalescer.submit(rows_with_ids(3)),
            coalescer.submit(rows_with_ids(4, 5, 6), deadline_ms=20.0),
        )
        return run

    ((rows, deadlines),) = asyncio.run(main()).calls
    assert rows[:, 0].tolist() == [1, 2, 3, 4, 5, 6]
    assert deadlines[2] is None
    assert deadlines[0] == deadlines[1]
    assert deadlines[3] == deadlines[4] == deadlines[5]
    first, last = deadlines[0], deadlines[3]
    assert first is not None and 0 <= first <= 50.0
    assert last is not None and 0 <= last <= 20.0


def test_max_tier_is_passed_per_row() -> None:
    async def main() -> Recorder:
        run = Recorder()
        coalescer = Coalescer(run, eager=False, max_wait_ms=1)
        await asyncio.gather(
            coalescer.submit(rows_with_ids(1, 2), max_tier="tiny"),
            coalescer.submit(rows_with_ids(3)),
        )
        return run

    assert asyncio.run(main()).max_tiers == [["tiny", "tiny", None]]


def test_back_to_back_requests_of_one_caller_do_not_wait_for_a_window() -> None:
    # A caller resumes before the finished batch's task is cleaned up; the coalescer must
    # already count the engine idle then, or each such request waits the whole window.
    async def caller(coalescer: Coalescer) -> None:
        for i in range(5):
            await coalescer.submit(rows_with_ids(i))  # straight on, no task in between

    async def main() -> int:
        run = Recorder()
        await asyncio.wait_for(caller(Coalescer(run, max_wait_ms=60_000)), timeout=5)
        return len(run.calls)

    assert asyncio.run(main()) == 5


def test_requests_of_another_width_go_to_another_batch() -> None:
    async def main() -> Recorder:
        run = Recorder()
        coalescer = Coalescer(run, eager=False, max_wait_ms=5)
        await asyncio.gather(
            coalescer.submit(rows_with_ids(1, width=2)), coalescer.submit(rows_with_ids(2, width=3))
        )
        return run

    assert sorted(rows.shape for rows, _ in asyncio.run(main()).calls) == [(1, 2), (1, 3)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_batch_rows": 0}, "max_batch_rows must be >= 1, got 0"),
     ({"max_wait_ms": -1.0}, "max_wait_ms must be >= 0, got -1.0")],
)  # fmt: skip
def test_options_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Coalescer(Recorder(), **kwargs)


def test_eager_coalescer_runs_a_lone_request_at_once_and_batches_under_load() -> None:
    calls: list[int] = []
    release = asyncio.Event()

    async def run(rows: np.ndarray, deadlines: list[float | None], _: object) -> BatchResult:
        calls.append(len(rows))
        if len(calls) == 1:
            await release.wait()  # the first batch is busy while the others arrive
        decisions = tuple(
            Decision(steps=(), answered_by="tiny", reason="confident", cost=0.0,
                     latency_ms=0.0, deadline_ms=d)
            for d in deadlines
        )  # fmt: skip
        return BatchResult(np.tile(rows[:, :1], (1, 2)).astype(np.float32), decisions)

    async def main() -> None:
        # A window of a minute: if a lone request waited for company, wait_for would fail.
        coalescer = Coalescer(run, max_wait_ms=60_000)
        first = asyncio.create_task(coalescer.submit(np.ones((1, 3))))
        await asyncio.sleep(0)
        others = [asyncio.create_task(coalescer.submit(np.full((1, 3), i))) for i in range(4)]
        await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *others), timeout=5)
        assert calls == [1, 4]  # the four that arrived during the first batch went together
        lone = await asyncio.wait_for(coalescer.submit(np.full((1, 3), 7.0)), timeout=5)
        assert lone[0][0, 0] == 7.0 and calls == [1, 4, 1]

    asyncio.run(main())


def test_a_queued_request_whose_deadline_ran_out_is_refused_before_it_is_served() -> None:
    async def main() -> tuple[Recorder, Any, Any]:
        run = Recorder()
        run.gate = asyncio.Event()
        coalescer = Coalescer(run, max_running=1)
        coalescer.timer.observe(rows=1, ms=5.0)  # measured: 5 ms a row
        first = asyncio.ensure_future(coalescer.submit(rows_with_ids(1)))
        await run.started.wait()  # the first batch holds the engine
        stale = asyncio.ensure_future(coalescer.submit(rows_with_ids(2), deadline_ms=20.0))
        patient = asyncio.ensure_future(coalescer.submit(rows_with_ids(3)))
        await asyncio.sleep(0.05)  # longer than the 20 ms the stale request had
        assert coalescer.pending_rows == 2  # both wait here, behind the running batch
        run.gate.set()
        await first
        results = await asyncio.gather(stale, patient, return_exceptions=True)
        return run, results[0], results[1]

    run, stale, patient = asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert isinstance(stale, OverloadedError)
    assert "shed after" in str(stale) and "in the queue" in str(stale)
    check_own_answers(rows_with_ids(3), patient)
    served = [int(i) for rows, _ in run.calls for i in rows[:, 0]]
    assert served == [1, 3]  # no work was spent on the stale request


def test_a_batch_takes_the_higher_priority_class_first() -> None:
    async def main() -> Recorder:
        run = Recorder()
        run.gate = asyncio.Event()
        coalescer = Coalescer(run, max_running=1, max_batch_rows=2)
        first = asyncio.ensure_future(coalescer.submit(rows_with_ids(1)))
        await run.started.wait()
        low = asyncio.ensure_future(coalescer.submit(rows_with_ids(20, 21), priority=3))
        normal = asyncio.ensure_future(coalescer.submit(rows_with_ids(30, 31)))
        high = asyncio.ensure_future(coalescer.submit(rows_with_ids(10, 11), priority=1))
        await asyncio.sleep(0)
        run.gate.set()
        await asyncio.gather(first, low, normal, high)
        return run

    run = asyncio.run(asyncio.wait_for(main(), timeout=30))
    order = [rows[:, 0].tolist() for rows, _ in run.calls]
    assert order == [[1], [10, 11], [30, 31], [20, 21]]


def test_the_work_ahead_is_the_measured_service_time_of_the_rows_queued() -> None:
    async def main() -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        run = Recorder()
        run.gate = asyncio.Event()
        coalescer = Coalescer(run, max_running=1, max_batch_rows=8)
        before = coalescer.ahead_ms(4)  # nothing measured: no estimate to refuse by
        for rows in (2, 4, 8):
            coalescer.timer.observe(rows, 1.0 + 0.5 * rows)  # 1 ms a batch, 0.5 a row
        idle = coalescer.ahead_ms(4)
        first = asyncio.ensure_future(coalescer.submit(rows_with_ids(*range(8))))
        await run.started.wait()
        queued = [asyncio.ensure_future(coalescer.submit(rows_with_ids(*range(4))))
                   for _ in range(3)]  # fmt: skip
        await asyncio.sleep(0)
        busy = coalescer.ahead_ms(4)
        run.gate.set()
        await asyncio.gather(first, *queued)
        return before, idle, busy

    before, idle, busy = asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert before == (0.0, 0.0)
    assert idle == (0.0, pytest.approx(3.0))  # one batch of 4 rows: 1 + 4 * 0.5
    ahead, own = busy
    # the running batch (8 rows) and 12 rows queued (two more batches), less the few
    # microseconds the running batch has already run
    assert ahead == pytest.approx(3 * 1.0 + 20 * 0.5, abs=0.5)
    assert own == pytest.approx(3.0)


def test_adaptive_lifo_serves_the_newest_first_once_a_queue_forms() -> None:
    async def main(discipline: Any) -> list[list[int]]:
        run = Recorder()
        run.gate = asyncio.Event()
        coalescer = Coalescer(run, max_running=1, max_batch_rows=2, discipline=discipline)
        first = asyncio.ensure_future(coalescer.submit(rows_with_ids(1)))
        await run.started.wait()
        queued = []
        for i in (10, 20, 30):  # three batches' worth wait: a queue has formed
            queued.append(asyncio.ensure_future(coalescer.submit(rows_with_ids(i, i + 1))))
            await asyncio.sleep(0.001)  # distinct arrival times
        run.gate.set()
        await asyncio.gather(first, *queued)
        return [rows[:, 0].tolist() for rows, _ in run.calls]

    assert asyncio.run(main("fifo")) == [[1], [10, 11], [20, 21], [30, 31]]
    # newest first while more than a batch waits; the last one left is served as it comes
    assert asyncio.run(main("adaptive-lifo")) == [[1], [30, 31], [20, 21], [10, 11]]
    with pytest.raises(ValueError, match="discipline"):
        Coalescer(Recorder(), discipline="random")  # type: ignore[arg-type]
