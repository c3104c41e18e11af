"""The ranking cascade at run time: filter -> coarse -> fine over one query's candidates.

Each stage is a tier scoring every candidate it receives (one ``score`` per row, higher is
better). The filter drops candidates scoring below its ``min_score``, but never below k of
them, so a query with k candidates or more always gets k answers; coarse keeps its best N;
fine orders those and the best k come back, with fine's scores (equal scores: the earlier
candidate first, at every stage). Requests may ask for
another N or k up to the stages' ``max_keep``.

Concurrent queries share stage calls: while one call to a tier runs, the candidates of
other queries for that tier gather and go as one batch (hop cost per batch, not per query).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade.backends import Model
from cascade.errors import InputError, PolicyError
from cascade.policy import Policy

__all__ = ["Ranker", "Ranking", "StageTrace"]


@dataclass(frozen=True)
class StageTrace:
    """What one stage did for one query: candidates in and out, time, cost."""

    stage: str
    tier: str
    candidates_in: int
    candidates_out: int
    ms: float
    cost: float  # rows scored x the tier's per-row cost (the fine tier's = 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "tier": self.tier,
            "in": self.candidates_in,
            "out": self.candidates_out,
            "ms": round(self.ms, 4),
            "cost": round(self.cost, 6),
        }


@dataclass(frozen=True)
class Ranking:
    """The answer to one query: the best candidates, best first, with fine's scores.

    ``relative_cost`` is the cost of this query's stages over fine-scoring every candidate.
    """

    indices: np.ndarray  # int64 [m], positions in the candidate matrix
    scores: np.ndarray  # float32 [m]
    stages: tuple[StageTrace, ...]
    relative_cost: float


class _Merged:
    """One tier's calls, merged across concurrent queries.

    Calls wait one turn of the event loop, so queries that reach a stage together go as one
    batch; calls arriving while a batch runs form the next one.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self._pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._task: asyncio.Task[None] | None = None

    async def score(self, rows: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((rows, future))
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                await self._run(batch)
        finally:
            self._task = None

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        try:
            rows = batch[0][0] if len(batch) == 1 else np.concatenate([r for r, _ in batch])
            out = await self.model.predict(rows)
            scores = _scores(out, len(rows), self.model.name)
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for part, future in batch:
            if not future.done():
                future.set_result(scores[start : start + len(part)])
            start += len(part)


def _scores(out: np.ndarray, n: int, tier: str) -> np.ndarray:
    scores = np.asarray(out, dtype=np.float32)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.shape != (n,):
        raise PolicyError(f"tier '{tier}' gave scores of shape {list(out.shape)}; needs [{n}, 1]")
    return scores


def _top(scores: np.ndarray, m: int) -> np.ndarray:
    """Positions of the ``m`` highest scores, best first; equal scores: lower position first."""
    if m >= len(scores):
        return np.argsort(-scores, kind="stable")
    kth = np.partition(-scores, m - 1)[m - 1]  # minus the m-th highest score
    tied_or_better = np.flatnonzero(-scores <= kth)
    order = tied_or_better[np.lexsort((tied_or_better, -scores[tied_or_better]))]
    return order[:m]


class Ranker:
    """Runs a ranking policy's stages over one query's candidate matrix.

    Example::

        ranker = Ranker(policy, {"coarse": coarse_model, "fine": fine_model},
                        costs={"coarse": 0.01, "fine": 1.0})
        ranking = await ranker.rank(candidates, k=10)
        ranking.indices, ranking.scores
    """

    def __init__(
        self, policy: Policy, backends: Mapping[str, Model], *, costs: Mapping[str, float]
    ) -> None:
        if not policy.stages:
            raise PolicyError(f"policy '{policy.name}' has no ranking stages")
        self.policy = policy
        missing = [s.tier for s in policy.stages if s.tier not in backends]
        if missing:
            raise PolicyError(f"no backend for stage tiers {missing}")
        self._tiers = {s.tier: _Merged(backends[s.tier]) for s in policy.stages}
        fine = policy.stage("fine")
        assert fine is not None
        unit = costs.get(fine.tier) or 1.0
        self.costs = {s.tier: float(costs.get(s.tier, unit)) / unit for s in policy.stages}

    def replace_policy(self, policy: Policy) -> None:
        """New keeps, limits or filter cut from the next query on (same stage tiers)."""
        if [s.tier for s in policy.stages] != [s.tier for s in self.policy.stages]:
            raise PolicyError("a reload may change keeps and cuts, not the stages' tiers")
        self.policy = policy

    def resolve(self, k: int | None, n: int | None) -> tuple[int, int | None]:
        """k and N for a request asking for ``k``/``n`` (None: the policy's), checked."""
        fine = self.policy.stage("fine")
        coarse = self.policy.stage("coarse")
        assert fine is not None and fine.keep is not None
        k = fine.keep if k is None else k
        if not 1 <= k <= fine.limit:
            raise InputError(f"k={k} is outside this policy's limits [1, {fine.limit}]")
        if coarse is None:
            if n is not None:
                raise InputError("n applies to the coarse stage, and this policy has none")
            return k, None
        assert coarse.keep is not None
        n = max(coarse.keep, k) if n is None else n
        if not 1 <= n <= coarse.limit:
            raise InputError(f"n={n} is outside this policy's limits [1, {coarse.limit}]")
        if n < k:
            raise InputError(f"n={n} must be >= k={k}: fine can only order what coarse keeps")
        return k, n

    async def rank(
        self, candidates: np.ndarray, *, k: int | None = None, n: int | None = None
    ) -> Ranking:
        """The best ``k`` of ``candidates`` (float32 [count, width]), best first."""
        k, n = self.resolve(k, n)
        total = len(candidates)
        if total == 0:
            raise InputError("no candidates to rank; send at least one row")
        alive = np.arange(total)
        traces: list[StageTrace] = []
        scores = np.zeros(0, np.float32)
        for stage in self.policy.stages:
            began = time.perf_counter()
            scores = await self._tiers[stage.tier].score(candidates[alive])
            count_in = len(alive)
            if stage.name == "filter":
                assert stage.min_score is not None
                keep = scores >= stage.min_score
                if keep.sum() < min(k, count_in):  # never fewer than k survivors
                    keep[_top(scores, k)] = True
                alive, scores = alive[keep], scores[keep]
            elif stage.name == "coarse":
                assert n is not None
                order = np.sort(_top(scores, n))  # candidate order: fine's ties go to the lower
                alive, scores = alive[order], scores[order]
            else:
                order = _top(scores, k)
                alive, scores = alive[order], scores[order]
            cost = count_in * self.costs[stage.tier]
            ms = (time.perf_counter() - began) * 1000
            traces.append(StageTrace(stage.name, stage.tier, count_in, len(alive), ms, cost))
        relative = sum(t.cost for t in traces) / total  # fine on every candidate costs `total`
        return Ranking(alive.astype(np.int64), scores, tuple(traces), relative)
