"""Offline evaluation: replay labelled rows through the routing engine, side by side.

The engine is the one that serves: a whole split goes through ``Engine.run`` as one batch,
with in-process ONNX backends. Costs are the engine's (cost units per tier a row was sent
to, from the policy or the model cards; the large tier is 1). Latency is simulated per
request from each tier's estimate (the card's single-row p50, plus one Serve hop for
deployment tiers), summed over the tiers the request went through — the batch's wall time
says nothing about a request's latency.

Speculative routing is accounted as per-request traffic, its use case: a confident cheap
answer cancels the expensive call after the cheap tier's latency, so that row pays
``cheap + expensive · min(1, latency_cheap / latency_expensive)`` and waits ``latency_cheap``;
the other rows pay both tiers and wait for the slower one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cascade.backends import OnnxModel, open_model
from cascade.catalog import TierInfo, check_provenance, resolve_tiers
from cascade.evaluate._oracle import oracle, oracle_curve, oracle_share
from cascade.evaluate._served_cost import CostModel
from cascade.policy import (
    ChainStep,
    ComplexityRouting,
    ConfidenceRouting,
    Policy,
    PolicyFile,
    SpeculativeRouting,
)
from cascade.routing import BatchResult, Decision, Engine

__all__ = ["EvalRow", "Evaluator"]


@dataclass(frozen=True)
class EvalRow:
    """One configuration's results on one split."""

    name: str
    n: int
    accuracy: float
    relative_accuracy: float
    cost: float
    relative_cost: float
    escalation_rate: float  # answered by another tier than the one a request enters at
    tier_rates: dict[str, float] = field(default_factory=dict)
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    # with a CostModel: model time at the batches each tier sees when served, and the whole
    # served cost (per-request and per-hop work included), both relative to always-large's
    served_batch_relative_cost: float | None = None
    served_relative_cost: float | None = None
    # the share of the label-aware oracle's saving at this row's accuracy (see _oracle)
    oracle_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _always(policy: Policy, tier: str) -> Policy:
    """The same policy answering every request with ``tier``."""
    routing = ConfidenceRouting(kind="confidence", chain=[ChainStep(tier=tier)])
    return policy.model_copy(update={"routing": routing, "provenance": None})


def _entry_tier(policy: Policy) -> str:
    """The tier a request is answered by when nothing escalates it."""
    routing = policy.chain_routing
    if isinstance(routing, SpeculativeRouting):
        return routing.cheap
    if isinstance(routing, ComplexityRouting):
        return routing.bands[0].tier
    return routing.chain[0].tier


class Evaluator:
    """Holds one policy's tier backends and replays labelled data through engines.

    Example::

        evaluator = Evaluator(read_policy("policies/digits.yaml"))
        for row in evaluator.evaluate(X, y):
            print(row.name, row.accuracy, row.relative_cost)
    """

    def __init__(self, loaded: PolicyFile, *, tiers: dict[str, TierInfo] | None = None) -> None:
        self.loaded = loaded
        self.tiers = tiers if tiers is not None else resolve_tiers(loaded)
        check_provenance(loaded, self.tiers)
        # OnnxModel or a text model: both run predict_sync, which the replay uses
        self.backends: dict[str, Any] = {
            name: open_model(info.path) for name, info in self.tiers.items()
        }
        self.reference = max(self.tiers, key=lambda name: self.tiers[name].cost)
        self._scorer_cost: float | None = None
        self._rule_costs: dict[Path, float] = {}

    @property
    def costs(self) -> dict[str, float]:
        return {name: info.cost for name, info in self.tiers.items()}

    @property
    def latencies(self) -> dict[str, float]:
        return {name: info.latency_ms for name, info in self.tiers.items()}

    def replay(self, policy: Policy, X: np.ndarray, *, gear: str | None = None) -> BatchResult:
        """Route ``X`` through ``policy`` with this evaluator's backends, as one batch
        (in one of the policy's degradation gears when ``gear`` names one)."""
        engine = Engine(
            policy,
            self.backends,
            costs=self.costs,
            latency_ms=self.latencies,
            base_dir=self.loaded.base_dir,
            ewma=0.0,  # offline: keep the card estimates, the batch's wall time is not a latency
        )
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(engine.run(X, gear=gear))
        # Called from inside an event loop (a notebook, a server): asyncio.run would refuse,
        # so the replay gets an event loop of its own in a worker thread.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, engine.run(X, gear=gear)).result()

    def probabilities(self, tier: str, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.backends[tier].predict_sync(X), dtype=np.float32)

    def model_cost(self, path: Path) -> float:
        """Cost units per row of any ONNX model, measured like the tiers' cards."""
        from cascade.zoo.measure import measure_latency

        model = OnnxModel(path)
        rows = np.zeros((256, model.input_spec.width or 1), dtype=np.float32)
        per_row = measure_latency(model, rows, single_row_runs=50).per_row_us[256]
        card = self.tiers[self.reference].card
        reference_us = card.latency.per_row_us[256] if card is not None else per_row
        return float(per_row / reference_us * self.tiers[self.reference].cost)

    def scorer_cost(self, policy: Policy) -> float:
        """Cost units per row of a complexity policy's ONNX scorer (0 for rule scorers)."""
        if not isinstance(policy.routing, ComplexityRouting):
            return 0.0
        spec = policy.routing.scorer
        if spec.name != "onnx" or spec.model is None:
            return 0.0
        return self.model_cost(self.loaded.base_dir / spec.model)

    def summarise(
        self,
        name: str,
        policy: Policy,
        result: BatchResult,
        y: np.ndarray,
        *,
        reference_accuracy: float,
        reference_cost: float,
        cost_model: CostModel | None = None,
    ) -> EvalRow:
        """Accuracy, cost, escalation and simulated latency of one replay; with
        ``cost_model``, its served cost too (see :mod:`cascade.evaluate._served_cost`)."""
        decisions = result.decisions
        costs, latencies = self._accounting(policy, decisions)
        n = len(decisions)
        reached = {tier: 0 for tier in self.tiers}
        entry = _entry_tier(policy)
        escalated = 0
        for decision in decisions:
            for step in decision.steps:
                reached[step.tier] += 1
            escalated += decision.answered_by != entry
        accuracy = float((result.labels == y).mean())
        cost = float(costs.mean())
        reach = {tier: count / n for tier, count in reached.items() if count}
        served = cost_model.relative(reach) if cost_model is not None else (None, None)
        return EvalRow(
            name=name,
            n=n,
            accuracy=accuracy,
            relative_accuracy=accuracy / reference_accuracy if reference_accuracy else 0.0,
            cost=cost,
            relative_cost=cost / reference_cost if reference_cost else 0.0,
            escalation_rate=escalated / n,
            tier_rates=reach,
            latency_p50_ms=float(np.percentile(latencies, 50)),
            latency_p99_ms=float(np.percentile(latencies, 99)),
            served_batch_relative_cost=served[0],
            served_relative_cost=served[1],
        )

    def _accounting(
        self, policy: Policy, decisions: Sequence[Decision]
    ) -> tuple[np.ndarray, np.ndarray]:
        latency = self.latencies
        costs = np.array([d.cost for d in decisions], dtype=np.float64)
        if isinstance(policy.routing, SpeculativeRouting):
            cheap, expensive = policy.routing.cheap, policy.routing.expensive
            share = min(1.0, latency[cheap] / latency[expensive])
            won = np.array([d.reason == "speculative_cheap" for d in decisions])
            costs = self.costs[cheap] + self.costs[expensive] * np.where(won, share, 1.0)
            lat = np.where(won, latency[cheap], max(latency[cheap], latency[expensive]))
            return costs, lat
        scorer = 0.0
        if isinstance(policy.routing, ComplexityRouting):
            if self._scorer_cost is None:
                self._scorer_cost = self.scorer_cost(policy)
            scorer = self._scorer_cost
            costs = costs + scorer
        rules = self.rule_costs(policy)
        if rules:  # a learned rule runs on every row that reaches its step
            costs = costs + np.array([sum(rules.get(s.tier, 0.0) for s in d.steps)
                                      for d in decisions])  # fmt: skip
        lat = np.array([sum(latency[s.tier] for s in d.steps) for d in decisions])
        return costs, lat

    def rule_costs(self, policy: Policy) -> dict[str, float]:
        """Cost units per row of each chain step's learned deferral rule, by tier."""
        steps = getattr(policy.routing, "chain", [])[:-1]
        found = {}
        for step in steps:
            if step.deferral is not None and step.deferral.model is not None:
                path = self.loaded.base_dir / step.deferral.model
                if path not in self._rule_costs:
                    self._rule_costs[path] = self.model_cost(path)
                found[step.tier] = self._rule_costs[path]
        return found

    def evaluate(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        cost_model: CostModel | None = None,
        with_oracle: bool = True,
        with_policy: bool = True,
    ) -> list[EvalRow]:
        """The policy beside always-<tier> for every tier, cheapest first after the policy;
        with ``cost_model``, each row's served cost too.

        ``with_oracle``: right after the policy, the label-aware oracle at the policy's own
        accuracy (its entry tier escalating to the reference tier only the rows that tier
        fixes; see :mod:`cascade.evaluate._oracle`), and every row's share of the oracle's
        saving at its accuracy. Skipped when the policy enters at the reference tier.
        ``with_policy=False``: the always-<tier> rows alone (a policy that cannot run yet,
        such as one whose deferral rules are still to be trained, still has baselines)."""
        policy = self.loaded.policy
        reference_accuracy, reference_cost = 0.0, self.costs[self.reference]
        results: dict[str, BatchResult] = {}
        for tier in sorted(self.tiers, key=lambda t: self.tiers[t].cost):
            results[tier] = self.replay(_always(policy, tier), X)
        reference_accuracy = float((results[self.reference].labels == y).mean())

        def summary(name: str, routed: Policy, result: BatchResult) -> EvalRow:
            return self.summarise(
                name, routed, result, y,
                reference_accuracy=reference_accuracy, reference_cost=reference_cost,
                cost_model=cost_model,
            )  # fmt: skip

        always = [summary(f"always-{t}", _always(policy, t), r) for t, r in results.items()]
        if not with_policy:
            return always
        rows = [summary(policy.name, policy, self.replay(policy, X)), *always]
        entry = _entry_tier(policy)
        if not with_oracle or entry == self.reference:
            return rows
        cheap_ok = results[entry].labels == y
        large_ok = results[self.reference].labels == y
        costs = {"cheap_cost": self.costs[entry], "expensive_cost": reference_cost}
        shared = [
            replace(
                row,
                oracle_share=oracle_share(
                    row.relative_cost, row.relative_accuracy, cheap_ok, large_ok, **costs
                ),
            )
            for row in rows
        ]
        floor = self._oracle_row(
            entry, cheap_ok, large_ok, rows[0].relative_accuracy, reference_accuracy, cost_model
        )
        return [shared[0], floor, *shared[1:]]

    def oracle_curve(self, X: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
        """The oracle's (relative cost, relative accuracy) line on these rows, from its entry
        tier alone to every row the reference tier fixes (for the frontier plot)."""
        policy = self.loaded.policy
        entry = _entry_tier(policy)
        if entry == self.reference:
            return []
        cheap_ok = self.replay(_always(policy, entry), X).labels == y
        large_ok = self.replay(_always(policy, self.reference), X).labels == y
        return oracle_curve(
            cheap_ok, large_ok, cheap_cost=self.costs[entry],
            expensive_cost=self.costs[self.reference],
        )  # fmt: skip

    def _oracle_row(
        self,
        entry: str,
        cheap_ok: np.ndarray,
        large_ok: np.ndarray,
        relative_accuracy: float,
        reference_accuracy: float,
        cost_model: CostModel | None,
    ) -> EvalRow:
        """The oracle at ``relative_accuracy`` (as far as escalation can reach) as a row."""
        n = len(cheap_ok)
        fixable = large_ok & ~cheap_ok
        reachable = (int(cheap_ok.sum()) + int(fixable.sum())) / max(int(large_ok.sum()), 1)
        found = oracle(cheap_ok, large_ok, relative_accuracy=min(relative_accuracy, reachable))
        escalation = found.escalation
        accuracy = (int(cheap_ok.sum()) + found.escalated) / n
        cost = self.costs[entry] + escalation * self.costs[self.reference]
        latency = self.latencies
        escalated = np.arange(n) < found.escalated  # which rows does not matter: a mix
        lat = np.where(escalated, latency[entry] + latency[self.reference], latency[entry])
        reach = {entry: 1.0, **({self.reference: escalation} if escalation else {})}
        served = cost_model.relative(reach) if cost_model is not None else (None, None)
        return EvalRow(
            name="oracle (labels known)",
            n=n,
            accuracy=accuracy,
            relative_accuracy=accuracy / reference_accuracy if reference_accuracy else 0.0,
            cost=cost,
            relative_cost=cost / self.costs[self.reference],
            escalation_rate=escalation,
            tier_rates=reach,
            latency_p50_ms=float(np.percentile(lat, 50)),
            latency_p99_ms=float(np.percentile(lat, 99)),
            served_batch_relative_cost=served[0],
            served_relative_cost=served[1],
            oracle_share=1.0,
        )
