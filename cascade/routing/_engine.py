"""The engine: runs a policy's routing over tier backends for one batch of requests.

The same engine runs offline (a whole split as one batch), in tests (``FakeModel``s and a
fake clock) and in Ray Serve (backends are deployment handles). It owns the one place where
tiers are called: every call is timed with the injected clock, charged, folded into the
tier's latency estimate and has its failures translated.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascade.backends import CALL_DEADLINE, CALL_TIMES, Model, validate_batch
from cascade.errors import BackendError, CascadeError, InputError, ModelTimeout, PolicyError
from cascade.load import CircuitBreaker, Gear, LoadSignals, Outcome
from cascade.policy import ComplexityRouting, Policy, SlaRouting
from cascade.routing._decision import BatchResult
from cascade.routing._deferral import LearnedRule
from cascade.routing._scorers import Scorer, make_scorer
from cascade.routing._strategies import RouteContext, Router, make_router, routed_tiers

__all__ = ["Engine"]


class _DeadlineCut(Exception):
    """A call cut short by its request's deadline, on its way through the breaker."""


def _checked(tier: str, output: object, n: int) -> np.ndarray:
    """A backend's output as float32 probabilities ``[n, n_classes]``, or ``BackendError``."""
    probabilities = np.asarray(output, dtype=np.float32)
    if probabilities.ndim != 2 or probabilities.shape[0] != n or probabilities.shape[1] < 1:
        raise BackendError(
            f"tier '{tier}': expected probabilities of shape [{n}, n_classes], "
            f"got {list(probabilities.shape)}"
        )
    if not np.isfinite(probabilities).all():
        raise BackendError(f"tier '{tier}': returned non-finite probabilities")
    return probabilities


class Engine:
    """Routes batches of requests through a policy's tiers.

    ``costs`` are cost units charged per row for each tier it is sent to; ``latency_ms`` the
    initial estimate of one call per tier (from the policy or the model cards), updated
    after every call by an exponentially weighted moving average with weight ``ewma`` on
    the newest observation (0 keeps the estimates fixed). ``clock`` returns seconds.
    Complexity routing needs a ``scorer``, or ``base_dir`` to build the policy's one from.

    Example::

        engine = Engine(
            policy,
            {"tiny": OnnxModel("tiny.onnx"), "large": OnnxModel("large.onnx")},
            costs={"tiny": 0.01, "large": 1.0},
            latency_ms={"tiny": 0.05, "large": 2.0},
        )
        result = await engine.run(rows)
        result.labels, result.decisions[0].to_dict()
    """

    def __init__(
        self,
        policy: Policy,
        backends: Mapping[str, Model],
        *,
        costs: Mapping[str, float],
        latency_ms: Mapping[str, float],
        clock: Callable[[], float] = time.monotonic,
        scorer: Scorer | None = None,
        base_dir: Path | None = None,
        ewma: float = 0.2,
    ) -> None:
        if not 0.0 <= ewma <= 1.0:
            raise ValueError(f"ewma must lie in [0, 1], got {ewma}")
        self._backends = dict(backends)
        self._costs = {tier: float(cost) for tier, cost in costs.items()}
        self._estimates = {tier: float(ms) for tier, ms in latency_ms.items()}
        self._clock = clock
        self._base_dir = base_dir
        self._ewma = ewma
        self._policy, self._router, self._tiers = self._prepare(policy, scorer)
        self._breakers: dict[str, CircuitBreaker] = {}
        self._sync_breakers(policy)
        self.signals = LoadSignals(list(self._backends), clock=clock)

    def _sync_breakers(self, policy: Policy) -> None:
        """One breaker per tier of the policy that has one; a tier's survives a reload
        unless its settings changed."""
        wanted = {t: tier.breaker for t, tier in policy.tiers.items() if tier.breaker.enabled}
        for tier, spec in wanted.items():
            current = self._breakers.get(tier)
            if (
                current is None
                or current.failure_threshold != spec.failure_threshold
                or current.reset_after_s != spec.reset_after_s
            ):
                self._breakers[tier] = CircuitBreaker(
                    tier,
                    failure_threshold=spec.failure_threshold,
                    reset_after_s=spec.reset_after_s,
                    clock=self._clock,
                )
        for tier in [t for t in self._breakers if t not in wanted]:
            del self._breakers[tier]

    def breaker(self, tier: str) -> CircuitBreaker | None:
        """The circuit breaker guarding ``tier``, if the policy gives it one."""
        return self._breakers.get(tier)

    @property
    def first_tier(self) -> str:
        """The cheapest tier this policy routes to: the floor every path can fall back to."""
        return min(self._tiers, key=self._costs.__getitem__)

    @property
    def policy(self) -> Policy:
        """The policy the engine routes by now."""
        return self._policy

    def _prepare(self, policy: Policy, scorer: Scorer | None) -> tuple[Policy, Router, list[str]]:
        tiers = routed_tiers(policy.chain_routing)
        for what, table in (
            ("backends", self._backends),
            ("costs", self._costs),
            ("latency_ms", self._estimates),
        ):
            missing = [tier for tier in tiers if tier not in table]
            if missing:
                raise PolicyError(
                    f"policy '{policy.name}': {what} has no entry for tiers {missing} "
                    f"(given: {sorted(table)})"
                )
        bad = {t: v for t, v in [*self._costs.items(), *self._estimates.items()] if not v >= 0}
        if bad:
            raise ValueError(f"costs and latency estimates must be >= 0, got {bad}")
        routing = policy.routing
        if isinstance(routing, ComplexityRouting) and scorer is None:
            if self._base_dir is None:
                raise PolicyError(
                    f"policy '{policy.name}': complexity routing needs a scorer, or base_dir "
                    "to build its scorer from"
                )
            scorer = make_scorer(routing.scorer, base_dir=self._base_dir)
        return policy, make_router(routing, scorer=scorer, rules=self._rules(policy)), tiers

    def _rules(self, policy: Policy) -> dict[str, LearnedRule]:
        """The learned deferral rules of the policy's chain steps, opened from base_dir."""
        steps = [s for s in getattr(policy.routing, "chain", []) if s.deferral is not None]
        untrained = [s.tier for s in steps if s.deferral.model is None]
        if untrained:
            raise PolicyError(
                f"policy '{policy.name}': the learned deferral rules of {untrained} are not "
                "trained yet: run `cascade calibrate` on the policy first"
            )
        if steps and self._base_dir is None:
            raise PolicyError(
                f"policy '{policy.name}': learned deferral rules need base_dir to open "
                f"their model files ({[s.deferral.model for s in steps]})"
            )
        return {
            s.tier: LearnedRule(
                Path(self._base_dir or ".") / s.deferral.model,
                earlier=s.deferral.earlier,
                inputs=s.deferral.inputs,
            )
            for s in steps
        }

    def replace_policy(self, policy: Policy, *, scorer: Scorer | None = None) -> None:
        """Route by ``policy`` from the next ``run`` on; runs in flight finish on the old one.

        The backends, costs and estimates are kept, by tier name. An unusable policy raises
        ``PolicyError`` and leaves the old one in place.
        """
        self._policy, self._router, self._tiers = self._prepare(policy, scorer)
        self._sync_breakers(policy)

    def latency_estimate(self, tier: str) -> float:
        """The current estimate of one call to ``tier``, in ms."""
        try:
            return self._estimates[tier]
        except KeyError:
            raise PolicyError(
                f"no latency estimate for tier '{tier}' (tiers: {sorted(self._estimates)})"
            ) from None

    async def _call_tier(
        self,
        tier: str,
        rows: np.ndarray,
        started_s: float,
        budget_ms: float | None,
        *,
        policy: Policy,
        timed: bool = False,
    ) -> tuple[np.ndarray, float, dict[str, float] | None]:
        """Run one batched call to ``tier``; the only way the engine reaches a backend.

        The call gets the tier's ``timeout_ms`` or what is left of the rows' deadline,
        whichever is shorter; a deadline already passed fails it without calling. ``timed``
        (a profiled batch): the backend may say where the call's time went (``CALL_TIMES``),
        returned as the third item; otherwise that is ``None`` and nothing is set up for it.
        """
        timeout_ms = policy.tiers[tier].timeout_ms if tier in policy.tiers else None
        why = "its timeout"
        if budget_ms is not None and (timeout_ms is None or budget_ms < timeout_ms):
            timeout_ms, why = max(0.0, budget_ms), "the request's deadline"
            if timeout_ms <= 0:
                raise ModelTimeout(f"tier '{tier}': not called, the request's deadline passed")
        breaker = self._breakers.get(tier)
        load = self.signals.tier(tier)
        outcome: Outcome | None = None  # None: never called (refused by the breaker)
        parts: dict[str, float] | None = {} if timed else None
        try:
            # a tier that failed only because the request's deadline was short is not ill:
            # that timeout leaves the breaker's count alone (_DeadlineCut is no BackendError)
            async with breaker.guard() if breaker is not None else contextlib.nullcontext():
                load.started(len(rows))
                outcome = "error"
                try:
                    async with asyncio.timeout(None if timeout_ms is None else timeout_ms / 1e3):
                        ends = None if timeout_ms is None else time.monotonic() + timeout_ms / 1e3
                        token = CALL_DEADLINE.set(ends)
                        times = None if parts is None else CALL_TIMES.set(parts)
                        try:
                            output = await self._backends[tier].predict(rows)
                        finally:
                            CALL_DEADLINE.reset(token)
                            if times is not None:
                                CALL_TIMES.reset(times)
                except TimeoutError as exc:
                    outcome = "timeout"
                    if why != "its timeout":
                        raise _DeadlineCut from exc
                    raise ModelTimeout(
                        f"tier '{tier}': no answer within {timeout_ms:g} ms ({why})"
                    ) from exc
                except CascadeError:
                    raise
                except Exception as exc:
                    raise BackendError(f"tier '{tier}': {type(exc).__name__}: {exc}") from exc
                probabilities = _checked(tier, output, len(rows))
                outcome = "ok"
        except _DeadlineCut as cut:
            raise ModelTimeout(
                f"tier '{tier}': no answer within {timeout_ms:g} ms ({why})"
            ) from cut.__cause__
        finally:
            if outcome is not None:
                load.finished(len(rows), (self._clock() - started_s) * 1000.0, outcome=outcome)
        ended_s = self._clock()
        observed_ms = (ended_s - started_s) * 1000.0
        old = self._estimates[tier]
        self._estimates[tier] = (1.0 - self._ewma) * old + self._ewma * observed_ms
        return probabilities, ended_s, parts or None  # a backend that said nothing: None

    def _budgets(
        self, policy: Policy, n: int, deadlines_ms: Sequence[float | None] | None
    ) -> np.ndarray | None:
        if deadlines_ms is not None and len(deadlines_ms) != n:
            raise InputError(f"deadlines_ms: expected one per row ({n}), got {len(deadlines_ms)}")
        routing = policy.routing
        default = routing.default_deadline_ms if isinstance(routing, SlaRouting) else math.inf
        if deadlines_ms is None or all(d is None for d in deadlines_ms):
            return None if math.isinf(default) else np.full(n, default)
        budgets = np.array([default if d is None else d for d in deadlines_ms], dtype=float)
        given = np.array([d is not None for d in deadlines_ms])
        if not np.isfinite(budgets[given]).all():
            raise InputError("deadlines_ms: every deadline must be a finite number of ms")
        return budgets

    def check_max_tier(self, tier: str) -> None:
        """Raise ``InputError`` unless ``tier`` can cap this policy's routes.

        A cap must be a routed tier, or at least cost as much as the cheapest one: a cap
        below every tier would leave nothing to answer with.
        """
        tiers = self._tiers
        if tier not in self._costs:
            raise InputError(f"max_tier '{tier}' is not a tier of this policy (tiers: {tiers})")
        cheapest = min(tiers, key=self._costs.__getitem__)
        if self._costs[tier] < self._costs[cheapest]:
            raise InputError(
                f"max_tier '{tier}' is cheaper than every tier this policy routes to "
                f"({', '.join(tiers)}); the cheapest is '{cheapest}'"
            )

    def _caps(self, n: int, max_tiers: Sequence[str | None] | None) -> np.ndarray | None:
        if max_tiers is None or all(t is None for t in max_tiers):
            return None
        if len(max_tiers) != n:
            raise InputError(f"max_tiers: expected one per row ({n}), got {len(max_tiers)}")
        for tier in dict.fromkeys(t for t in max_tiers if t is not None):
            self.check_max_tier(tier)
        return np.array([np.inf if t is None else self._costs[t] for t in max_tiers])

    def _gear(self, policy: Policy, name: str | Gear | None) -> dict[str, Any]:
        if isinstance(name, Gear):  # a gear of the serving layer's own (automatic degradation)
            if name.max_tier is None and not name.threshold_shift:
                return {}
            cap = math.inf if name.max_tier is None else self._costs[name.max_tier]
            return {"gear": name.name, "gear_cap": cap, "threshold_shift": name.threshold_shift}
        if name is None or name == "normal":
            return {}
        gear = next((g for g in policy.gears if g.name == name), None)
        if gear is None:
            known = ", ".join(["normal", *(g.name for g in policy.gears)])
            raise PolicyError(f"policy '{policy.name}': no gear '{name}' (gears: {known})")
        cap = math.inf if gear.max_tier is None else self._costs[gear.max_tier]
        return {"gear": gear.name, "gear_cap": cap, "threshold_shift": gear.threshold_shift}

    async def run(
        self,
        rows: Any,
        *,
        deadlines_ms: Sequence[float | None] | None = None,
        max_tiers: Sequence[str | None] | None = None,
        gear: str | Gear | None = None,
        timeline: bool = False,
    ) -> BatchResult:
        """Answer every row of the batch; ``deadlines_ms[i]`` is row i's budget from now.

        A ``None`` deadline (or none given) takes the policy's default under SLA routing and
        means "no deadline" otherwise. No tier call outlives the deadlines of its rows, and no
        escalation starts that its latency estimate says would end late. ``max_tiers[i]``
        caps row i: it is sent to no tier costing more than that one, and answered by the
        best it may reach (reason ``max_tier`` where the cap changed the route). ``gear``
        names one of the policy's degradation gears (``None`` or ``"normal"``: full quality),
        or is a :class:`~cascade.load.Gear` of the caller's (automatic degradation):
        its ``max_tier`` caps every row and its ``threshold_shift`` lowers every threshold;
        answers that differ from full quality because of it are flagged ``degraded``. A batch
        that does not fit the first tier's input raises ``InputError`` as a whole.
        ``timeline``: see :meth:`run_validated`.
        """
        batch = validate_batch(rows, self._backends[self._tiers[0]].input_spec)
        return await self.run_validated(
            batch, deadlines_ms=deadlines_ms, max_tiers=max_tiers, gear=gear, timeline=timeline
        )

    async def run_validated(
        self,
        batch: np.ndarray,
        *,
        deadlines_ms: Sequence[float | None] | None = None,
        max_tiers: Sequence[str | None] | None = None,
        gear: str | Gear | None = None,
        timeline: bool = False,
    ) -> BatchResult:
        """:meth:`run` for a batch already checked by ``validate_batch`` against the first
        tier's input (the serving path validates each request once, where it is parsed).

        ``timeline``: the result carries the batch's tier calls (``BatchResult.calls``),
        each with what its backend said of its time: the coalescer asks for it when a
        profiled request is in the batch, and only then.
        """
        start_s = self._clock()
        policy, router = self._policy, self._router
        ctx = RouteContext(
            rows=batch,
            budgets_ms=self._budgets(policy, len(batch), deadlines_ms),
            call=functools.partial(self._call_tier, policy=policy, timed=timeline),
            clock=self._clock,
            start_s=start_s,
            estimate=self.latency_estimate,
            costs=self._costs,
            caps=self._caps(len(batch), max_tiers),
            timeline=timeline,
            **self._gear(policy, gear),
        )
        try:
            await router.route(ctx, batch)
        finally:
            ctx.cancel_pending()
        return ctx.result()
