"""The decision trace: what the engine did for each request, and a batch's answers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["BatchResult", "Decision", "Reason", "Step", "TierCall"]

Reason = Literal[
    "confident",
    "last_tier",
    "max_escalations",
    "deadline",
    "band",
    "speculative_cheap",
    "speculative_expensive",
    "max_tier",
    "fallback",
    "cache",
]
"""Why a request stopped where it did.

confident: a tier's calibrated confidence cleared its threshold; last_tier: the end of the
chain; max_escalations: the escalation cap; deadline: the next tier could not finish within
the request's deadline (or, with ``degraded``, not even the first could); band: complexity
routing picked the tier; speculative_cheap / speculative_expensive: which of the two
speculative tiers answered; max_tier: the request's ``max_tier`` kept it from the tier
the routing would have sent it to next (or, under complexity routing, the band's tier);
fallback: the tier it was sent to failed, timed out or had its circuit open, so it got the
best answer already computed or the next cheaper tier's (always with ``degraded``); cache:
an answer cache had it (``cache`` says which, ``similarity`` how near the cached input was).
"""


@dataclass(frozen=True)
class Step:
    """One tier tried for one request.

    ``latency_ms`` is the wall time of the batched call this request was part of, and
    ``cost`` what this request was charged for it (a cancelled speculative call charges the
    share of the work done). ``error`` says why a call that gave no answer failed.

    Example::

        Step(tier="tiny", confidence=0.62, threshold=0.9, accepted=False, latency_ms=0.1, cost=0.01)
    """

    tier: str
    confidence: float | None
    threshold: float | None
    accepted: bool
    latency_ms: float
    cost: float
    error: str | None = None


@dataclass(frozen=True)
class Decision:
    """How one request was answered: the tiers tried, who answered, why, at what cost.

    ``latency_ms`` runs from the start of the batch until this request's answer was known;
    ``score`` is the complexity score where complexity routing chose the tier.

    Example::

        decision.answered_by, decision.reason     # ("large", "last_tier")
        json.dumps(decision.to_dict())
    """

    steps: tuple[Step, ...]
    answered_by: str
    reason: Reason
    cost: float
    latency_ms: float
    deadline_ms: float | None
    degraded: bool = False
    gear: str | None = None
    cache_hit: bool = False
    score: float | None = None
    cache: str | None = None  # "exact" or "similar" when cache_hit
    similarity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the trace as plain JSON types (the HTTP response's ``parameters``)."""
        out = asdict(self)
        out["steps"] = [asdict(step) for step in self.steps]
        return out


@dataclass(frozen=True)
class TierCall:
    """One batched call to a tier: which requests went, what came back, when, at what cost.

    Times are engine milliseconds since the batch started. ``probabilities`` is ``None``
    when the call was cancelled or failed; ``cost`` is charged to each request sent.
    ``parts`` is what the backend said of the call's time, in ms by part (a deployment
    tier's ``queue`` and ``model``: see ``CALL_TIMES``), in profiled batches only.
    """

    tier: str
    idx: np.ndarray
    probabilities: np.ndarray | None
    started_ms: float
    ended_ms: float
    cost: float
    parts: dict[str, float] | None = None

    @property
    def latency_ms(self) -> float:
        return self.ended_ms - self.started_ms

    @property
    def completed(self) -> bool:
        return self.probabilities is not None


@dataclass(frozen=True, repr=False)
class BatchResult:
    """The answers to a batch: the answering tier's probabilities and a decision per row.

    ``calls`` holds the batch's tier calls in the order they ended (failed and cancelled
    ones included) when the engine was asked for its timeline (``timeline=True``: a
    profiled request is in the batch); else it stays empty, so that routing an unprofiled
    batch keeps nothing it would not keep anyway.

    Example::

        result = await engine.run(rows)
        result.labels, result.decisions[0].answered_by
    """

    probabilities: np.ndarray
    decisions: tuple[Decision, ...]
    calls: tuple[TierCall, ...] = field(default=(), compare=False)

    @property
    def labels(self) -> np.ndarray:
        """The predicted class of each row (argmax of its probabilities)."""
        labels: np.ndarray = self.probabilities.argmax(axis=1)
        return labels

    def __len__(self) -> int:
        return len(self.decisions)

    def __repr__(self) -> str:
        # a summary: a whole split's decisions would make a repr of megabytes (asyncio
        # builds one of a task's result when asyncio.run finishes)
        answered: dict[str, int] = {}
        for decision in self.decisions:
            answered[decision.answered_by] = answered.get(decision.answered_by, 0) + 1
        return (
            f"BatchResult(rows={len(self)}, classes={self.probabilities.shape[1]}, "
            f"answered_by={answered})"
        )
