"""One policy as served: its engine, coalescer, gear shifter and metadata.

Shared by every runtime. Tiers placed ``inline`` run in this process through onnxruntime;
the runtime supplies a backend for every other tier (a Ray ``DeploymentHandle`` wrapper, a
remote HTTP endpoint, ...) through ``remote``: a factory per tier name that gets the input
spec of the local models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cascade.backends import InputSpec, Model, open_model
from cascade.errors import PolicyError
from cascade.evaluate import resolve_tiers
from cascade.load import Gear, GearShifter
from cascade.policy import LoadedPolicy, Policy
from cascade.routing import Engine
from cascade.serving._coalescer import Coalescer
from cascade.serving._protocol import policy_hash

__all__ = ["RemoteFactory", "ServedModel", "ServedRanker", "serve_policy"]

RemoteFactory = Callable[[InputSpec], Model]


def _backends(
    loaded: LoadedPolicy, remote: Mapping[str, RemoteFactory]
) -> tuple[dict[str, Model], InputSpec, Any, dict[str, Any]]:
    """Every tier's backend (local ONNX or remote), the input spec, one local model, tiers.

    A tier the runtime supplies in ``remote`` gets that backend; a tier whose model is an
    endpoint URL gets an :class:`HttpModel` checked against the local tiers' classes; every
    other tier runs here through onnxruntime.
    """
    from cascade.serving._http_model import HttpModel

    policy = loaded.policy
    tiers = resolve_tiers(loaded, remote=True)
    local = {
        name: open_model(tiers[name].path, providers=tier.providers)
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
    first = next(iter(local.values()), None) or open_model(tiers[files[0]].path)
    card = next((t.card for t in tiers.values() if t.card is not None), None)
    classes = list(card.classes) if card is not None else None
    backends: dict[str, Model] = dict(local)
    for name, factory in remote.items():
        backends[name] = factory(first.input_spec)
    for name, tier in policy.tiers.items():
        if tier.is_remote and name not in backends:
            backends[name] = HttpModel(
                tier.model,
                input_spec=first.input_spec,
                classes=classes,
                n_classes=getattr(first, "n_classes", None),
                name=name,
                timeout_s=tier.timeout_ms / 1000.0,
            )
    return backends, first.input_spec, first, tiers


async def _close(backends: Mapping[str, Model]) -> None:
    for backend in backends.values():
        close = getattr(backend, "aclose", None)
        if close is not None:
            await close()


def serve_policy(
    loaded: LoadedPolicy, *, remote: Mapping[str, RemoteFactory], coalesce_ms: float = 2.0
) -> ServedModel | ServedRanker:
    """The served form of ``loaded``: a classification cascade or a ranking one."""
    if loaded.policy.stages:
        return ServedRanker(loaded, remote=remote)
    return ServedModel(loaded, remote=remote, coalesce_ms=coalesce_ms)


class ServedRanker:
    """A loaded ranking policy: its :class:`~cascade.ranking.Ranker` and metadata."""

    def __init__(self, loaded: LoadedPolicy, *, remote: Mapping[str, RemoteFactory]) -> None:
        from cascade.ranking._ranker import Ranker

        backends, self.spec, _, tiers = _backends(loaded, remote)
        self.backends = backends
        self.ranker = Ranker(loaded.policy, backends, costs={n: t.cost for n, t in tiers.items()})
        self.in_flight = 0
        self.policy: Policy | None = None
        self.set_policy(loaded.policy)

    @property
    def tiers(self) -> list[str]:
        assert self.policy is not None
        return list(self.policy.tiers)

    def same_tiers(self, policy: Policy) -> bool:
        """Whether ``policy`` has these tiers and stage tiers, so it swaps in as is."""
        return (
            self.policy is not None
            and self.policy.tiers == policy.tiers
            and [s.tier for s in self.policy.stages] == [s.tier for s in policy.stages]
        )

    def set_policy(self, policy: Policy) -> None:
        """New keeps, limits and filter cut from the next query on."""
        if self.policy is not None:
            self.ranker.replace_policy(policy)
        self.policy = policy
        self.version = policy_hash(policy)

    def load(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight}

    async def aclose(self) -> None:
        """Close the connections of remote tiers (the server's shutdown calls it)."""
        await _close(self.backends)


class ServedModel:
    """A loaded policy ready to answer: engine, coalescer, gears and what metadata reports.

    Example::

        served = ServedModel(load_policy("policies/digits.yaml"), remote={}, coalesce_ms=2)
        probabilities, decisions = await served.coalescer.submit(rows)
    """

    def __init__(
        self,
        loaded: LoadedPolicy,
        *,
        remote: Mapping[str, RemoteFactory],
        coalesce_ms: float = 2.0,
    ) -> None:
        policy = loaded.policy
        backends, self.spec, first, tiers = _backends(loaded, remote)
        self.backends = backends
        card = next((t.card for t in tiers.values() if t.card is not None), None)
        self.classes = list(card.classes) if card is not None else None
        self.n_classes = len(self.classes) if self.classes else first.n_classes
        self.engine = Engine(
            policy,
            backends,
            costs={n: t.cost for n, t in tiers.items()},
            latency_ms={n: t.latency_ms for n, t in tiers.items()},
            base_dir=loaded.base_dir,
        )
        self.coalescer = Coalescer(
            lambda rows, deadlines, caps: self.engine.run(
                rows, deadlines_ms=deadlines, max_tiers=caps, gear=self.shifter.gear.name
            ),
            max_wait_ms=coalesce_ms,
            spec=self.spec,
        )
        self.in_flight = 0  # requests inside this process: the load the gears follow
        self.policy: Policy | None = None
        self.set_policy(policy)

    @property
    def tiers(self) -> list[str]:
        assert self.policy is not None
        return list(self.policy.tiers)

    def same_tiers(self, policy: Policy) -> bool:
        """Whether ``policy`` has exactly these tiers, so it can swap in without a rebuild."""
        return self.policy is not None and self.policy.tiers == policy.tiers

    def set_policy(self, policy: Policy) -> None:
        """Take ``policy`` (same tiers) from the next batch on; the gear restarts at normal.

        Its caches start empty when the cache section changed; else they stay, and entries
        of the old policy are never served again (they are keyed by the policy's hash).
        """
        if self.policy is not None:
            self.engine.replace_policy(policy)
        if self.policy is None or self.policy.cache != policy.cache:
            from cascade.serving._caching import AnswerCaches

            text = self.spec.dtype == "string"
            self.caches = AnswerCaches(policy.cache, text=text) if policy.cache else None
        self.policy = policy
        self.version = policy_hash(policy)
        gears = [Gear("normal", 0.0)] + [
            Gear(g.name, float(g.queue_depth_at_least), g.max_tier, g.threshold_shift)
            for g in policy.gears
        ]
        self.shifter = GearShifter(
            gears, hysteresis=policy.gear_hysteresis, hold_s=policy.gear_hold_s
        )

    def admit(self, deadline_ms: float | None) -> str | None:
        """Why a request with this deadline cannot be answered in time now, or ``None``.

        The cheapest path is the first tier, after the batch running now (if any): when even
        that is predicted to end past the deadline, shedding at once beats answering late.
        """
        if deadline_ms is None:
            return None
        first = self.engine.latency_estimate(self.engine.first_tier)
        wait = (self.coalescer.batch_ms or 0.0) if self.coalescer.busy else 0.0
        if first + wait <= deadline_ms:
            return None
        return (
            f"cannot answer within deadline_ms={deadline_ms:g}: the cheapest path "
            f"('{self.engine.first_tier}') needs about {first + wait:.1f} ms now"
        )

    async def answer(
        self, rows: Any, *, deadline_ms: float | None, max_tier: str | None
    ) -> tuple[Any, tuple[Any, ...]]:
        """Probabilities and decisions for ``rows``: from the caches, else the cascade."""

        def run(misses: Any) -> Any:
            return self.coalescer.submit(misses, deadline_ms=deadline_ms, max_tier=max_tier)

        if self.caches is None:
            answer: tuple[Any, tuple[Any, ...]] = await run(rows)
            return answer
        return await self.caches.answer(self.version, rows, run, deadline_ms=deadline_ms)

    async def aclose(self) -> None:
        """Close the connections of remote tiers (the server's shutdown calls it)."""
        await _close(self.backends)

    def load(self) -> dict[str, Any]:
        """The load state metadata reports: gear, requests in flight, breaker states."""
        assert self.policy is not None
        return {
            **({"cache": self.caches.stats()} if self.caches is not None else {}),
            "gear": self.shifter.gear.name,
            "in_flight": self.in_flight,
            "breakers": {
                tier: breaker.state
                for tier in self.policy.tiers
                if (breaker := self.engine.breaker(tier)) is not None
            },
        }
