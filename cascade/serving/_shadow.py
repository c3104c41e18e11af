"""Shadow policies: a candidate policy answers a sample of live requests beside the serving
one, off the request path, and the two are compared side by side.

A served request's answer is built first; then, for a sampled request, its rows, the served
answers and decisions go into a bounded queue (full: dropped and counted), and one
background task per shadow runs them through a second :class:`~cascade.routing.Engine`
built from the candidate over the *same* tier backends. Nothing of it reaches the reply;
nothing runs while a gear other than normal is engaged or shortly after the service shed a
request; a failure is logged and counted, never raised. The candidate's inline ONNX tiers
costing ``OFFLOAD_FROM_MS`` or more run in a worker thread, so that a shadowed batch does
not hold the event loop the served requests run on.

Example::

    shadow = Shadow("digits", candidate, served, sample_rate=0.1)
    served.shadow = shadow                       # the service offers every answered request
    shadow.offer(rows, labels, decisions)        # after the reply is built: never waits
    shadow.report()["candidate"]["relative_cost"]
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from cascade.backends import Model
from cascade.errors import PolicyError
from cascade.policy import PolicyFile, parse_policy, read_policy
from cascade.routing import BatchResult, Decision, Engine, routed_tiers
from cascade.serving._protocol import policy_hash
from cascade.serving._served import Served, ServedModel

__all__ = [
    "QUIET_AFTER_SHED_S",
    "Shadow",
    "ShadowFigures",
    "SideFigures",
    "check_candidate",
    "follow_reload",
    "parse_candidate",
    "read_candidate",
]

_LOG = logging.getLogger("cascade.serving")

QUIET_AFTER_SHED_S = 5.0
"""No shadowing this long after the service shed a request of the model: spare capacity only."""

_LATENCIES_KEPT = 10_000  # rows whose engine times the report's percentiles are taken over
Origin = Literal["policy", "http"]


# ---- the candidate -----------------------------------------------------------------------


def _tier_source(loaded: PolicyFile, tier: str) -> str:
    """What a tier runs: its resolved model file, or its endpoint URL."""
    spec = loaded.policy.tiers[tier]
    return spec.model if spec.is_remote else str(loaded.model_path(tier))


def check_candidate(serving: PolicyFile, candidate: PolicyFile) -> None:
    """Raise ``PolicyError`` unless ``candidate`` can shadow ``serving``: a classification
    policy of the same name whose every tier is one of the serving policy's, with the same
    model file (or endpoint). Routing, thresholds, calibration and the tiers' timeouts may
    differ; the candidate runs on the serving policy's backends.

    Example::

        check_candidate(read_policy("policies/digits.yaml"), read_policy("candidate.yaml"))
    """
    where = candidate.path or "the candidate"
    if candidate.policy.routing is None:
        raise PolicyError(f"{where}: a shadow policy needs routing (a classification cascade)")
    if serving.policy.routing is None:
        raise PolicyError(f"model '{serving.policy.name}' ranks (stages): no shadow policies")
    if candidate.policy.name != serving.policy.name:
        raise PolicyError(
            f"{where}: name '{candidate.policy.name}' must be the served model's "
            f"'{serving.policy.name}' (the candidate replaces it when promoted)"
        )
    known = ", ".join(serving.policy.tiers)
    for tier in candidate.policy.tiers:
        if tier not in serving.policy.tiers:
            raise PolicyError(
                f"{where}: tiers.{tier}: not a tier of the serving policy (tiers: {known}); "
                "a shadow policy runs on the serving policy's tiers only"
            )
        ours, theirs = _tier_source(candidate, tier), _tier_source(serving, tier)
        if ours != theirs:
            raise PolicyError(
                f"{where}: tiers.{tier}.model: {ours} is not the serving policy's ({theirs}); "
                "a shadow policy runs on the serving policy's tiers only"
            )


def parse_candidate(text: str, serving: PolicyFile, *, source: str) -> PolicyFile:
    """The candidate policy ``text`` (sent to the server), checked against ``serving``; its
    model paths are relative to the serving policy's folder."""
    # its tiers first: a caller must not make the server open files other than the serving
    # policy's (the file checks read them)
    check_candidate(serving, parse_policy(text, source=source, base_dir=serving.base_dir))
    return parse_policy(text, source=source, base_dir=serving.base_dir, check_files=True)


def read_candidate(serving: PolicyFile) -> PolicyFile | None:
    """The candidate the serving policy's ``shadow`` section names, read and checked
    (``None``: no section). A bad candidate is the serving policy's ``PolicyError``."""
    path = serving.shadow_file()
    if path is None:
        return None
    where = f"{serving.path or serving.policy.name}: shadow.policy"
    try:
        candidate = read_policy(path)
        check_candidate(serving, candidate)
    except PolicyError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return candidate


# ---- what is compared ----------------------------------------------------------------------


@dataclass(frozen=True)
class SideFigures:
    """One policy's figures over the shadowed rows (or over one request's, for metrics)."""

    relative_cost: float
    escalation_rate: float
    top_agreement: float | None  # vs the top tier, where the other policy answered with it
    latency_ms: float  # metrics: the request's slowest row


@dataclass(frozen=True)
class ShadowFigures:
    """The figures the metrics take after each comparison (running totals, this request's
    engine time)."""

    agreement: float | None
    serving: SideFigures
    candidate: SideFigures


class _Side:
    """Running totals of one policy over the shadowed rows."""

    def __init__(self) -> None:
        self.cost = 0.0
        self.escalated = 0
        self.top_rows = 0  # rows the *other* policy answered with the top tier...
        self.top_agree = 0  # ...where this one's answer was the same
        self.latencies: deque[float] = deque(maxlen=_LATENCIES_KEPT)

    def add(self, decisions: Sequence[Decision], top_cost: float) -> None:
        for d in decisions:
            self.cost += d.cost / top_cost
            if d.steps and d.answered_by != d.steps[0].tier:
                self.escalated += 1
            self.latencies.append(d.latency_ms)

    def figures(self, rows: int, latency_ms: float) -> SideFigures:
        return SideFigures(
            relative_cost=self.cost / rows if rows else 0.0,
            escalation_rate=self.escalated / rows if rows else 0.0,
            top_agreement=self.top_agree / self.top_rows if self.top_rows else None,
            latency_ms=latency_ms,
        )

    def to_json(self, rows: int, top: str) -> dict[str, Any]:
        latencies = np.asarray(self.latencies, dtype=float)
        p50, p99 = (
            (float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)))
            if len(latencies)
            else (None, None)
        )
        return {
            "relative_cost": _round(self.cost / rows) if rows else None,
            "escalation_rate": _round(self.escalated / rows) if rows else None,
            "top_agreement": {
                "rows": self.top_rows,
                "agreement": _round(self.top_agree / self.top_rows) if self.top_rows else None,
                "of": f"rows the other policy answered with {top}",
            },
            "latency_ms": {"p50": _round(p50), "p99": _round(p99)},
        }


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 6)


@dataclass(frozen=True)
class _Offered:
    rows: np.ndarray
    labels: np.ndarray
    decisions: tuple[Decision, ...]


# ---- the shadow --------------------------------------------------------------------------


class _Offloaded:
    """An inline ONNX tier as the candidate calls it: the graph runs in a worker thread
    (onnxruntime's ``run`` is thread-safe and releases the GIL), not on the event loop."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.name = model.name
        self.input_spec = model.input_spec

    async def predict(self, batch: Any) -> np.ndarray:
        answer: np.ndarray = await asyncio.to_thread(self._model.predict_sync, batch)
        return answer


OFFLOAD_FROM_MS = 0.5
"""An inline tier whose call is estimated at least this long runs the candidate's calls in a
worker thread; a cheaper one runs them on the loop, where a µs call costs less than the
hand-over to a thread would."""


def _for_the_shadow(model: Model, latency_ms: float) -> Model:
    # an inline session that would run on the loop (OnnxModel, TextModel: offload=False)
    inline = getattr(model, "offload", None) is False and hasattr(model, "predict_sync")
    # CASCADE_SHADOW_OFFLOAD=all is there only to measure the alternative: every inline
    # tier in a thread (measured on digits, 1-row requests, every one shadowed: served
    # p50 0.77 ms against 0.52 without a shadow; tiny on the loop: 0.52)
    everything = os.environ.get("CASCADE_SHADOW_OFFLOAD") == "all"
    if inline and (latency_ms >= OFFLOAD_FROM_MS or everything):
        return _Offloaded(model)
    return model


class Shadow:
    """A candidate policy answering a sample of ``served``'s requests in the background.

    ``offer`` is called after a served request's reply is built and never waits: a sampled
    request's non-cached rows join a queue of at most ``max_queued`` requests (full: the
    rows are dropped and counted) that one task drains through the candidate's engine.
    ``clock`` (seconds) times the quiet period after a shed; ``rng`` draws the sample.

    Example::

        shadow = Shadow("digits", read_policy("candidate.yaml"), served, sample_rate=0.1)
        shadow.report()   # JSON: rows, agreement, relative cost, escalations, latency
    """

    def __init__(
        self,
        model: str,
        candidate: PolicyFile,
        served: ServedModel,
        *,
        sample_rate: float,
        max_queued: int = 64,
        origin: Origin = "http",
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise PolicyError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        self.model = model
        self.candidate = candidate
        self.served = served
        self.sample_rate = sample_rate
        self.max_queued = max_queued
        self.origin: Origin = origin
        self.serving_version = served.version  # the comparison is against this one
        self.version = policy_hash(candidate.policy)
        self._record = getattr(metrics, "shadow", None)
        self._clock = clock
        self._rng = rng
        tiers = list(candidate.policy.tiers)
        costs = served.costs
        estimates = {t: served.engine.latency_estimate(t) for t in tiers}
        self.engine = Engine(
            candidate.policy,
            {t: _for_the_shadow(served.backends[t], estimates[t]) for t in tiers},
            costs={t: costs[t] for t in tiers},
            latency_ms=estimates,
            base_dir=candidate.base_dir,
        )
        routed = routed_tiers(served.policy.chain_routing)
        self.top = max(routed, key=costs.__getitem__)
        self._top_cost = costs[self.top] or 1.0  # a free top tier: costs in the cards' units
        self._queue: asyncio.Queue[_Offered] = asyncio.Queue(maxsize=max_queued)
        self._task: asyncio.Task[None] | None = None
        self._pending = 0  # offered, not yet compared
        self._quiet_until = -math.inf
        self.since = datetime.fromtimestamp(wall_clock(), UTC).isoformat(timespec="seconds")
        self.rows = self.requests = self.agree = 0
        self.outcomes = {"dropped": 0, "skipped": 0, "failed": 0}
        self.last_error: str | None = None
        self._serving = _Side()
        self._candidate = _Side()

    # ---- the request path: offer and go --------------------------------------------------

    def shed(self) -> None:
        """The service shed a request of this model: no shadowing for a while."""
        self._quiet_until = self._clock() + QUIET_AFTER_SHED_S

    def held_back(self) -> bool:
        """Whether the shadow waits now: a gear is engaged, or the service shed lately."""
        return self.served.shifter.gear.name != "normal" or self._clock() < self._quiet_until

    def offer(self, rows: np.ndarray, labels: np.ndarray, decisions: Sequence[Decision]) -> None:
        """A served request's rows, answers and decisions; never raises, never waits."""
        if self._rng() >= self.sample_rate:
            return
        keep = [i for i, d in enumerate(decisions) if not d.cache_hit]
        if not keep:  # a cached answer says nothing of the serving policy's route
            return
        if self.held_back():
            self._count("skipped", len(keep))
            return
        offered = _Offered(rows[keep], labels[keep], tuple(decisions[i] for i in keep))
        try:
            self._queue.put_nowait(offered)
        except asyncio.QueueFull:
            self._count("dropped", len(keep))
            return
        self._pending += 1
        if self._task is None or self._task.done():
            # a context of its own: not the one of the request that happened to start it
            # (its deadline, its profile, the host's request context)
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"cascade-shadow-{self.model}", context=contextvars.Context()
            )

    # ---- the background --------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if self.held_back():  # the load rose while it waited
                    self._count("skipped", len(item.rows))
                    continue
                result = await self.engine.run_validated(item.rows)
                self._compare(item, result)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never raised: the shadow must not touch serving
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._count("failed", len(item.rows))
                _LOG.warning("shadow failed model=%s candidate=%s rows=%d: %s",
                             self.model, self.version, len(item.rows), self.last_error)  # fmt: skip
            finally:
                self._pending -= 1

    def _compare(self, item: _Offered, result: BatchResult) -> None:
        served, candidate = item.decisions, result.decisions
        theirs = result.labels
        same = item.labels == theirs
        self.rows += len(item.rows)
        self.requests += 1
        self.agree += int(same.sum())
        self._serving.add(served, self._top_cost)
        self._candidate.add(candidate, self._top_cost)
        for i, (s, c) in enumerate(zip(served, candidate, strict=True)):
            if s.answered_by == self.top:  # the served answer is the top tier's
                self._candidate.top_rows += 1
                self._candidate.top_agree += int(same[i])
            if c.answered_by == self.top:
                self._serving.top_rows += 1
                self._serving.top_agree += int(same[i])
        if self._record is not None:
            figures = ShadowFigures(
                agreement=self.agree / self.rows,
                serving=self._serving.figures(self.rows, max(d.latency_ms for d in served)),
                candidate=self._candidate.figures(self.rows, max(d.latency_ms for d in candidate)),
            )
            self._record(self.model, "compared", len(item.rows), figures)

    def _count(self, outcome: str, rows: int) -> None:
        self.outcomes[outcome] += rows
        if self._record is not None:
            self._record(self.model, outcome, rows)

    async def idle(self) -> None:
        """Wait until every request offered so far has been compared (tests, promotion)."""
        while self._pending:
            await asyncio.sleep(0.001)

    def stop(self) -> None:
        """Stop the background task; what is queued is dropped (uncounted: it was never run)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def report(self) -> dict[str, Any]:
        """The side-by-side report (``GET /v2/models/{name}/shadow``, ``/config``)."""
        rows = self.rows
        return {
            "model": self.model,
            "serving_version": self.served.version,
            "candidate_policy": {
                "version": self.version,
                "file": None if self.candidate.path is None else str(self.candidate.path),
                "origin": self.origin,
                "text": self.candidate.text,
            },
            "sample_rate": self.sample_rate,
            "since": self.since,
            "top_tier": self.top,
            "rows": rows,
            "requests": self.requests,
            "agreement": _round(self.agree / rows) if rows else None,
            "serving": self._serving.to_json(rows, self.top),
            "candidate": self._candidate.to_json(rows, self.top),
            "dropped": self.outcomes["dropped"],
            "skipped": self.outcomes["skipped"],
            "failed": self.outcomes["failed"],
            "last_error": self.last_error,
            "queued": self._queue.qsize(),
        }


def follow_reload(
    name: str,
    served: Served,
    previous: Served | None,
    serving: PolicyFile,
    candidate: PolicyFile | None,
    *,
    metrics: Any,
) -> None:
    """After ``serving`` was applied as ``served`` (which was ``previous``): the shadow its
    ``shadow`` section names (``candidate``) starts or carries on; without one, a shadow
    started over HTTP carries on while it still fits the new policy's tiers, and one the
    old file named stops. A comparison restarts whenever either policy changed."""
    old = previous.shadow if previous is not None else None
    assert old is None or isinstance(old, Shadow)
    if previous is not None and previous is not served:
        previous.shadow = None
    section = serving.policy.shadow
    new: Shadow | None = None
    if not isinstance(served, ServedModel):  # a ranking policy: no shadow
        if old is not None:
            old.stop()
        return
    if candidate is not None and section is not None:
        unchanged = (
            old is not None
            and old.served is served
            and old.serving_version == served.version
            and old.version == policy_hash(candidate.policy)
            and old.sample_rate == section.sample_rate
        )
        if unchanged:
            served.shadow = old
            return
        new = Shadow(name, candidate, served, sample_rate=section.sample_rate,
                     max_queued=section.max_queued, origin="policy", metrics=metrics)  # fmt: skip
    elif old is not None and old.origin == "http":
        if old.served is served and old.serving_version == served.version:
            served.shadow = old
            return
        try:
            check_candidate(serving, old.candidate)
            new = Shadow(name, old.candidate, served, sample_rate=old.sample_rate,
                         max_queued=old.max_queued, origin="http", metrics=metrics)  # fmt: skip
        except PolicyError as exc:
            _LOG.warning("shadow stopped model=%s: the candidate no longer fits: %s", name, exc)
    if old is not None:
        old.stop()
    served.shadow = new
    if new is not None:
        _LOG.info("shadow started model=%s candidate=%s origin=%s sample_rate=%g", name,
                  new.version, new.origin, new.sample_rate)  # fmt: skip
