"""Capacity planning: replicas and CPUs per tier for a request rate, from measurements.

Three measured inputs meet here: the share of rows *reaching* each tier (the policy replayed
on a labelled split by the serving engine), each tier's per-row cost at a batch size (its
model card: onnxruntime, one intra-op thread, batches of 1/32/256) and the serving overheads
of Ray Serve (CPU per request at the ingress, CPU per extra hop; ``benchmarks/served_cost.py``
measures them on your machine, and the command line reads its result).

For ``qps`` requests/s of ``R`` rows and a tier reached by a share ``s`` of the rows:

- ``rows/s = qps·R·s``; each of the ``n`` ingress replicas coalesces the requests it gets
  within ``coalesce_ms`` into one engine batch of ``k = max(1, qps/n·coalesce_ms)`` requests;
- inline tier: runs in the ingress on ``batch = max(1, k·R·s)`` rows per engine batch;
- deployment tier: one call (one hop) per engine batch that sends it a row,
  ``calls/s = min(rows/s, qps/k)``; ``@serve.batch`` joins what one of its ``m`` replicas
  receives within ``max_wait_ms``: ``batch = max(k·R·s, min(max_batch_size,
  max(1, rows/s/m·max_wait_ms)))``;
- ``µs/row``: the card's per-row cost interpolated at ``batch`` linearly in ``1/batch`` (a
  call costs a fixed part plus a per-row part between measured sizes), flat outside;
- CPU cores: deployment tier ``rows/s·µs/row + calls/s·hop_cpu_ms``; ingress
  ``qps·ingress_cpu_ms`` + its inline tiers' ``rows/s·µs/row`` (+ a complexity scorer's);
- replicas ``= max(1, ceil(cores / (cpus_per_replica·utilisation)))``, the least ``n`` (``m``)
  that covers the load it sees; the autoscaling range is the replicas needed at
  ``autoscale_low``·qps (25 %) and ``autoscale_high``·qps (2×).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from cascade.catalog import CARD_SUFFIX, ModelCard, beside
from cascade.errors import PolicyError
from cascade.evaluate._replay import Evaluator
from cascade.evaluate._served_cost import per_row_us_at
from cascade.policy import ComplexityRouting, PolicyFile, SlaRouting

__all__ = [
    "Assumptions",
    "CapacityPlan",
    "TierLoad",
    "measure_reach",
    "per_row_us_at",
    "plan_capacity",
    "scorer_per_row_us",
    "tier_cards",
]

Placement = Literal["ingress", "inline", "deployment"]


@dataclass(frozen=True)
class Assumptions:
    """What a plan takes as given besides the measurements; every field is a CLI option."""

    rows_per_request: int = 1
    utilisation: float = 0.7
    cpus_per_replica: float = 1.0
    ingress_cpu_ms: float = 5.0
    hop_cpu_ms: float = 2.0
    coalesce_ms: float = 2.0
    autoscale_low: float = 0.25
    autoscale_high: float = 2.0
    overheads_source: str = "given"

    def __post_init__(self) -> None:
        checks = {
            "rows_per_request": self.rows_per_request >= 1,
            "utilisation": 0 < self.utilisation <= 1,
            "cpus_per_replica": self.cpus_per_replica > 0,
            "ingress_cpu_ms": self.ingress_cpu_ms >= 0,
            "hop_cpu_ms": self.hop_cpu_ms >= 0,
            "coalesce_ms": self.coalesce_ms >= 0,
            "autoscale_low": 0 < self.autoscale_low <= 1,
            "autoscale_high": self.autoscale_high >= 1,
        }
        for name, ok in checks.items():
            if not ok or not math.isfinite(float(getattr(self, name))):
                raise PolicyError(f"capacity plan: {name}: out of range, got {getattr(self, name)}")


@dataclass(frozen=True)
class TierLoad:
    """The load on one tier (or on the ingress) at the planned rate."""

    name: str
    placement: Placement
    reach: float  # share of rows reaching it (the ingress: 1)
    rows_per_s: float
    calls_per_s: float  # deployment: hops; inline: engine batches running it; ingress: requests
    batch: float  # rows per model run
    us_per_row: float  # model time per row at that batch (ingress: its inline tiers and scorer)
    cpu_cores: float  # CPU-seconds per second
    replicas: int | None  # None: runs inside the ingress
    autoscaling: tuple[int, int] | None  # (min, max) replicas; None for inline tiers


@dataclass(frozen=True)
class CapacityPlan:
    """Replicas and CPUs per tier for ``qps`` requests/s (see the module doc for the formula).

    Example::

        plan = plan_capacity(loaded, 500, reach=measure_reach(loaded, X))
        plan.ingress.replicas, plan.total_cpus
    """

    policy: str
    qps: float
    tiers: tuple[TierLoad, ...]
    ingress: TierLoad
    assumptions: Assumptions
    reach_measured_on: str = ""
    notes: tuple[str, ...] = ()

    @property
    def total_cpu_cores(self) -> float:
        """CPU cores kept busy: the ingress (with its inline tiers) and every deployment tier."""
        return self.ingress.cpu_cores + sum(
            t.cpu_cores for t in self.tiers if t.placement == "deployment"
        )

    @property
    def total_replicas(self) -> int:
        return sum(t.replicas or 0 for t in (self.ingress, *self.tiers))

    @property
    def total_cpus(self) -> float:
        """CPUs to reserve: every replica times ``cpus_per_replica``."""
        return self.total_replicas * self.assumptions.cpus_per_replica

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "qps": self.qps,
            "reach_measured_on": self.reach_measured_on,
            "tiers": [asdict(t) for t in self.tiers],
            "ingress": asdict(self.ingress),
            "total_cpu_cores": self.total_cpu_cores,
            "total_replicas": self.total_replicas,
            "total_cpus": self.total_cpus,
            "assumptions": asdict(self.assumptions),
            "notes": list(self.notes),
        }


def tier_cards(loaded: PolicyFile) -> dict[str, ModelCard]:
    """The model card of every tier; a clear PolicyError where planning cannot go.

    Example::

        tier_cards(read_policy("policies/digits.yaml"))["large"].latency.per_row_us
    """
    where = loaded.path or loaded.policy.name
    if loaded.policy.routing is None:
        raise PolicyError(
            f"{where}: a ranking policy (stages); capacity planning covers classification "
            "policies (routing)"
        )
    cards = {}
    for name, tier in loaded.policy.tiers.items():
        if tier.is_remote:
            raise PolicyError(
                f"{where}: tiers.{name}: remote tier {tier.model} runs outside this app; "
                "capacity planning needs local ONNX tiers with model cards"
            )
        path = beside(loaded.model_path(name), CARD_SUFFIX)
        if not path.is_file():
            raise PolicyError(
                f"{where}: tiers.{name}: no model card {path.name} beside "
                f"{loaded.model_path(name).name}; capacity planning needs the measured "
                "per-row costs a card holds (build the tier with `cascade models build`)"
            )
        cards[name] = ModelCard.model_validate_json(path.read_text())
    return cards


def _replicas(cores: float, a: Assumptions) -> int:
    # a hair of tolerance: 1.4000000000000001 cores must not round up to an extra replica
    return max(1, math.ceil(cores / (a.cpus_per_replica * a.utilisation) - 1e-9))


def _needed(load: TierLoad) -> int:
    assert load.replicas is not None
    return load.replicas


def _ingress_at(
    loaded: PolicyFile,
    cards: Mapping[str, ModelCard],
    qps: float,
    reach: Mapping[str, float],
    a: Assumptions,
    scorer: Mapping[int, float] | None,
    replicas: int,
) -> tuple[TierLoad, list[TierLoad], float]:
    """The ingress and its inline tiers when ``replicas`` ingress replicas share ``qps``."""
    rows = qps * a.rows_per_request
    # each replica coalesces only the requests it receives
    per_batch = max(1.0, qps / replicas * a.coalesce_ms / 1000.0)
    engine_batches = qps / per_batch
    inline = []
    for name, tier in loaded.policy.tiers.items():
        if tier.placement != "inline":
            continue
        share = float(reach.get(name, 0.0))
        batch = max(1.0, per_batch * a.rows_per_request * share)
        us = per_row_us_at(cards[name].latency.per_row_us, batch)
        calls = min(rows * share, engine_batches)
        inline.append(TierLoad(name, "inline", share, rows * share, calls, batch, us,
                               rows * share * us / 1e6, None, None))  # fmt: skip
    scorer_us = per_row_us_at(scorer, per_batch * a.rows_per_request) if scorer else 0.0
    model_us = sum(t.us_per_row * t.reach for t in inline) + scorer_us
    cores = qps * a.ingress_cpu_ms / 1000.0 + rows * model_us / 1e6
    ingress = TierLoad("ingress", "ingress", 1.0, rows, qps, per_batch * a.rows_per_request,
                       model_us, cores, _replicas(cores, a), None)  # fmt: skip
    return ingress, inline, per_batch


def _deployment_at(
    name: str,
    loaded: PolicyFile,
    card: ModelCard,
    share: float,
    rows: float,
    per_batch: float,
    a: Assumptions,
    replicas: int,
) -> TierLoad:
    """A deployment tier reached by ``rows`` rows/s when it runs ``replicas`` replicas."""
    batching = loaded.policy.tiers[name].batching
    tier_rows = rows * share
    # one call (hop) per engine batch that sends the tier a row, so at most one per row
    calls = min(tier_rows, rows / a.rows_per_request / per_batch)
    per_call = max(1.0, per_batch * a.rows_per_request * share)
    # @serve.batch joins the calls one replica receives within max_wait_ms
    window = tier_rows / replicas * batching.max_wait_ms / 1000.0
    batch = max(per_call, min(float(batching.max_batch_size), max(1.0, window)))
    us = per_row_us_at(card.latency.per_row_us, batch)
    cores = tier_rows * us / 1e6 + calls * a.hop_cpu_ms / 1000.0
    return TierLoad(name, "deployment", share, tier_rows, calls, batch, us, cores,
                    _replicas(cores, a), None)  # fmt: skip


def _loads(
    loaded: PolicyFile,
    cards: Mapping[str, ModelCard],
    qps: float,
    reach: Mapping[str, float],
    a: Assumptions,
    scorer: Mapping[int, float] | None,
) -> tuple[list[TierLoad], TierLoad]:
    # Replicas change the batches they see, and batches the replicas they need: start from
    # one replica and raise the count until it covers its own load, the least such count.
    n = 1
    while True:
        ingress, inline, per_batch = _ingress_at(loaded, cards, qps, reach, a, scorer, n)
        if _needed(ingress) <= n:
            ingress = replace(ingress, replicas=n)
            break
        n = _needed(ingress)
    loads = {t.name: t for t in inline}
    for name, tier in loaded.policy.tiers.items():
        if tier.placement != "deployment":
            continue
        share = float(reach.get(name, 0.0))
        n = 1
        while True:
            load = _deployment_at(name, loaded, cards[name], share, ingress.rows_per_s,
                                  per_batch, a, n)  # fmt: skip
            if _needed(load) <= n:
                loads[name] = replace(load, replicas=n)
                break
            n = _needed(load)
    return [loads[name] for name in loaded.policy.tiers], ingress


def _notes(loaded: PolicyFile, plan: CapacityPlan) -> tuple[str, ...]:
    policy = loaded.policy
    notes = []
    for load in plan.tiers:
        tier = policy.tiers[load.name]
        if load.placement != "deployment" or load.replicas is None:
            continue
        allowed = tier.autoscaling.max_replicas if tier.autoscaling else tier.replicas
        setting = "autoscaling.max_replicas" if tier.autoscaling else "replicas"
        if allowed < load.replicas:
            assert load.autoscaling is not None
            low, high = load.autoscaling
            notes.append(
                f"tiers.{load.name}: the policy allows {allowed} replica(s) ({setting}: "
                f"{allowed}) but {load.replicas} are needed at {plan.qps:g} requests/s; "
                f"e.g. autoscaling: {{min_replicas: {low}, max_replicas: {high}}}"
            )
    if isinstance(policy.routing, SlaRouting):
        notes.append("sla routing: rows reach tiers as without deadlines (an upper bound)")
    if policy.gears:
        notes.append("planned for the normal gear; gears lower the load under overload")
    if policy.cache is not None:
        notes.append("no cache hits assumed: hits lower the load by their share")
    return tuple(notes)


def plan_capacity(
    loaded: PolicyFile,
    qps: float,
    *,
    reach: Mapping[str, float],
    reach_measured_on: str = "",
    scorer_us: Mapping[int, float] | None = None,
    rows_per_request: int = 1,
    utilisation: float = 0.7,
    cpus_per_replica: float = 1.0,
    ingress_cpu_ms: float = 5.0,
    hop_cpu_ms: float = 2.0,
    coalesce_ms: float = 2.0,
    overheads_source: str = "given",
) -> CapacityPlan:
    """Replicas and CPUs per tier of a classification policy serving ``qps`` requests/s.

    ``reach`` is the share of rows reaching each tier (``measure_reach``); costs come from
    the tiers' model cards; ``scorer_us`` is a complexity scorer's per-row cost by batch
    size (``scorer_per_row_us``), run at the ingress. Pure arithmetic: nothing is run.

    Example::

        loaded = read_policy("policies/digits.yaml")
        X, y, label = labelled_split(loaded, split="calibration")
        plan = plan_capacity(loaded, 500, reach=measure_reach(loaded, X))
        [(t.name, t.replicas) for t in plan.tiers]     # [('tiny', None), ..., ('large', 1)]
    """
    if not (math.isfinite(qps) and qps > 0):
        raise PolicyError(f"capacity plan: qps must be > 0, got {qps}")
    policy = loaded.policy
    a = Assumptions(rows_per_request, utilisation, cpus_per_replica, ingress_cpu_ms,
                    hop_cpu_ms, coalesce_ms, overheads_source=overheads_source)  # fmt: skip
    cards = tier_cards(loaded)
    tiers, ingress = _loads(loaded, cards, qps, reach, a, scorer_us)
    low_tiers, low_ingress = _loads(loaded, cards, qps * a.autoscale_low, reach, a, scorer_us)
    high_tiers, high_ingress = _loads(loaded, cards, qps * a.autoscale_high, reach, a, scorer_us)
    ranged = [
        replace(t, autoscaling=(lo.replicas, hi.replicas))
        if t.replicas is not None and lo.replicas is not None and hi.replicas is not None
        else t
        for t, lo, hi in zip(tiers, low_tiers, high_tiers, strict=True)
    ]
    assert low_ingress.replicas is not None and high_ingress.replicas is not None
    ingress = replace(ingress, autoscaling=(low_ingress.replicas, high_ingress.replicas))
    plan = CapacityPlan(policy.name, qps, tuple(ranged), ingress, a, reach_measured_on)
    return replace(plan, notes=_notes(loaded, plan))


def measure_reach(
    loaded: PolicyFile, X: np.ndarray, *, evaluator: Evaluator | None = None
) -> dict[str, float]:
    """Share of rows reaching each tier when ``X`` is replayed through the policy.

    A row reaches a tier when the engine sends it there (a speculative policy starts the
    expensive tier for every row). The same count as `cascade evaluate`'s "rows reaching
    each tier", over the policy's tiers (0 for a tier no row reaches).

    Example::

        measure_reach(read_policy("policies/digits.yaml"), X)  # {'tiny': 1.0, 'small': 0.0, ...}
    """
    tier_cards(loaded)  # its clear errors before the replay's
    if len(X) == 0:
        raise PolicyError("capacity plan: no rows to measure the escalation on")
    evaluator = evaluator if evaluator is not None else Evaluator(loaded)
    decisions = evaluator.replay(loaded.policy, X).decisions
    reached = dict.fromkeys(loaded.policy.tiers, 0)
    for decision in decisions:
        for step in decision.steps:
            reached[step.tier] += 1
    return {tier: count / len(decisions) for tier, count in reached.items()}


def scorer_per_row_us(loaded: PolicyFile) -> dict[int, float] | None:
    """Per-row cost by batch size of a complexity policy's ONNX scorer, measured now.

    None for other policies and for rule or custom scorers (their cost is not measured).

    Example::

        scorer_per_row_us(read_policy("policies/my-complexity.yaml"))  # {1: 9.8, 32: 0.7, ...}
    """
    from cascade.backends import OnnxModel
    from cascade.zoo.measure import measure_latency

    routing = loaded.policy.routing
    if not isinstance(routing, ComplexityRouting):
        return None
    spec = routing.scorer
    if spec.name != "onnx" or spec.model is None:
        return None
    model = OnnxModel(loaded.base_dir / spec.model)
    rows = np.zeros((256, model.input_spec.width or 1), dtype=np.float32)
    latency = measure_latency(model, rows, single_row_runs=20, min_seconds=0.05)
    return dict(latency.per_row_us)
