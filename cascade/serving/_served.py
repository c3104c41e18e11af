"""One policy as served: its engine (or ranker), coalescer, gear shifter and metadata.

Shared by every runtime. Tiers placed ``inline`` run in this process through onnxruntime;
the runtime supplies a backend for every other tier (a Ray ``DeploymentHandle`` wrapper, a
remote HTTP endpoint, ...) through ``remote``: a factory per tier name that gets the input
spec of the local models.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cascade.backends import HttpModel, InputSpec, Model, open_model
from cascade.catalog import TierInfo, require_model_files, resolve_tiers
from cascade.errors import CascadeError, PolicyError
from cascade.load import (
    DEFAULT_PRIORITY,
    Gear,
    GearShifter,
    Refusal,
    StandingDelay,
    admit,
    behind,
)
from cascade.policy import Policy, PolicyFile
from cascade.routing import BatchResult, Engine, Ranker, routed_tiers
from cascade.serving._answer_log import AnswerLog
from cascade.serving._audit import LiveAudit, audit_limits
from cascade.serving._auth import load_token
from cascade.serving._caching import AnswerCaches
from cascade.serving._coalescer import Coalescer
from cascade.serving._profile import Profile
from cascade.serving._protocol import policy_hash

__all__ = ["RemoteFactory", "Served", "ServedModel", "ServedRanker", "serve_policy"]

_LOG = logging.getLogger("cascade.serving")

RemoteFactory = Callable[[InputSpec], Model]


class Beside(Protocol):
    """What the service asks of a policy run beside the served one
    (:class:`~cascade.serving._shadow.Shadow`)."""

    def offer(self, rows: Any, labels: Any, decisions: Any) -> None:
        """A served request's rows, answers and decisions, once its reply is built."""

    def shed(self) -> None:
        """The service shed a request of this model."""

    def stop(self) -> None:
        """Stop running beside it."""

    def report(self) -> dict[str, Any]:
        """The side-by-side report."""


@dataclass(frozen=True)
class _Tiers:
    """A policy's tiers made ready to serve: every backend, the input spec, what the cards say."""

    backends: dict[str, Model]
    spec: InputSpec
    info: dict[str, TierInfo]
    classes: list[str] | None
    n_classes: int | None

    @property
    def costs(self) -> dict[str, float]:
        return {name: tier.cost for name, tier in self.info.items()}


def _open_tiers(loaded: PolicyFile, remote: Mapping[str, RemoteFactory]) -> _Tiers:
    """Every tier's backend (local ONNX or remote), the input spec and the classes.

    A tier the runtime supplies in ``remote`` gets that backend; a tier whose model is an
    endpoint URL gets an :class:`HttpModel` checked against the local tiers' classes; every
    other tier runs here through onnxruntime.
    """
    policy = loaded.policy
    require_model_files(loaded)
    info = resolve_tiers(loaded, remote=True)
    local = {
        name: open_model(info[name].path, providers=tier.providers)
        for name, tier in policy.tiers.items()
        if name not in remote and not tier.is_remote
    }
    # The input spec from a session this process runs anyway; only a policy of remote
    # tiers alone needs one loaded here just to read it.
    files = [name for name, tier in policy.tiers.items() if not tier.is_remote]
    if not local and not files:
        raise PolicyError(
            f"{loaded.path or policy.name}: every tier is an endpoint URL; serving needs at "
            "least one ONNX tier (it fixes the input and the classes)"
        )
    first = next(iter(local.values()), None) or open_model(info[files[0]].path)
    card = next((t.card for t in info.values() if t.card is not None), None)
    classes = list(card.classes) if card is not None else None
    n_classes = len(classes) if classes else getattr(first, "n_classes", None)
    backends: dict[str, Model] = dict(local)
    for name, factory in remote.items():
        backends[name] = factory(first.input_spec)
    for name, tier in policy.tiers.items():
        if tier.is_remote and name not in backends:
            where = f"{loaded.path or policy.name}: tiers.{name}"
            token_file = loaded.tier_file(name, "token_file")
            ca_bundle = loaded.tier_file(name, "ca_bundle")
            try:
                token = None
                if token_file is not None or tier.token_env is not None:
                    token = load_token(file=token_file, env=tier.token_env)
                backends[name] = HttpModel(
                    tier.model,
                    input_spec=first.input_spec,
                    classes=classes,
                    n_classes=n_classes,
                    name=name,
                    timeout_s=tier.timeout_ms / 1000.0,
                    token=token,
                    ca_bundle=ca_bundle,
                )
            except (CascadeError, ValueError) as exc:
                raise PolicyError(f"{where}: {exc}") from None
    return _Tiers(backends, first.input_spec, info, classes, n_classes)


def serve_policy(
    loaded: PolicyFile,
    *,
    remote: Mapping[str, RemoteFactory],
    coalesce_ms: float = 2.0,
    front_queue_ms: float = 0.0,
) -> ServedModel | ServedRanker:
    """The served form of ``loaded``: a classification cascade or a ranking one."""
    if loaded.policy.stages:
        return ServedRanker(loaded, remote=remote)
    return ServedModel(
        loaded, remote=remote, coalesce_ms=coalesce_ms, front_queue_ms=front_queue_ms
    )


class Served:
    """What every served policy has: its tiers' backends, the policy and its version, the
    requests in flight; a new policy with the same tiers swaps in without a rebuild."""

    def __init__(self, tiers: _Tiers, policy: Policy) -> None:
        self.backends = tiers.backends
        self.spec = tiers.spec
        self.in_flight = 0  # requests inside this process: the load the gears follow
        self.policy = policy
        self.version = policy_hash(policy)
        self.shadow: Beside | None = None  # a candidate policy beside this one (_shadow)

    @property
    def tiers(self) -> list[str]:
        return list(self.policy.tiers)

    def same_tiers(self, policy: Policy) -> bool:
        """Whether ``policy`` has exactly these tiers, so it can swap in without a rebuild."""
        return self.policy.tiers == policy.tiers

    def set_policy(self, policy: Policy) -> None:
        """Take ``policy`` (same tiers) from the next request on."""
        self.policy = policy
        self.version = policy_hash(policy)

    def load(self) -> dict[str, Any]:
        """The load state metadata reports."""
        return {"in_flight": self.in_flight}

    async def aclose(self) -> None:
        """Close the connections of remote tiers (the server's shutdown calls it)."""
        audit = getattr(self, "audit", None)
        if audit is not None:
            audit.close()
        for backend in self.backends.values():
            close = getattr(backend, "aclose", None)
            if close is not None:
                await close()


class ServedRanker(Served):
    """A loaded ranking policy: its :class:`~cascade.routing.Ranker` and metadata."""

    def __init__(self, loaded: PolicyFile, *, remote: Mapping[str, RemoteFactory]) -> None:
        tiers = _open_tiers(loaded, remote)
        super().__init__(tiers, loaded.policy)
        self.ranker = Ranker(loaded.policy, tiers.backends, costs=tiers.costs)

    def same_tiers(self, policy: Policy) -> bool:
        """Whether ``policy`` has these tiers and stage tiers, so it swaps in as is."""
        return super().same_tiers(policy) and [s.tier for s in self.policy.stages] == [
            s.tier for s in policy.stages
        ]

    def set_policy(self, policy: Policy) -> None:
        """New keeps, limits and filter cut from the next query on."""
        self.ranker.replace_policy(policy)
        super().set_policy(policy)


class ServedModel(Served):
    """A loaded policy ready to answer: engine, coalescer, gears and what metadata reports.

    Example::

        served = ServedModel(read_policy("policies/digits.yaml"), remote={}, coalesce_ms=2)
        probabilities, decisions = await served.infer(rows, deadline_ms=None, max_tier=None)
    """

    def __init__(
        self,
        loaded: PolicyFile,
        *,
        remote: Mapping[str, RemoteFactory],
        coalesce_ms: float = 2.0,
        front_queue_ms: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        tiers = _open_tiers(loaded, remote)
        super().__init__(tiers, loaded.policy)
        self._clock = clock  # the gears' (tests inject one)
        self.classes = tiers.classes
        self.n_classes = tiers.n_classes or 0
        self.engine = Engine(
            loaded.policy,
            tiers.backends,
            costs=tiers.costs,
            latency_ms={n: t.latency_ms for n, t in tiers.info.items()},
            base_dir=loaded.base_dir,
        )
        # the queue discipline: FIFO, the default; CASCADE_QUEUE=adaptive-lifo is there
        # only to measure the alternative (benchmarks/overload.py --queue)
        discipline = os.environ.get("CASCADE_QUEUE", "fifo")
        if discipline not in ("fifo", "adaptive-lifo"):
            raise PolicyError(f"CASCADE_QUEUE must be fifo or adaptive-lifo, got {discipline!r}")
        self.coalescer = Coalescer(
            self._run_batch,
            max_wait_ms=coalesce_ms,
            discipline="adaptive-lifo" if discipline == "adaptive-lifo" else "fifo",
        )
        self._costs = tiers.costs
        self._latency_ms = {n: t.latency_ms for n, t in tiers.info.items()}
        self.arrivals = StandingDelay(clock=clock)  # the delay before our code
        self.front_queue_ms = front_queue_ms  # of it, what a queue in front may add on purpose
        self.caches: AnswerCaches | None = None
        self.audit: LiveAudit | None = None
        self._take_policy(loaded.policy, cache_changed=True)
        self._base_dir = loaded.base_dir  # where a reloaded policy's log.path starts
        self.answer_log: AnswerLog | None = None
        self._take_log(loaded)

    @property
    def costs(self) -> dict[str, float]:
        """Each tier's cost per row, from its card (or the policy)."""
        return self._costs

    def _run_batch(
        self,
        rows: np.ndarray,
        deadlines: list[float | None],
        caps: list[str | None],
        /,
        *,
        timeline: bool = False,
    ) -> Awaitable[BatchResult]:
        # the engine's coroutine itself, not one wrapped around it: one frame per batch
        gear = self.shifter.gear
        return self.engine.run_validated(
            rows,
            deadlines_ms=deadlines,
            max_tiers=caps,
            gear=gear if self.automatic else gear.name,
            timeline=timeline,
        )

    def set_policy(self, policy: Policy) -> None:
        """Take ``policy`` (same tiers) from the next batch on; the gear restarts at normal.

        Its caches start empty when the cache section changed; else they stay, and entries
        of the old policy are never served again (they are keyed by the policy's hash).
        """
        # the log's folder first: a policy whose log.path is refused changes nothing
        loaded = PolicyFile(policy=policy, path=None, base_dir=self._base_dir)
        loaded.log_dir()
        self.engine.replace_policy(policy)
        changed = self.policy.cache != policy.cache
        super().set_policy(policy)
        self._take_policy(policy, cache_changed=changed)
        self._take_log(loaded)

    def _take_log(self, loaded: PolicyFile) -> None:
        """Open the policy's answer log, keeping the one open when its section is the same
        (its writer, file and counters go on); another section closes it first."""
        section, directory = loaded.policy.log, loaded.log_dir()
        current = self.answer_log
        if current is not None and (current.section, current.directory) == (section, directory):
            return
        self.close_log()
        if section is not None and directory is not None:
            self.answer_log = AnswerLog(directory, loaded.policy.name, section,
                                        classes=self.classes)  # fmt: skip

    def close_log(self) -> None:
        """Write what the answer log holds and close its file (blocks: see :meth:`aclose`)."""
        log, self.answer_log = self.answer_log, None
        if log is not None:
            log.close()

    async def aclose(self) -> None:
        """Close remote tiers' connections and the answer log (its last writes off the loop)."""
        await asyncio.to_thread(self.close_log)
        await super().aclose()

    def _take_policy(self, policy: Policy, *, cache_changed: bool) -> None:
        if cache_changed:
            text = self.spec.dtype == "string"
            self.caches = AnswerCaches(policy.cache, text=text) if policy.cache else None
        gears = [Gear("normal", 0.0)] + [
            Gear(g.name, float(g.queue_depth_at_least), g.max_tier, g.threshold_shift)
            for g in policy.gears
        ]
        # no gears of the policy's own: automatic ones, on the queueing delay's share of
        # the budget, each leaving out the most expensive tier still routed to
        self.automatic = not policy.gears and policy.overload.auto_degrade
        if self.automatic:
            tiers = sorted(routed_tiers(policy.chain_routing), key=self._costs.__getitem__)
            step = policy.overload.degrade_at
            gears += [
                Gear(f"auto-{tier}", step * k, tier)
                for k, tier in enumerate(reversed(tiers[:-1]), start=1)
            ]
        self.shifter = GearShifter(
            gears, hysteresis=policy.gear_hysteresis, hold_s=policy.gear_hold_s, clock=self._clock
        )
        self._take_audit(policy)

    def _take_audit(self, policy: Policy) -> None:
        """The live audit of ``policy`` (its ``audit`` section), started afresh: windows
        of the policy served before say nothing of this one's thresholds."""
        sink = None
        if self.audit is not None:
            sink = self.audit.sink
            self.audit.close()
        limits = audit_limits(policy, self._costs, self._latency_ms)
        if limits is None:
            self.audit = None
            return
        section = policy.audit
        assert section is not None
        self.audit = LiveAudit(
            policy.name,
            limits,
            backend=self.backends[limits.top],
            first=self.engine.first_tier,
            gear=lambda: self.shifter.gear.name,
            queue_rows=section.queue_rows,
            batch_rows=section.batch_rows,
            timeout_s=policy.tiers[limits.top].timeout_ms / 1000.0,
        )
        self.audit.sink = sink

    def shift(self, load: float) -> None:
        """Feed the gear shifter ``load``; a change of gear is logged (``cascade.serving``)."""
        before = self.shifter.gear
        after = self.shifter.update(load)
        if after is not before:
            _LOG.warning("gear shifted model=%s from=%s to=%s load=%.3g%s", self.policy.name,
                         before.name, after.name, load,
                         " (automatic)" if self.automatic else "")  # fmt: skip

    def admit(
        self,
        deadline_ms: float | None,
        rows: int,
        priority: int = DEFAULT_PRIORITY,
        *,
        delay_ms: float | None = None,
    ) -> Refusal | None:
        """Why a request of ``rows`` rows with ``deadline_ms`` left cannot be answered in
        time now (``None``: admitted), and the automatic gear's look at the queue.

        The work ahead of it is the coalescer's: its running batches' rest and the rows
        waiting, at the measured service time (:meth:`Coalescer.ahead_ms`). Before any
        batch is measured, the cheapest path's latency estimate stands in. ``delay_ms``: how
        long after its send it got here (when the client said when it sent it): while that
        delay stands above its target the process is behind its arrivals, and the delayed
        requests are refused (:func:`~cascade.load.behind`).
        """
        ahead_ms, own_ms = self.coalescer.ahead_ms(rows)
        if own_ms == 0.0:
            own_ms = self.engine.latency_estimate(self.engine.first_tier)
        waited = 0.0 if delay_ms is None else delay_ms
        budget = self.policy.overload.target_delay_ms if deadline_ms is None else deadline_ms
        if self.automatic and budget is not None:
            # the share of the whole budget (from the send) the queues take: ours and the
            # one before our code
            load = (ahead_ms + waited) / max(budget + waited, 1e-3)
            if self.front_queue_ms > 0:
                # behind a bounded queue (HAProxy's) the backlog waits there, refused at its
                # bound, and ours stays short: how full that queue stands is the load
                load = max(load, self.arrivals.standing_ms / self.front_queue_ms)
            self.shift(load)
        if delay_ms is not None:
            standing = self.arrivals.observe(delay_ms)
            whole = None if deadline_ms is None else deadline_ms + delay_ms
            refusal = behind(delay_ms, standing, whole, priority, allowed_ms=self.front_queue_ms)
            if refusal is not None:
                return refusal
        return admit(deadline_ms, ahead_ms=ahead_ms, own_ms=own_ms, priority=priority)

    async def infer(
        self,
        rows: np.ndarray,
        *,
        deadline_ms: float | None,
        max_tier: str | None,
        profile: Profile | None = None,
        priority: int = DEFAULT_PRIORITY,
    ) -> tuple[Any, tuple[Any, ...]]:
        """Probabilities and decisions for ``rows`` (validated: the request parser's), from
        the caches, else the cascade. ``profile``: this request is profiled (its cache,
        coalescer and batch phases are recorded in it)."""

        # ``profile`` goes to route as an argument, not captured: an unprofiled request
        # then allocates nothing more for it (a captured variable costs a cell per call)
        def route(misses: Any, profile: Profile | None) -> Any:
            return self.coalescer.submit(
                misses,
                deadline_ms=deadline_ms,
                max_tier=max_tier,
                profile=profile,
                priority=priority,
            )

        if self.caches is None:
            routed: tuple[Any, tuple[Any, ...]] = await route(rows, profile)
            return routed
        cached: tuple[Any, tuple[Any, ...]] = await self.caches.read_through(
            self.version, rows, route, deadline_ms=deadline_ms, profile=profile
        )
        return cached

    def load(self) -> dict[str, Any]:
        """The load state metadata reports: gear, requests in flight, breaker states."""
        return {
            **({"cache": self.caches.stats()} if self.caches is not None else {}),
            **({"log": self.answer_log.stats()} if self.answer_log is not None else {}),
            "gear": self.shifter.gear.name,
            **super().load(),
            "breakers": {
                tier: breaker.state
                for tier in self.policy.tiers
                if (breaker := self.engine.breaker(tier)) is not None
            },
        }
