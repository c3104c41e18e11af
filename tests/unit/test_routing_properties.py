"""Invariants of the routing engine over random probabilities, thresholds, chains and caps.

Every request gets exactly one answer, from a tier of the chain, equal to that tier's row;
no request is escalated past the cap; the same inputs give the same decisions; and SLA
routing never starts a tier whose estimate ends past the request's deadline (except the
first-tier floor, which is flagged degraded), nor gives up on one it could have fitted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.backends import FakeModel
from cascade.policy import Policy
from cascade.routing import BatchResult, Engine, confidence

TIERS = ("t0", "t1", "t2", "t3")


@dataclass
class Case:
    n: int
    chain: list[str]
    thresholds: list[float | None]
    cap: int | None
    measure: str
    kind: str
    tables: dict[str, np.ndarray]
    took_ms: dict[str, float]
    estimates_ms: dict[str, float]
    ewma: float
    budgets: list[float | None]
    default_deadline_ms: float


@st.composite
def cases(draw: st.DrawFn, kind: str | None = None) -> Case:
    n = draw(st.integers(1, 10))
    length = draw(st.integers(1, len(TIERS)))
    chain = list(draw(st.permutations(TIERS)))[:length]
    n_classes = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    concentration = draw(st.sampled_from([0.2, 1.0, 5.0]))
    tables = {
        t: rng.dirichlet([concentration] * n_classes, size=n).astype(np.float32) for t in TIERS
    }
    threshold = st.floats(0.0, 1.0)
    thresholds: list[float | None] = [draw(threshold) for _ in chain[:-1]]
    thresholds.append(draw(st.none() | threshold))
    ms = st.floats(0.01, 20.0)
    return Case(
        n=n,
        chain=chain,
        thresholds=thresholds,
        cap=draw(st.none() | st.integers(0, 3)),
        measure=draw(st.sampled_from(["max_prob", "margin", "entropy"])),
        kind=kind or draw(st.sampled_from(["confidence", "sla"])),
        tables=tables,
        took_ms={t: draw(ms) for t in TIERS},
        estimates_ms={t: draw(ms) for t in TIERS},
        ewma=draw(st.floats(0.0, 1.0)),
        budgets=[draw(st.none() | st.floats(0.0, 60.0)) for _ in range(n)],
        default_deadline_ms=draw(st.floats(0.01, 60.0)),
    )


@dataclass
class Observed:
    tier: str
    rows: list[int]
    start_ms: float
    estimate_ms: float


class Harness:
    """A fresh engine and fake clock for one case; records every backend call."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.t = 0.0
        self.calls: list[Observed] = []
        models = {t: FakeModel(self._answer(t), width=1, name=t) for t in TIERS}
        routing: dict[str, Any] = {
            "kind": case.kind,
            "measure": case.measure,
            "chain": [
                {"tier": t, "threshold": th}
                for t, th in zip(case.chain, case.thresholds, strict=True)
            ],
            "max_escalations": case.cap,
        }
        if case.kind == "sla":
            routing["default_deadline_ms"] = case.default_deadline_ms
        policy = Policy.model_validate(
            {"name": "p", "tiers": {t: {"model": f"{t}.onnx"} for t in TIERS}, "routing": routing}
        )
        self.engine = Engine(
            policy,
            models,
            costs={t: float(i + 1) for i, t in enumerate(TIERS)},
            latency_ms=case.estimates_ms,
            clock=lambda: self.t,
            ewma=case.ewma,
        )

    def _answer(self, tier: str) -> Any:
        def answer(rows: np.ndarray) -> np.ndarray:
            ids = rows[:, 0].astype(int)
            self.calls.append(
                Observed(tier, ids.tolist(), self.t * 1000.0, self.engine.latency_estimate(tier))
            )
            self.t += self.case.took_ms[tier] / 1000.0
            return self.case.tables[tier][ids]

        return answer

    def run(self) -> BatchResult:
        rows = np.arange(self.case.n, dtype=np.float32)[:, None]
        return asyncio.run(self.engine.run(rows, deadlines_ms=self.case.budgets))


def deadline(case: Case, i: int) -> float:
    budget = case.budgets[i]
    return case.default_deadline_ms if budget is None else budget


@settings(max_examples=80, deadline=None)
@given(cases())
def test_one_answer_per_request_within_the_cap(case: Case) -> None:
    result = Harness(case).run()
    assert len(result) == case.n == len(result.probabilities)
    cap = len(case.chain) - 1 if case.cap is None else min(case.cap, len(case.chain) - 1)
    for i, d in enumerate(result.decisions):
        assert d.answered_by in case.chain
        np.testing.assert_array_equal(result.probabilities[i], case.tables[d.answered_by][i])
        assert 1 <= len(d.steps) <= cap + 1
        assert [s.tier for s in d.steps] == case.chain[: len(d.steps)]
        assert [s.accepted for s in d.steps] == [False] * (len(d.steps) - 1) + [True]
        assert d.steps[-1].tier == d.answered_by
        assert all(s.cost == TIERS.index(s.tier) + 1 for s in d.steps)
        assert d.cost == sum(s.cost for s in d.steps)
        # escalated exactly when the tier's confidence missed its threshold
        for k, step in enumerate(d.steps[:-1]):
            threshold = case.thresholds[k]
            assert threshold is not None and step.confidence is not None
            assert step.confidence < threshold
        last = d.steps[-1]
        if d.reason == "confident":
            assert last.threshold is not None and last.confidence is not None
            assert last.confidence >= last.threshold
        if d.reason == "last_tier":
            assert len(d.steps) == len(case.chain)
        if d.reason == "max_escalations":
            assert len(d.steps) == cap + 1 < len(case.chain)


@settings(max_examples=80, deadline=None)
@given(cases(kind="confidence"))
def test_confidence_routing_stops_at_the_first_confident_tier(case: Case) -> None:
    result = Harness(case).run()
    for i, d in enumerate(result.decisions):
        for k, step in enumerate(d.steps):
            raw = confidence(case.tables[step.tier][i : i + 1], case.measure)  # type: ignore[arg-type]
            assert step.confidence == float(raw[0])
            threshold = case.thresholds[k]
            sure = threshold is not None and raw[0] >= threshold
            assert step.accepted == (sure or k == len(d.steps) - 1)
            if k == len(d.steps) - 1 and d.reason != "confident":
                # a confident answer is only ever overruled by a deadline the row had missed
                assert not sure or (d.reason == "deadline" and d.degraded)


@settings(max_examples=60, deadline=None)
@given(cases())
def test_same_inputs_give_the_same_decisions(case: Case) -> None:
    first, second = Harness(case).run(), Harness(case).run()
    assert first.decisions == second.decisions
    np.testing.assert_array_equal(first.probabilities, second.probabilities)


@settings(max_examples=120, deadline=None)
@given(cases(kind="sla"))
def test_sla_never_starts_a_tier_past_the_deadline(case: Case) -> None:
    harness = Harness(case)
    result = harness.run()
    first = case.chain[0]
    for call in harness.calls:
        for row in call.rows:
            if call.tier == first:
                continue
            assert call.start_ms + call.estimate_ms <= deadline(case, row)
    first_estimate = case.estimates_ms[first]
    for i, d in enumerate(result.decisions):
        late = deadline(case, i) < first_estimate
        assert d.degraded == late
        assert d.deadline_ms == deadline(case, i)
        if late:
            assert len(d.steps) == 1 and d.reason == "deadline"
        elif d.reason == "deadline":
            # it gave up only because the next tier could not have finished in time
            following = case.chain[len(d.steps)]
            assert d.latency_ms + case.estimates_ms[following] > deadline(case, i)


def small_engine(routing: dict[str, Any], tables: dict[str, np.ndarray], **kwargs: Any) -> Engine:
    models = {
        t: FakeModel(lambda rows, t=t: tables[t][rows[:, 0].astype(int)], width=2) for t in tables
    }
    policy = Policy.model_validate(
        {"name": "p", "tiers": {t: {"model": f"{t}.onnx"} for t in tables}, "routing": routing}
    )
    ones = dict.fromkeys(tables, 1.0)
    return Engine(policy, models, costs=ones, latency_ms=ones, clock=lambda: 0.0, **kwargs)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12),
    st.lists(st.floats(0.0, 1.0), min_size=0, max_size=3, unique=True).map(sorted),
    st.integers(0, 2**32 - 1),
)
def test_complexity_sends_each_row_to_its_band(
    scores: list[float], bounds: list[float], seed: int
) -> None:
    from cascade.routing import FeatureScorer

    rng = np.random.default_rng(seed)
    names = TIERS[: len(bounds) + 1]
    tables = {t: rng.dirichlet([1.0] * 3, size=len(scores)).astype(np.float32) for t in names}
    bands: list[dict[str, Any]] = [
        {"tier": t, "below": b} for t, b in zip(names, bounds, strict=False)
    ]
    bands.append({"tier": names[-1]})
    routing = {
        "kind": "complexity",
        "scorer": {"name": "feature", "feature": 1, "low": 0.0, "high": 1.0},
        "bands": bands,
    }
    engine = small_engine(routing, tables, scorer=FeatureScorer(feature=1, low=0.0, high=1.0))
    rows = np.column_stack([np.arange(len(scores)), scores]).astype(np.float32)
    result = asyncio.run(engine.run(rows))
    assert len(result) == len(scores)
    for i, d in enumerate(result.decisions):
        score = float(rows[i, 1])
        expected = names[sum(score >= b for b in bounds)]
        assert (d.answered_by, d.reason, d.score) == (expected, "band", score)
        assert len(d.steps) == 1
        np.testing.assert_array_equal(result.probabilities[i], tables[expected][i])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_speculative_answers_each_row_once(n: int, threshold: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tables = {t: rng.dirichlet([0.5] * 3, size=n).astype(np.float32) for t in ("t0", "t1")}
    routing = {"kind": "speculative", "cheap": "t0", "expensive": "t1", "threshold": threshold}
    rows = np.column_stack([np.arange(n), np.zeros(n)]).astype(np.float32)
    result = asyncio.run(small_engine(routing, tables).run(rows))
    sure = confidence(tables["t0"], "max_prob") >= threshold
    for i, d in enumerate(result.decisions):
        tier = "t0" if sure[i] else "t1"
        assert d.answered_by == tier and [s.tier for s in d.steps] == ["t0", "t1"]
        assert d.reason == ("speculative_cheap" if sure[i] else "speculative_expensive")
        np.testing.assert_array_equal(result.probabilities[i], tables[tier][i])
