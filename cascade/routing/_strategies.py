"""Routing strategies: small routers that decide, over a ``RouteContext`` that does.

A router sees the whole batch. It asks the context to run tiers on subsets of rows
(``await ctx.call(tier, idx)``), records what each tier said (``ctx.record``) and answers
rows (``ctx.answer``). The context owns timing, costs, deadlines and the trace, so a router
is a few lines of numpy over confidences::

    class FirstTierOnly:
        async def route(self, ctx: RouteContext, rows: np.ndarray) -> None:
            call = await ctx.call("tiny", ctx.everyone())
            ctx.record(call, accepted=True)
            ctx.settle(call, None, "last_tier")
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from cascade.errors import BackendError, CascadeError, PolicyError
from cascade.policy import (
    ChainStep,
    ComplexityRouting,
    ConfidenceMeasure,
    ConfidenceRouting,
    Routing,
    SlaRouting,
    SpeculativeRouting,
)
from cascade.routing._confidence import calibrate, confidence
from cascade.routing._decision import BatchResult, Decision, Reason, Step, TierCall
from cascade.routing._deferral import LearnedRule
from cascade.routing._scorers import Scorer

__all__ = [
    "ROUTERS",
    "ComplexityRouter",
    "ConfidenceRouter",
    "Pending",
    "RouteContext",
    "Router",
    "SlaRouter",
    "SpeculativeRouter",
    "make_router",
    "routed_tiers",
]

TierCaller = Callable[
    [str, np.ndarray, float, float | None],
    Awaitable[tuple[np.ndarray, float, dict[str, float] | None]],
]
"""``(tier, rows, started_s, budget_ms) -> (probabilities, ended_s, parts)``: the engine's one
way to call a tier; ``budget_ms`` (``None``: no deadline) caps the call's timeout, ``parts``
is what the backend said of the call's time (profiled batches only, else ``None``)."""


def _retrieve(task: asyncio.Task[TierCall]) -> None:
    # a call nobody awaits any more (cancelled speculation) must not log "never retrieved"
    if not task.cancelled():
        task.exception()


class Pending:
    """A tier call started in the background (``ctx.start``); await it or cancel it."""

    def __init__(self, ctx: RouteContext, tier: str, idx: np.ndarray, started_s: float) -> None:
        self._ctx = ctx
        self.tier = tier
        self.idx = idx
        self.started_s = started_s
        self._task = asyncio.create_task(ctx._run(tier, idx, started_s))
        self._task.add_done_callback(_retrieve)

    def done(self) -> bool:
        return self._task.done()

    async def result(self) -> TierCall:
        """Wait for the call to finish and return it."""
        return await self._task

    def cancel(self) -> TierCall:
        """Stop the call unless it already finished; return what it cost so far.

        A cancelled call charges each request ``cost * elapsed / estimate`` (at most
        ``cost``): the share of the work it was expected to take that was spent.
        """
        task = self._task
        if task.done() and not task.cancelled() and task.exception() is None:
            return task.result()
        task.cancel()
        ctx = self._ctx
        now_s = ctx._clock()
        elapsed_ms = (now_s - self.started_s) * 1000.0
        estimate = ctx.estimate(self.tier)
        share = 1.0 if estimate <= 0 else min(1.0, max(0.0, elapsed_ms / estimate))
        call = TierCall(
            tier=self.tier,
            idx=self.idx,
            probabilities=None,
            started_ms=ctx._ms(self.started_s),
            ended_ms=ctx._ms(now_s),
            cost=ctx._costs[self.tier] * share,
        )
        ctx.keep(call)
        return call


class RouteContext:
    """What a router may do with one batch: run tiers, read time and deadlines, answer.

    Built by the engine for each ``run``. Indices (``idx``) are positions in the batch.
    With ``timeline`` it keeps every tier call (completed, failed or cancelled) for the
    batch's result: a profiled request is in the batch.

    Example (inside a router)::

        call = await ctx.call("tiny", ctx.everyone())
        sure = confidence(call.probabilities, "max_prob") >= 0.9
        ctx.record(call, accepted=sure)
        ctx.settle(call, sure, "confident")
        if ctx.now_ms() + ctx.estimate("large") <= ctx.deadline_ms(call.idx[~sure]).min(): ...
    """

    def __init__(
        self,
        *,
        rows: np.ndarray,
        budgets_ms: np.ndarray | None,
        call: TierCaller,
        clock: Callable[[], float],
        start_s: float,
        estimate: Callable[[str], float],
        costs: Mapping[str, float],
        caps: np.ndarray | None = None,
        gear: str | None = None,
        gear_cap: float = np.inf,
        threshold_shift: float = 0.0,
        timeline: bool = False,
    ) -> None:
        self.rows = rows
        self.n = len(rows)
        self._budgets_ms = budgets_ms
        self._row_caps = caps
        # the gear's cap binds every row; where it is below a row's own, the answer is degraded
        self._caps = (
            caps
            if np.isinf(gear_cap)
            else np.minimum(np.full(self.n, np.inf) if caps is None else caps, gear_cap)
        )
        self.gear = gear
        self.threshold_shift = threshold_shift
        self._caller = call
        self._clock = clock
        self._start_s = start_s
        self._estimate = estimate
        self._costs = dict(costs)
        self._pending: list[Pending] = []
        self._calls: list[TierCall] | None = [] if timeline else None
        self._steps: list[list[Step]] = [[] for _ in range(self.n)]
        self._answered_by: list[str | None] = [None] * self.n
        self._reason: list[Reason | None] = [None] * self.n
        self._latency_ms = np.zeros(self.n)
        self._degraded = np.zeros(self.n, dtype=bool)
        self._scores: np.ndarray | None = None
        self._probabilities: np.ndarray | None = None
        self._classes_from: str | None = None

    # -- reading ---------------------------------------------------------------------------

    def everyone(self) -> np.ndarray:
        """The indices of all rows of the batch."""
        return np.arange(self.n)

    def _ms(self, seconds: float) -> float:
        return (seconds - self._start_s) * 1000.0

    def now_ms(self) -> float:
        """Engine time, in ms since the batch started."""
        return self._ms(self._clock())

    def deadline_ms(self, idx: np.ndarray) -> np.ndarray:
        """Deadlines of rows ``idx`` in engine ms (``inf`` where the routing has none)."""
        if self._budgets_ms is None:
            return np.full(len(idx), np.inf)
        deadlines: np.ndarray = self._budgets_ms[idx]
        return deadlines

    def estimate(self, tier: str) -> float:
        """The engine's current latency estimate of one call to ``tier``, in ms."""
        return self._estimate(tier)

    def allowed(self, tier: str, idx: np.ndarray, *, gear: bool = True) -> np.ndarray:
        """Which rows ``idx`` may go to ``tier``: its cost is within their ``max_tier``'s and
        the gear's (``gear=False``: their own cap alone)."""
        caps = self._caps if gear else self._row_caps
        if caps is None:
            return np.ones(len(idx), dtype=bool)
        allowed: np.ndarray = self._costs[tier] <= caps[idx]
        return allowed

    def shifted(self, threshold: float | None) -> float | None:
        """``threshold`` as the current gear applies it (lowered by its shift, at least 0)."""
        if threshold is None or self.threshold_shift == 0:
            return threshold
        return max(0.0, threshold - self.threshold_shift)

    # -- calling tiers ---------------------------------------------------------------------

    @property
    def has_deadlines(self) -> bool:
        """Whether rows of this batch carry deadlines (always under SLA routing)."""
        return self._budgets_ms is not None

    def _budget_ms(self, idx: np.ndarray, started_s: float) -> float | None:
        """What is left of the most generous deadline among rows ``idx`` at ``started_s``."""
        if self._budgets_ms is None or idx.size == 0:
            return None
        latest = float(self._budgets_ms[idx].max())
        return None if not np.isfinite(latest) else latest - self._ms(started_s)

    async def _run(
        self, tier: str, idx: np.ndarray, started_s: float, *, bounded: bool = True
    ) -> TierCall:
        budget_ms = self._budget_ms(idx, started_s) if bounded else None
        probabilities, ended_s, parts = await self._caller(
            tier, self.rows[idx], started_s, budget_ms
        )
        call = TierCall(
            tier=tier,
            idx=idx,
            probabilities=probabilities,
            started_ms=self._ms(started_s),
            ended_ms=self._ms(ended_s),
            cost=self._costs[tier],
            parts=parts,
        )
        if self._calls is not None:
            self._calls.append(call)
        return call

    def keep(self, call: TierCall) -> None:
        """Add a call that gave no answer (cancelled, failed) to the batch's timeline, if
        one is kept: its time was spent all the same."""
        if self._calls is not None:
            self._calls.append(call)

    async def call(self, tier: str, idx: np.ndarray, *, bounded: bool = True) -> TierCall:
        """Run ``tier`` on rows ``idx`` as one batched call and return it.

        ``bounded``: the call may not outlive the rows' deadlines (a floor tier, which
        answers even rows already late, is called with ``bounded=False``).
        """
        return await self._run(tier, idx, self._clock(), bounded=bounded)

    def start(self, tier: str, idx: np.ndarray) -> Pending:
        """Start ``tier`` on rows ``idx`` in the background; the clock starts now.

        Calls still running when the router returns (or fails) are cancelled.
        """
        pending = Pending(self, tier, idx, self._clock())
        self._pending.append(pending)
        return pending

    async def call_many(self, plan: Sequence[tuple[str, np.ndarray]]) -> list[TierCall]:
        """Run several ``(tier, idx)`` calls concurrently; the first failure is raised."""
        pendings = [self.start(tier, idx) for tier, idx in plan]
        if not pendings:
            return []
        await asyncio.wait([p._task for p in pendings], return_when=asyncio.FIRST_EXCEPTION)
        for pending in pendings:
            task = pending._task
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
        return [await p.result() for p in pendings]

    async def try_call(self, tier: str, idx: np.ndarray) -> TierCall | BackendError:
        """``call``, but a failed, timed-out or refused call is recorded in the trace of rows
        ``idx`` (a step with its ``error``, charged the share of the estimate it ran) and
        returned instead of raised, for the router to fall back."""
        started_s = self._clock()
        try:
            return await self._run(tier, idx, started_s)
        except BackendError as exc:
            self.record_failure(tier, idx, started_s, exc)
            return exc

    def record_failure(
        self, tier: str, idx: np.ndarray, started_s: float, error: BaseException
    ) -> None:
        """Add a failed step for ``tier`` to the trace of rows ``idx``."""
        now_s = self._clock()
        elapsed_ms = (now_s - started_s) * 1000.0
        estimate = self.estimate(tier)
        share = 1.0 if estimate <= 0 else min(1.0, max(0.0, elapsed_ms / estimate))
        cost = self._costs[tier] * share
        step = Step(tier=tier, confidence=None, threshold=None, accepted=False,
                    latency_ms=elapsed_ms, cost=cost, error=str(error))  # fmt: skip
        if self._calls is not None:
            self.keep(TierCall(tier, idx, None, self._ms(started_s), self._ms(now_s), cost))
        for row in idx.tolist():
            self._steps[row].append(step)

    def cancel_pending(self) -> None:
        """Cancel the background calls that are still running (the engine's cleanup)."""
        for pending in self._pending:
            if not pending.done():
                pending._task.cancel()

    # -- the trace -------------------------------------------------------------------------

    def record(
        self,
        call: TierCall,
        *,
        accepted: np.ndarray | bool,
        confidences: np.ndarray | None = None,
        threshold: float | None = None,
    ) -> None:
        """Add one step per row of ``call`` to its trace (``accepted``: its answer was taken)."""
        n = len(call.idx)
        taken = np.broadcast_to(np.asarray(accepted, dtype=bool), (n,)).tolist()
        scores = [None] * n if confidences is None else np.asarray(confidences, float).tolist()
        latency = float(call.latency_ms)
        cost = float(call.cost)
        for row, conf, ok in zip(call.idx.tolist(), scores, taken, strict=True):
            self._steps[row].append(
                Step(
                    tier=call.tier,
                    confidence=conf,
                    threshold=threshold,
                    accepted=ok,
                    latency_ms=latency,
                    cost=cost,
                )
            )

    def settle(
        self,
        call: TierCall,
        which: np.ndarray | None,
        reason: Reason,
        *,
        degraded: bool | np.ndarray = False,
        scores: np.ndarray | None = None,
    ) -> None:
        """Answer the rows of ``call`` selected by the mask ``which`` (``None``: all of them).

        Their answer is the call's probabilities, known when the call ended. ``degraded``:
        one flag for all, or a mask over the call's rows like ``which``.
        """
        mask = np.ones(len(call.idx), dtype=bool) if which is None else which
        if not mask.any():
            return
        rows = call.idx[mask]
        if call.probabilities is None:
            raise RuntimeError(f"cannot answer with the cancelled call to tier '{call.tier}'")
        answers = call.probabilities[mask]
        if self._probabilities is None:
            self._probabilities = np.zeros((self.n, answers.shape[1]), dtype=np.float32)
            self._classes_from = call.tier
        elif answers.shape[1] != self._probabilities.shape[1]:
            raise BackendError(
                f"tier '{call.tier}' returns {answers.shape[1]} classes, tier "
                f"'{self._classes_from}' {self._probabilities.shape[1]}: the tiers of one "
                "cascade must share their classes"
            )
        for row in rows.tolist():
            if self._answered_by[row] is not None:
                raise RuntimeError(
                    f"row {row} answered twice (by '{self._answered_by[row]}' and '{call.tier}')"
                )
            self._answered_by[row] = call.tier
            self._reason[row] = reason
        self._probabilities[rows] = answers
        self._latency_ms[rows] = call.ended_ms
        self._degraded[rows] = degraded if isinstance(degraded, bool) else degraded[mask]
        if scores is not None:
            if self._scores is None:
                self._scores = np.full(self.n, np.nan)
            self._scores[rows] = scores[mask]

    def result(self) -> BatchResult:
        """The batch's answers; every row must have been answered exactly once."""
        missing = [i for i, tier in enumerate(self._answered_by) if tier is None]
        if missing or self._probabilities is None:
            raise RuntimeError(f"the router left rows {missing[:10]} unanswered")
        decisions = []
        for i in range(self.n):
            steps = tuple(self._steps[i])
            tier, reason = self._answered_by[i], self._reason[i]
            assert tier is not None and reason is not None
            score = None if self._scores is None else float(self._scores[i])
            decisions.append(
                Decision(
                    steps=steps,
                    answered_by=tier,
                    reason=reason,
                    cost=float(sum(step.cost for step in steps)),
                    latency_ms=float(self._latency_ms[i]),
                    deadline_ms=None if self._budgets_ms is None else float(self._budgets_ms[i]),
                    degraded=bool(self._degraded[i]),
                    gear=self.gear,
                    score=None if score is None or np.isnan(score) else score,
                )
            )
        calls = () if self._calls is None else tuple(self._calls)
        return BatchResult(self._probabilities, tuple(decisions), calls)


class Router(Protocol):
    """A routing strategy: answers every row of the batch through ``ctx``."""

    async def route(self, ctx: RouteContext, rows: np.ndarray) -> None: ...


def _confidences(call: TierCall, measure: ConfidenceMeasure, step: ChainStep | None) -> np.ndarray:
    assert call.probabilities is not None
    raw = confidence(call.probabilities, measure)
    return calibrate(call.probabilities, raw, None if step is None else step.calibration, measure)


def _learned(
    ctx: RouteContext, call: TierCall, rule: LearnedRule, calls: Mapping[str, TierCall]
) -> np.ndarray:
    """A learned rule's confidences for ``call``'s rows, from the earlier tiers' outputs on the
    same rows (their indices are sorted supersets of this call's) and, if it reads them, the
    rows themselves."""
    assert call.probabilities is not None
    earlier = []
    for tier in rule.earlier:
        before = calls[tier]
        assert before.probabilities is not None
        earlier.append(before.probabilities[np.searchsorted(before.idx, call.idx)])
    rows = ctx.rows[call.idx] if rule.inputs else None
    return rule.confidences(call.probabilities, earlier=earlier, rows=rows)


async def _chain(
    ctx: RouteContext,
    chain: Sequence[ChainStep],
    measure: ConfidenceMeasure,
    max_escalations: int | None,
    rules: Mapping[str, LearnedRule] | None = None,
) -> None:
    final = len(chain) - 1 if max_escalations is None else min(len(chain) - 1, max_escalations)
    deadlines = ctx.has_deadlines
    open_rows = ctx.everyone()
    # The first tier is the floor: rows whose budget cannot even fit it still get its
    # answer, flagged degraded (shedding them is admission control's job, not routing's).
    late = np.zeros(ctx.n, dtype=bool)
    if deadlines:
        late = ctx.now_ms() + ctx.estimate(chain[0].tier) > ctx.deadline_ms(open_rows)
    previous: TierCall | None = None
    calls: dict[str, TierCall] = {}  # what each tier answered so far, for learned rules
    for k, step in enumerate(chain[: final + 1]):
        if previous is None:
            # the floor: nothing to fall back to, so it raises, and it answers late rows too
            call = await ctx.call(step.tier, open_rows, bounded=False)
        else:
            attempt = await ctx.try_call(step.tier, open_rows)
            if isinstance(attempt, BackendError):
                # the best answer already computed: the previous tier's, degraded
                ctx.settle(previous, np.isin(previous.idx, open_rows), "fallback", degraded=True)
                return
            call = attempt
        calls[step.tier] = call
        rule = None if rules is None else rules.get(step.tier)
        if rule is not None and k < final:
            conf = _learned(ctx, call, rule, calls)
        else:
            conf = _confidences(call, measure, step)
        threshold = ctx.shifted(step.threshold)
        none = np.zeros(conf.size, dtype=bool)
        sure = conf >= threshold if threshold is not None else none
        # answers the gear let through that full quality would have escalated
        loosened = sure & ~(conf >= step.threshold) if threshold != step.threshold else none
        degraded = late[call.idx]
        capped = geared = none  # geared: stopped by the gear's cap, not the row's own
        if k == final:
            stop = np.ones(conf.size, dtype=bool)
        else:
            capped = ~ctx.allowed(chain[k + 1].tier, call.idx)
            geared = capped & ctx.allowed(chain[k + 1].tier, call.idx, gear=False)
            stop = sure | capped
            if deadlines:
                fits = ctx.now_ms() + ctx.estimate(chain[k + 1].tier) <= ctx.deadline_ms(call.idx)
                stop |= degraded | ~fits
        ctx.record(call, confidences=conf, threshold=threshold, accepted=stop)
        ctx.settle(call, degraded, "deadline", degraded=True)
        ctx.settle(call, stop & sure & ~degraded, "confident", degraded=loosened)
        ctx.settle(call, stop & capped & ~sure & ~degraded, "max_tier", degraded=geared)
        rest = stop & ~sure & ~degraded & ~capped
        if k < final:
            ctx.settle(call, rest, "deadline")
        else:
            ctx.settle(call, rest, "last_tier" if k == len(chain) - 1 else "max_escalations")
        open_rows = call.idx[~stop]
        if open_rows.size == 0:
            return
        previous = call


class ConfidenceRouter:
    """Tiers in chain order; a row stops at the first tier whose confidence clears its threshold.

    Each tier runs once, on the rows still open. ``max_escalations`` = m answers the rows
    still open after m + 1 tiers with the tier they reached. Rows that carry a deadline are
    routed as under SLA routing: no escalation starts that its estimate says would end late.
    When an escalation fails (error, timeout, open circuit) its rows keep the answer they
    already had, ``degraded`` with reason ``fallback``.
    """

    def __init__(
        self,
        routing: ConfidenceRouting | SlaRouting,
        *,
        scorer: Scorer | None = None,
        rules: Mapping[str, LearnedRule] | None = None,
    ) -> None:
        self.routing = routing
        missing = [s.tier for s in routing.chain if s.deferral is not None and s.tier not in (
            rules or {})]  # fmt: skip
        if missing:
            raise PolicyError(
                f"chain steps {missing} have a learned deferral rule: build them with "
                "LearnedRule (the engine does, given base_dir)"
            )
        self.rules = dict(rules or {})

    async def route(self, ctx: RouteContext, rows: np.ndarray) -> None:
        r = self.routing
        await _chain(ctx, r.chain, r.measure, r.max_escalations, self.rules)


class SlaRouter(ConfidenceRouter):
    """A confidence chain that never starts a tier its estimate says would end past a deadline.

    Rows that cannot fit the next tier are answered by the current one (reason
    ``deadline``). The first tier always runs: rows whose budget is below even its estimate
    are answered by it, ``degraded`` and with reason ``deadline``. The chain is the
    confidence router's; what SLA routing adds is a default deadline for every request
    (``default_deadline_ms``), applied by the engine.
    """


class ComplexityRouter:
    """A scorer places every row in a score band up front; each band's tier runs once.

    A score equal to a band's ``below`` belongs to the next band. The tiers run
    concurrently; the score is kept in ``Decision.score``.
    """

    def __init__(self, routing: ComplexityRouting, *, scorer: Scorer | None = None) -> None:
        if scorer is None:
            raise PolicyError(
                f"complexity routing needs a scorer (build one for '{routing.scorer.name}' "
                "with make_scorer)"
            )
        self.routing = routing
        self.scorer = scorer

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        name = self.routing.scorer.name
        try:
            scores = np.asarray(self.scorer.score(rows), dtype=np.float64)
        except CascadeError:
            raise
        except Exception as exc:
            raise BackendError(f"scorer '{name}': {type(exc).__name__}: {exc}") from exc
        if scores.shape != (len(rows),) or not np.isfinite(scores).all():
            raise BackendError(
                f"scorer '{name}': expected {len(rows)} finite scores, got shape "
                f"{list(scores.shape)}"
            )
        return np.clip(scores, 0.0, 1.0)

    async def route(self, ctx: RouteContext, rows: np.ndarray) -> None:
        bands = self.routing.bands
        scores = self._scores(rows)
        bounds = [band.below for band in bands[:-1]]
        tier_of_row = np.array([band.tier for band in bands], dtype=object)[
            np.searchsorted(np.asarray(bounds, dtype=np.float64), scores, side="right")
        ]
        capped = np.zeros(ctx.n, dtype=bool)
        geared = np.zeros(ctx.n, dtype=bool)  # capped by the gear, not by the row's own cap
        everyone = ctx.everyone()
        for tier in dict.fromkeys(band.tier for band in bands):
            over = (tier_of_row == tier) & ~ctx.allowed(tier, everyone)
            if over.any():  # the band's tier is past the row's max_tier: its cheapest allowed
                tier_of_row[over] = _cheapest_allowed(ctx, bands, everyone[over])
                capped |= over
                geared |= over & ctx.allowed(tier, everyone, gear=False)
        by_cost = sorted(dict.fromkeys(band.tier for band in bands), key=ctx._costs.__getitem__)
        late = np.zeros(ctx.n, dtype=bool)
        hopeless = np.zeros(ctx.n, dtype=bool)  # not even the cheapest tier fits: degraded
        if ctx.has_deadlines:
            # a band tier that cannot finish in time gives way to the best cheaper one that can
            deadline = ctx.deadline_ms(everyone)
            for k, tier in enumerate(by_cost[1:], start=1):
                misses = (tier_of_row == tier) & (ctx.now_ms() + ctx.estimate(tier) > deadline)
                if misses.any():
                    tier_of_row[misses] = _best_fitting(ctx, by_cost[:k], everyone[misses])
                    late |= misses
            cheapest = by_cost[0]
            hopeless = (tier_of_row == cheapest) & (
                ctx.now_ms() + ctx.estimate(cheapest) > deadline
            )
        plan = []
        for tier in dict.fromkeys(band.tier for band in bands):  # one call per tier
            idx = np.flatnonzero(tier_of_row == tier)
            if idx.size:
                plan.append((tier, idx))
        failed = np.zeros(ctx.n, dtype=bool)
        while plan:
            calls = await asyncio.gather(*(ctx.try_call(tier, idx) for tier, idx in plan))
            retry: dict[str, list[np.ndarray]] = {}
            for (tier, idx), call in zip(plan, calls, strict=True):
                if isinstance(call, BackendError):
                    cheaper = by_cost[: by_cost.index(tier)]
                    if not cheaper:
                        raise call  # nothing cheaper to fall back to
                    retry.setdefault(cheaper[-1], []).append(idx)
                    failed[idx] = True
                    continue
                ctx.record(call, accepted=True)
                row_failed = failed[call.idx]
                row_late = (late | hopeless)[call.idx] & ~row_failed
                row_capped = capped[call.idx] & ~row_failed & ~row_late
                plain = ~(row_failed | row_late | row_capped)
                row_scores = scores[call.idx]
                ctx.settle(call, plain, "band", scores=row_scores)
                ctx.settle(call, row_capped, "max_tier", scores=row_scores,
                           degraded=geared[call.idx])  # fmt: skip
                ctx.settle(call, row_late & ~hopeless[call.idx], "deadline", scores=row_scores)
                ctx.settle(call, row_late & hopeless[call.idx], "deadline", scores=row_scores,
                           degraded=True)  # fmt: skip
                ctx.settle(call, row_failed, "fallback", scores=row_scores, degraded=True)
            plan = [(tier, np.concatenate(parts)) for tier, parts in retry.items()]


def _best_fitting(ctx: RouteContext, tiers: Sequence[str], idx: np.ndarray) -> np.ndarray:
    """For rows ``idx``, the most expensive of ``tiers`` (cheapest first) that fits their
    deadline by its estimate, or the cheapest when none does."""
    best = np.full(len(idx), tiers[0], dtype=object)
    deadline = ctx.deadline_ms(idx)
    for tier in tiers[1:]:
        best[ctx.now_ms() + ctx.estimate(tier) <= deadline] = tier
    return best


def _cheapest_allowed(ctx: RouteContext, bands: Sequence[Any], idx: np.ndarray) -> np.ndarray:
    """For rows ``idx``, the most expensive band tier their ``max_tier`` allows."""
    tiers = sorted(dict.fromkeys(band.tier for band in bands), key=lambda t: ctx._costs[t])
    best = np.full(len(idx), tiers[0], dtype=object)
    for tier in tiers[1:]:
        best[ctx.allowed(tier, idx)] = tier
    return best


class SpeculativeRouter:
    """Start the cheap and the expensive tier together on every row.

    Rows whose cheap confidence clears the threshold take the cheap answer; the rest wait
    for the expensive one. When every row is confident the expensive call is cancelled and
    charged for the share of its estimated time that had passed.
    """

    def __init__(self, routing: SpeculativeRouting, *, scorer: Scorer | None = None) -> None:
        self.routing = routing

    async def route(self, ctx: RouteContext, rows: np.ndarray) -> None:
        r = self.routing
        everyone = ctx.everyone()
        capped = ~ctx.allowed(r.expensive, everyone)
        late = np.zeros(ctx.n, dtype=bool)
        if ctx.has_deadlines:
            late = ctx.now_ms() + ctx.estimate(r.expensive) > ctx.deadline_ms(everyone)
        skip = capped | late  # rows the expensive tier is never started for
        cheap_pending = ctx.start(r.cheap, everyone)
        expensive_pending = ctx.start(r.expensive, everyone[~skip]) if not skip.all() else None
        cheap = await cheap_pending.result()
        assert cheap.probabilities is not None
        raw = confidence(cheap.probabilities, r.measure)
        conf = calibrate(cheap.probabilities, raw, r.calibration, r.measure)
        threshold = ctx.shifted(r.threshold)
        assert threshold is not None
        sure = conf >= threshold
        loosened = sure & ~(conf >= r.threshold)
        geared = capped & ctx.allowed(r.expensive, everyone, gear=False)
        ctx.record(cheap, confidences=conf, threshold=threshold, accepted=sure | skip)
        ctx.settle(cheap, sure, "speculative_cheap", degraded=loosened)
        ctx.settle(cheap, capped & ~sure, "max_tier", degraded=geared)
        ctx.settle(cheap, late & ~capped & ~sure, "deadline")
        if expensive_pending is None:
            return
        waiting = ~sure[expensive_pending.idx]
        if not waiting.any():
            expensive = expensive_pending.cancel()
        else:
            try:
                expensive = await expensive_pending.result()
            except BackendError as exc:
                ctx.record_failure(r.expensive, expensive_pending.idx[waiting],
                                   expensive_pending.started_s, exc)  # fmt: skip
                fallback = np.zeros(ctx.n, dtype=bool)
                fallback[expensive_pending.idx[waiting]] = True
                ctx.settle(cheap, fallback, "fallback", degraded=True)
                return
        ctx.record(expensive, accepted=waiting)
        ctx.settle(expensive, waiting, "speculative_expensive")


RouterFactory = Callable[..., Router]

ROUTERS: Mapping[str, RouterFactory] = {
    "confidence": ConfidenceRouter,
    "sla": SlaRouter,
    "complexity": ComplexityRouter,
    "speculative": SpeculativeRouter,
}
"""Routers by the policy's ``routing.kind``; each is built as ``Router(routing, scorer=...)``."""


def make_router(
    routing: Routing | Any,
    *,
    scorer: Scorer | None = None,
    rules: Mapping[str, LearnedRule] | None = None,
) -> Router:
    """Build the router for a policy's ``routing`` section; ``rules``: the learned deferral
    rules of its chain steps, by tier (confidence and SLA chains only).

    Example::

        router = make_router(policy.routing)
    """
    kind = getattr(routing, "kind", None)
    factory = ROUTERS.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise PolicyError(f"unknown routing kind {kind!r} (allowed: {', '.join(sorted(ROUTERS))})")
    if rules:
        if not isinstance(routing, ConfidenceRouting | SlaRouting):
            raise PolicyError(f"learned deferral rules need a chain routing, not {kind!r}")
        chain_router = SlaRouter if isinstance(routing, SlaRouting) else ConfidenceRouter
        return chain_router(routing, scorer=scorer, rules=rules)
    return factory(routing, scorer=scorer)


def routed_tiers(routing: Routing) -> list[str]:
    """The tiers a routing section sends requests to, first tier first, each once."""
    if isinstance(routing, ConfidenceRouting | SlaRouting):
        names = [step.tier for step in routing.chain]
    elif isinstance(routing, ComplexityRouting):
        names = [band.tier for band in routing.bands]
    else:
        names = [routing.cheap, routing.expensive]
    return list(dict.fromkeys(names))
