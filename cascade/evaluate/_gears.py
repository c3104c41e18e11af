"""Plan degradation gears offline: which cheaper configurations to fall to, at what load.

CascadeServe's "gear plan", in small: every candidate gear (lower thresholds, or a cap on the
tiers) is replayed on labelled data with the engine that serves; the ones that are not beaten
on both cost and accuracy form a frontier; the ladder takes from it, most accurate first,
each gear cheaper than the one before by a clear margin. When each gear engages follows from
the measured capacity of the full-quality service and the deadline: by Little's law a replica
answering ``capacity`` requests a second holds ``capacity * deadline`` of them when requests
just meet their deadline, so the first gear engages at a quarter of that and each next one
at twice the previous depth, below what one replica holds at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cascade.errors import PolicyError
from cascade.evaluate._replay import Evaluator
from cascade.policy import Policy, PolicyFile
from cascade.routing import routed_tiers

__all__ = ["GearCandidate", "GearPlan", "plan_gears"]


@dataclass(frozen=True)
class GearCandidate:
    """One configuration a gear could run, as replayed: its relative cost and accuracy."""

    name: str
    max_tier: str | None
    threshold_shift: float
    relative_cost: float  # cost per row / the full-quality policy's
    accuracy: float


@dataclass(frozen=True)
class GearPlan:
    """The chosen ladder (policy ``gears`` entries, in order) and what it was chosen from."""

    full: GearCandidate
    candidates: tuple[GearCandidate, ...]
    chosen: tuple[GearCandidate, ...]
    gears: tuple[dict[str, object], ...]
    notes: tuple[str, ...] = field(default=())


def _candidates(
    policy: Policy, shifts: Sequence[float], costs: dict[str, float]
) -> list[dict[str, object]]:
    tiers = sorted(routed_tiers(policy.chain_routing), key=costs.__getitem__)
    out: list[dict[str, object]] = [
        {"name": f"shift-{shift:g}", "queue_depth_at_least": k + 1, "threshold_shift": shift}
        for k, shift in enumerate(shifts)
    ]
    for tier in tiers[:-1]:  # capping at the most expensive tier changes nothing
        out.append({"name": f"{tier}-only", "queue_depth_at_least": len(out) + 1,
                    "max_tier": tier})  # fmt: skip
    return out


def plan_gears(
    loaded: PolicyFile,
    X: np.ndarray,
    y: np.ndarray,
    *,
    capacity_rps: float,
    deadline_ms: float,
    shifts: Sequence[float] = (0.02, 0.05, 0.1, 0.2),
    max_gears: int = 2,
    min_cost_cut: float = 0.2,
    max_depth: int = 48,
    evaluator: Evaluator | None = None,
) -> GearPlan:
    """Replay candidate gears on ``X, y`` and choose a ladder of at most ``max_gears``.

    Each chosen gear costs at most ``1 - min_cost_cut`` of the one before (the first: of full
    quality) and is the most accurate candidate that does. ``capacity_rps`` is the measured
    throughput of the full-quality service (``cascade bench``); ``max_depth`` stays below the
    replica's ``max_ongoing_requests`` (512 by default), or the gear could never engage.

    Example::

        plan = plan_gears(loaded, X, y, capacity_rps=52, deadline_ms=1000)
        plan.gears   # ({"name": "shift-0.05", "queue_depth_at_least": 13, ...}, ...)
    """
    if not (capacity_rps > 0 and deadline_ms > 0):
        raise ValueError(f"capacity_rps and deadline_ms must be > 0, got {capacity_rps}, "
                         f"{deadline_ms}")  # fmt: skip
    evaluator = evaluator or Evaluator(loaded)
    policy = loaded.policy.model_copy(update={"gears": []})
    trial = Policy.model_validate(
        {**policy.model_dump(), "gears": _candidates(policy, shifts, evaluator.costs)}
    )

    def replay(name: str | None) -> tuple[float, float]:
        result = evaluator.replay(trial, X, gear=name)
        cost = float(np.mean([d.cost for d in result.decisions]))
        return cost, float((result.labels == y).mean())

    full_cost, full_accuracy = replay(None)
    if full_cost <= 0:
        raise PolicyError(f"policy '{policy.name}': the replay charged no cost; cannot plan")
    full = GearCandidate("normal", None, 0.0, 1.0, full_accuracy)
    candidates = []
    for gear in trial.gears:
        cost, accuracy = replay(gear.name)
        candidates.append(GearCandidate(gear.name, gear.max_tier, gear.threshold_shift,
                                        cost / full_cost, accuracy))  # fmt: skip

    def beaten(c: GearCandidate) -> bool:
        return any(
            (o.relative_cost <= c.relative_cost and o.accuracy > c.accuracy)
            or (o.relative_cost < c.relative_cost and o.accuracy >= c.accuracy)
            for o in candidates
        )

    frontier = [c for c in candidates if not beaten(c)]
    chosen: list[GearCandidate] = []
    budget = 1.0
    notes = []
    while len(chosen) < max_gears:
        fits = [c for c in frontier if c.relative_cost <= budget * (1 - min_cost_cut)]
        if not fits:
            break
        pick = max(fits, key=lambda c: (c.accuracy, -c.relative_cost))
        chosen.append(pick)
        budget = pick.relative_cost
    if not chosen:
        notes.append(f"no candidate cuts the cost by {min_cost_cut:.0%}: no gears")
    first = max(1, math.floor(capacity_rps * deadline_ms / 1000.0 / 4))
    depths: list[int] = []
    for k in range(len(chosen)):
        depth = min(first * 2**k, max_depth - (len(chosen) - 1 - k))
        depths.append(max(depth, depths[-1] + 1 if depths else 1))
    if depths and depths[-1] > max_depth:
        notes.append(f"the ladder needs depths {depths}, beyond {max_depth}")
    gears = []
    for candidate, depth in zip(chosen, depths, strict=True):
        entry: dict[str, object] = {"name": candidate.name, "queue_depth_at_least": depth}
        if candidate.max_tier is not None:
            entry["max_tier"] = candidate.max_tier
        if candidate.threshold_shift:
            entry["threshold_shift"] = candidate.threshold_shift
        gears.append(entry)
    return GearPlan(full, tuple(candidates), tuple(chosen), tuple(gears), tuple(notes))
