"""The routing engine: strategies, traces, costs, deadlines, calibration and scorers.

Backends are FakeModels whose probabilities are looked up by row id (column 0 of each row)
and whose calls advance a fake clock by a fixed time per tier, so nothing sleeps except the
speculative tests, which need a call still running to cancel.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade.backends import FakeModel
from cascade.errors import BackendError, InputError, ModelUnavailable, PolicyError
from cascade.evaluate import fit_isotonic, fit_temperature
from cascade.policy import Calibration, Policy
from cascade.policy import Scorer as ScorerSpec
from cascade.routing import (
    ROUTERS,
    SCORERS,
    BatchResult,
    Engine,
    FeatureScorer,
    calibrate,
    confidence,
    make_router,
    make_scorer,
)


class FakeClock:
    """Seconds that pass only when a fake backend says so."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def advance_ms(self, ms: float) -> None:
        self.t += ms / 1000.0


def peaked(confidences: list[float], label: int, n_classes: int = 3) -> np.ndarray:
    """Rows whose top probability is ``confidences[i]``, on class ``label``."""
    out = []
    for c in confidences:
        rest = (1.0 - c) / (n_classes - 1)
        row = [rest] * n_classes
        row[label] = c
        out.append(row)
    return np.array(out, dtype=np.float32)


def backend(
    table: np.ndarray, clock: FakeClock, ms: float, *, width: int = 2, **kwargs: Any
) -> FakeModel:
    def answer(rows: np.ndarray) -> np.ndarray:
        clock.advance_ms(ms)
        return table[rows[:, 0].astype(int)]

    return FakeModel(answer, width=width, **kwargs)


def rows_for(n: int, feature: list[float] | None = None) -> np.ndarray:
    column = feature if feature is not None else [0.0] * n
    return np.column_stack([np.arange(n), column]).astype(np.float32)


def policy(
    routing: dict[str, Any], tiers: tuple[str, ...] = ("tiny", "small", "large"), **tier_opts: Any
) -> Policy:
    return Policy.model_validate(
        {
            "name": "test",
            "tiers": {t: {"model": f"{t}.onnx", **tier_opts.get(t, {})} for t in tiers},
            "routing": routing,
        }
    )


def chain_routing(
    kind: str = "confidence", thresholds: tuple[float, ...] = (0.9, 0.8), **extra: Any
) -> dict[str, Any]:
    names = ["tiny", "small", "large"]
    steps: list[dict[str, Any]] = [
        {"tier": t, "threshold": th} for t, th in zip(names, thresholds, strict=False)
    ]
    steps.append({"tier": names[len(thresholds)]})
    return {"kind": kind, "chain": steps, **extra}


COSTS = {"tiny": 0.01, "small": 0.1, "large": 1.0}
TIMES = {"tiny": 1.0, "small": 3.0, "large": 10.0}

# tiny answers class 1, small class 2, large class 0: labels show who answered
TINY = peaked([0.95, 0.5, 0.6, 0.99, 0.4, 0.7], label=1)
SMALL = peaked([0.2, 0.85, 0.5, 0.2, 0.9, 0.6], label=2)
LARGE = peaked([0.4] * 6, label=0)


class Setup:
    def __init__(
        self,
        routing: dict[str, Any],
        *,
        tables: dict[str, np.ndarray] | None = None,
        ewma: float = 0.2,
        estimates: dict[str, float] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.clock = FakeClock()
        tables = tables or {"tiny": TINY, "small": SMALL, "large": LARGE}
        self.tables = tables
        self.models = {t: backend(tables[t], self.clock, TIMES[t], name=t) for t in tables}
        self.policy = policy(routing, tiers=tuple(tables))
        self.engine = Engine(
            self.policy,
            self.models,
            costs=COSTS,
            latency_ms=estimates or TIMES,
            clock=self.clock,
            ewma=ewma,
            **engine_kwargs,
        )

    def run(self, n: int = 6, **kwargs: Any) -> BatchResult:
        return asyncio.run(self.engine.run(rows_for(n), **kwargs))


# -- confidence measures and calibration -------------------------------------------------


def test_measures_numerically() -> None:
    p = np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(confidence(p, "max_prob"), [0.7, 1.0, 1 / 3, 0.5])
    np.testing.assert_allclose(confidence(p, "margin"), [0.5, 1.0, 0.0, 0.0], atol=1e-12)
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    expected = [1 - h / math.log(3), 1.0, 0.0, 1 - math.log(2) / math.log(3)]
    np.testing.assert_allclose(confidence(p, "entropy"), expected, atol=1e-12)
    assert confidence(np.ones((2, 1)), "entropy").tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown confidence measure 'top'"):
        confidence(p, "top")  # type: ignore[arg-type]


def test_calibrate_temperature_and_isotonic() -> None:
    p = np.array([[0.95, 0.025, 0.025]])
    raw = confidence(p, "max_prob")
    assert calibrate(p, raw, None, "max_prob").tolist() == raw.tolist()
    soft = calibrate(p, raw, Calibration(method="temperature", temperature=3.0), "max_prob")
    tempered = p[0] ** (1 / 3)
    assert soft[0] == pytest.approx(tempered[0] / tempered.sum(), rel=1e-6)
    iso = Calibration(method="isotonic", x=[0.2, 0.8], y=[0.1, 0.5])
    np.testing.assert_allclose(
        calibrate(p, np.array([0.0, 0.5, 0.95]), iso, "max_prob"), [0.1, 0.3, 0.5]
    )


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(20_000, 5))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in calibrated])
    overconfident = np.exp(2.0 * logits)
    overconfident /= overconfident.sum(axis=1, keepdims=True)
    assert fit_temperature(overconfident, y) == pytest.approx(2.0, rel=0.1)
    with pytest.raises(ValueError, match="labels must lie in"):
        fit_temperature(overconfident[:2], [0, 7])


def test_fit_isotonic_returns_valid_knots() -> None:
    rng = np.random.default_rng(1)
    conf = rng.uniform(size=5000)
    correct = rng.uniform(size=5000) < conf**2
    x, y = fit_isotonic(conf, correct)
    assert 2 <= len(x) == len(y) <= 64
    assert x == sorted(x) and all(b >= a for a, b in itertools.pairwise(y))
    assert all(0 <= v <= 1 for v in x + y)
    calibration = Calibration(method="isotonic", x=x, y=y)  # the policy model accepts them
    mapped = calibrate(np.zeros((3, 2)), np.array([0.1, 0.5, 0.9]), calibration, "max_prob")
    np.testing.assert_allclose(mapped, [0.01, 0.25, 0.81], atol=0.08)
    assert fit_isotonic([0.7, 0.7], [True, False]) == ([0.0, 1.0], [0.5, 0.5])


# -- confidence chains -------------------------------------------------------------------


def test_chain_escalates_only_open_rows_and_sums_costs() -> None:
    s = Setup(chain_routing())
    result = s.run()
    assert [m.calls for m in s.models.values()] == [[6], [4], [2]]
    assert [d.answered_by for d in result.decisions] == [
        "tiny",
        "small",
        "large",
        "tiny",
        "small",
        "large",
    ]
    assert [d.reason for d in result.decisions] == [
        "confident",
        "confident",
        "last_tier",
        "confident",
        "confident",
        "last_tier",
    ]
    assert result.labels.tolist() == [1, 2, 0, 1, 2, 0]
    for i, d in enumerate(result.decisions):
        np.testing.assert_array_equal(result.probabilities[i], s.tables[d.answered_by][i])
    row2 = result.decisions[2]
    assert row2.cost == pytest.approx(1.11)
    assert [(st.tier, st.accepted, st.threshold) for st in row2.steps] == [
        ("tiny", False, 0.9),
        ("small", False, 0.8),
        ("large", True, None),
    ]
    assert row2.steps[0].confidence == pytest.approx(0.6)
    assert [st.latency_ms for st in row2.steps] == pytest.approx([1.0, 3.0, 10.0])
    assert [d.latency_ms for d in result.decisions[:3]] == pytest.approx([1.0, 4.0, 14.0])
    assert result.decisions[0].cost == pytest.approx(0.01)
    assert result.decisions[0].deadline_ms is None and not result.decisions[0].degraded
    assert len(result) == 6


def test_the_timeline_of_tier_calls_is_kept_only_when_asked() -> None:
    """A profiled batch gets every tier call with its times, failed ones too; others none."""
    s = Setup(chain_routing())
    assert s.run().calls == ()
    timed = s.run(timeline=True)
    assert [(c.tier, c.parts) for c in timed.calls] == [
        ("tiny", None), ("small", None), ("large", None)
    ]  # fmt: skip
    times = [(c.started_ms, c.ended_ms) for c in timed.calls]
    assert np.allclose(times, [(0.0, 1.0), (1.0, 4.0), (4.0, 14.0)])
    s.models["large"].fail_with = BackendError("large is down")
    failed = s.run(timeline=True)
    assert [(c.tier, c.completed) for c in failed.calls] == [
        ("tiny", True), ("small", True), ("large", False)
    ]  # fmt: skip
    assert {d.reason for d in failed.decisions} >= {"fallback"}


def test_max_tier_caps_each_row_of_a_chain() -> None:
    s = Setup(chain_routing())
    caps = ["small", "small", "small", None, "tiny", None]
    result = s.run(max_tiers=caps)
    # row 2 would reach large; row 4 would reach small; row 5 reaches large uncapped
    assert [m.calls for m in s.models.values()] == [[6], [3], [1]]
    assert [(d.answered_by, d.reason) for d in result.decisions] == [
        ("tiny", "confident"),
        ("small", "confident"),
        ("small", "max_tier"),
        ("tiny", "confident"),
        ("tiny", "max_tier"),
        ("large", "last_tier"),
    ]
    assert result.decisions[4].steps[0].accepted  # the capped answer was taken, not rejected


def test_max_tier_clamps_complexity_bands_and_skips_speculation() -> None:
    tables = {t: peaked([0.5] * 3, label=i) for i, t in enumerate(["tiny", "small", "large"])}
    s = Setup(COMPLEXITY, tables=tables, base_dir=Path("."))
    rows = rows_for(3, [0.0, 8.0, 8.0])
    result = asyncio.run(s.engine.run(rows, max_tiers=[None, "small", None]))
    assert [(d.answered_by, d.reason) for d in result.decisions] == [
        ("tiny", "band"),
        ("small", "max_tier"),
        ("large", "band"),
    ]
    engine, models = speculative_setup(peaked([0.95, 0.5, 0.5], label=1), large_latency_s=0.0)
    result = asyncio.run(engine.run(rows_for(3), max_tiers=[None, "tiny", None]))
    assert models["large"].calls == [2]  # the capped row never went to large
    assert [(d.answered_by, d.reason) for d in result.decisions] == [
        ("tiny", "speculative_cheap"),
        ("tiny", "max_tier"),
        ("large", "speculative_expensive"),
    ]


def test_max_tier_must_name_a_tier_that_can_answer() -> None:
    chain = [{"tier": "small", "threshold": 0.8}, {"tier": "large"}]
    routing = {"kind": "confidence", "chain": chain}
    s = Setup(routing, tables={"small": SMALL, "large": LARGE})
    s.engine.check_max_tier("small")
    with pytest.raises(InputError, match="max_tier 'tiny' is cheaper than every tier"):
        s.engine.check_max_tier("tiny")
    with pytest.raises(InputError, match="max_tier 'huge' is not a tier of this policy"):
        s.engine.check_max_tier("huge")
    with pytest.raises(InputError, match="max_tiers: expected one per row"):
        s.run(max_tiers=["small"])


def test_calibration_changes_decisions() -> None:
    softened = chain_routing()
    softened["chain"][0]["calibration"] = {"method": "temperature", "temperature": 3.0}
    result = Setup(softened).run()
    # softened, no tiny answer clears 0.9 any more
    assert all(d.answered_by != "tiny" for d in result.decisions)
    assert result.decisions[0].steps[0].confidence == pytest.approx(0.6276, abs=1e-3)

    raised = chain_routing()
    raised["chain"][0]["calibration"] = {"method": "isotonic", "x": [0, 0.5, 1], "y": [0, 0.95, 1]}
    result = Setup(raised).run()
    # every raw confidence >= 0.5 now maps above 0.9
    assert [d.answered_by for d in result.decisions] == ["tiny"] * 4 + ["small", "tiny"]


def test_margin_measure_drives_the_chain() -> None:
    # margins of tiny: 0.95-0.025, 0.5-0.25, 0.6-0.2, ...; only rows 0 and 3 clear 0.85
    result = Setup(chain_routing(measure="margin", thresholds=(0.85, 0.99))).run()
    assert [d.answered_by for d in result.decisions] == [
        "tiny",
        "large",
        "large",
        "tiny",
        "large",
        "large",
    ]
    assert result.decisions[1].steps[0].confidence == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("cap", "calls", "reasons"),
    [
        (0, [[6], [], []], {"confident", "max_escalations"}),
        (1, [[6], [4], []], {"confident", "max_escalations"}),
        (2, [[6], [4], [2]], {"confident", "last_tier"}),
        (5, [[6], [4], [2]], {"confident", "last_tier"}),
    ],
)
def test_escalation_cap(cap: int, calls: list[list[int]], reasons: set[str]) -> None:
    s = Setup(chain_routing(max_escalations=cap))
    result = s.run()
    assert [m.calls for m in s.models.values()] == calls
    assert {d.reason for d in result.decisions} == reasons
    assert all(len(d.steps) <= cap + 1 for d in result.decisions)
    capped = [d for d in result.decisions if d.reason == "max_escalations"]
    assert all(d.steps[-1].accepted and d.steps[-1].threshold is not None for d in capped)


# -- SLA ---------------------------------------------------------------------------------

SLA_TABLES = {"tiny": peaked([0.5] * 4, label=1), "large": peaked([0.9] * 4, label=0)}


def sla_routing(**extra: Any) -> dict[str, Any]:
    return {
        "kind": "sla",
        "chain": [{"tier": "tiny", "threshold": 0.9}, {"tier": "large"}],
        **extra,
    }


def test_sla_never_starts_an_escalation_past_the_deadline() -> None:
    s = Setup(sla_routing(), tables=SLA_TABLES)
    result = s.run(4, deadlines_ms=[50.0, 5.0, 0.5, None])
    assert s.models["tiny"].calls == [4]
    assert s.models["large"].calls == [2]  # rows 0 and 3; row 1's 1 + 10 ms > 5 ms
    d = result.decisions
    assert [x.answered_by for x in d] == ["large", "tiny", "tiny", "large"]
    assert [x.reason for x in d] == ["last_tier", "deadline", "deadline", "last_tier"]
    assert [x.degraded for x in d] == [False, False, True, False]
    assert [x.deadline_ms for x in d] == [50.0, 5.0, 0.5, 100.0]
    assert d[0].latency_ms == pytest.approx(11.0) and d[1].latency_ms == pytest.approx(1.0)


def test_sla_default_deadline_comes_from_the_policy() -> None:
    tight = Setup(sla_routing(default_deadline_ms=5.0), tables=SLA_TABLES)
    assert {d.reason for d in tight.run(4).decisions} == {"deadline"}
    assert tight.models["large"].calls == []
    loose = Setup(sla_routing(default_deadline_ms=50.0), tables=SLA_TABLES)
    assert {d.answered_by for d in loose.run(4).decisions} == {"large"}


def test_sla_uses_the_live_estimate() -> None:
    # large is estimated at 1 ms but takes 10: after one batch the estimate has grown
    # (ewma 0.5: 5.5 ms) and a 6 ms budget no longer admits the escalation (1 + 5.5 > 6)
    s = Setup(sla_routing(), tables=SLA_TABLES, ewma=0.5, estimates={"tiny": 1.0, "large": 1.0})
    assert {d.answered_by for d in s.run(4, deadlines_ms=[6.0] * 4).decisions} == {"large"}
    assert s.engine.latency_estimate("large") == pytest.approx(5.5)
    assert s.engine.latency_estimate("tiny") == pytest.approx(1.0)
    assert {d.reason for d in s.run(4, deadlines_ms=[6.0] * 4).decisions} == {"deadline"}


def test_ewma_estimate_updates_from_observed_latency() -> None:
    s = Setup(chain_routing(), ewma=0.5, estimates={"tiny": 3.0, "small": 3.0, "large": 2.0})
    s.run()
    assert s.engine.latency_estimate("tiny") == pytest.approx(2.0)  # observed 1 ms
    assert s.engine.latency_estimate("large") == pytest.approx(6.0)  # observed 10 ms
    s.run()
    assert s.engine.latency_estimate("tiny") == pytest.approx(1.5)
    frozen = Setup(chain_routing(), ewma=0.0, estimates={"tiny": 3.0, "small": 3.0, "large": 2.0})
    frozen.run()
    assert frozen.engine.latency_estimate("tiny") == 3.0
    with pytest.raises(PolicyError, match="no latency estimate for tier 'huge'"):
        frozen.engine.latency_estimate("huge")


# -- complexity --------------------------------------------------------------------------

COMPLEXITY = {
    "kind": "complexity",
    "scorer": {"name": "feature", "feature": 1, "low": 0.0, "high": 10.0},
    "bands": [{"tier": "tiny", "below": 0.3}, {"tier": "small", "below": 0.7}, {"tier": "large"}],
}


def test_complexity_bands_including_boundaries() -> None:
    values = [0.0, 2.9, 3.0, 6.9, 7.0, 10.0, 20.0, -5.0]
    tables = {t: peaked([0.5] * 8, label=i) for i, t in enumerate(["tiny", "small", "large"])}
    s = Setup(COMPLEXITY, tables=tables, base_dir=Path("."))
    result = asyncio.run(s.engine.run(rows_for(8, values)))
    assert [d.answered_by for d in result.decisions] == [
        "tiny",
        "tiny",
        "small",
        "small",
        "large",
        "large",
        "large",
        "tiny",
    ]
    assert [m.calls for m in s.models.values()] == [[3], [2], [3]]
    scores = [d.score for d in result.decisions]
    assert scores == pytest.approx([0.0, 0.29, 0.3, 0.69, 0.7, 1.0, 1.0, 0.0], abs=1e-6)
    d = result.decisions[2]
    assert d.reason == "band" and d.cost == pytest.approx(0.1)
    assert d.steps[0].confidence is None and d.steps[0].accepted


def test_complexity_runs_the_tiers_concurrently() -> None:
    clock = FakeClock()
    started: list[str] = []

    def slow(tier: str) -> FakeModel:
        def answer(rows: np.ndarray) -> np.ndarray:
            started.append(tier)
            return peaked([0.5] * len(rows), label=0)

        return FakeModel(answer, width=2, latency_s=0.02)

    routing = {**COMPLEXITY, "bands": [{"tier": "tiny", "below": 0.5}, {"tier": "large"}]}
    engine = Engine(
        policy(routing, tiers=("tiny", "large")),
        {"tiny": slow("tiny"), "large": slow("large")},
        costs=COSTS,
        latency_ms=TIMES,
        clock=clock,
        scorer=FeatureScorer(feature=1, low=0.0, high=1.0),
    )

    async def both_in_flight() -> None:
        task = asyncio.create_task(engine.run(rows_for(2, [0.0, 1.0])))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # both calls are sleeping in their backends before either has answered
        assert started == []
        await task

    asyncio.run(both_in_flight())
    assert sorted(started) == ["large", "tiny"]


def test_complexity_needs_a_scorer() -> None:
    tables = {t: LARGE for t in ("tiny", "small", "large")}
    with pytest.raises(PolicyError, match="complexity routing needs a scorer, or base_dir"):
        Setup(COMPLEXITY, tables=tables)
    with pytest.raises(PolicyError, match="complexity routing needs a scorer"):
        make_router(policy(COMPLEXITY).routing)


class ConstantScorer:
    def __init__(self, *, value: float) -> None:
        self.value = value

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.full(len(rows), self.value)


def test_scorer_registry_and_out_of_tree_scorers(tmp_path: Path) -> None:
    assert sorted(SCORERS) == ["feature", "onnx"]
    scorer = make_scorer(
        ScorerSpec(name=f"{__name__}:ConstantScorer", params={"value": 0.4}), base_dir=tmp_path
    )
    assert scorer.score(np.zeros((2, 2))).tolist() == [0.4, 0.4]
    # the policy model already refuses these; make_scorer checks again for specs built
    # without validation
    invalid = ScorerSpec.model_construct
    with pytest.raises(PolicyError, match=r"unknown scorer 'length' \(allowed: feature, onnx"):
        make_scorer(invalid(name="length"), base_dir=tmp_path)
    with pytest.raises(PolicyError, match="cannot import it"):
        make_scorer(ScorerSpec(name="no_such_module_xyz:Scorer"), base_dir=tmp_path)
    with pytest.raises(PolicyError, match="cannot construct it with params"):
        make_scorer(
            ScorerSpec(name=f"{__name__}:ConstantScorer", params={"v": 1}), base_dir=tmp_path
        )
    with pytest.raises(PolicyError, match=r"scorer 'feature' needs \['low', 'high'\]"):
        make_scorer(invalid(name="feature", feature=0, low=None, high=None), base_dir=tmp_path)
    with pytest.raises(PolicyError, match="low and high must differ"):
        make_scorer(invalid(name="feature", feature=0, low=1, high=1), base_dir=tmp_path)
    with pytest.raises(PolicyError, match="scorer 'onnx' needs `model`"):
        make_scorer(invalid(name="onnx", model=None), base_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="no such model file"):
        make_scorer(ScorerSpec(name="onnx", model="missing.onnx"), base_dir=tmp_path)
    feature = make_scorer(ScorerSpec(name="feature", feature=3, low=10, high=0), base_dir=tmp_path)
    np.testing.assert_allclose(feature.score(np.array([[0, 0, 0, 2.5]])), [0.75])
    with pytest.raises(InputError, match="scores column 3, but rows have shape"):
        feature.score(np.zeros((1, 2)))


def test_onnx_scorer_on_a_real_classifier(tmp_path: Path) -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cascade.zoo.export import sklearn_to_onnx

    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    (tmp_path / "router.onnx").write_bytes(
        sklearn_to_onnx(model, n_features=30).SerializeToString()
    )
    routing = {
        "kind": "complexity",
        "scorer": {"name": "onnx", "model": "router.onnx"},
        "bands": [{"tier": "tiny", "below": 0.5}, {"tier": "large"}],
    }
    scorer = make_scorer(policy(routing).routing.scorer, base_dir=tmp_path)  # type: ignore[union-attr]
    expected = model.predict_proba(X[:40])[:, 1]
    np.testing.assert_allclose(scorer.score(X[:40]), expected, atol=1e-4)

    clock = FakeClock()
    answer = peaked([0.5], label=0)
    models = {
        t: FakeModel(lambda rows: np.repeat(answer, len(rows), axis=0), width=30)
        for t in ("tiny", "large")
    }
    engine = Engine(
        policy(routing, tiers=("tiny", "large")),
        models,
        costs=COSTS,
        latency_ms=TIMES,
        clock=clock,
        base_dir=tmp_path,
    )
    result = asyncio.run(engine.run(X[:40]))
    hard = [d.answered_by == "large" for d in result.decisions]
    assert hard == (expected >= 0.5).tolist()


# -- speculative -------------------------------------------------------------------------


def speculative(threshold: float = 0.9) -> dict[str, Any]:
    return {"kind": "speculative", "cheap": "tiny", "expensive": "large", "threshold": threshold}


def speculative_setup(
    tiny: np.ndarray, large_latency_s: float
) -> tuple[Engine, dict[str, FakeModel]]:
    clock = FakeClock()
    models = {
        "tiny": backend(tiny, clock, 1.0),
        "large": backend(
            peaked([0.6] * len(tiny), label=0), clock, 10.0, latency_s=large_latency_s
        ),
    }
    engine = Engine(
        policy(speculative(), tiers=("tiny", "large")),
        models,
        costs=COSTS,
        latency_ms=TIMES,
        clock=clock,
    )
    return engine, models


def test_speculative_all_confident_cancels_the_expensive_call() -> None:
    engine, models = speculative_setup(peaked([0.95, 0.99], label=1), large_latency_s=5.0)
    result = asyncio.run(engine.run(rows_for(2)))
    assert models["large"].calls == []  # cancelled while sleeping, never answered
    assert {d.reason for d in result.decisions} == {"speculative_cheap"}
    d = result.decisions[0]
    assert [(s.tier, s.accepted) for s in d.steps] == [("tiny", True), ("large", False)]
    # 1 ms of the 10 ms estimate had passed: a tenth of large's cost
    assert d.steps[1].cost == pytest.approx(0.1)
    assert d.cost == pytest.approx(0.11)
    assert d.latency_ms == pytest.approx(1.0)
    assert engine.latency_estimate("large") == 10.0  # a cancelled call teaches nothing


def test_speculative_mixed_batch_awaits_the_expensive_call() -> None:
    engine, models = speculative_setup(peaked([0.95, 0.5], label=1), large_latency_s=0.01)
    result = asyncio.run(engine.run(rows_for(2)))
    assert models["tiny"].calls == [2] and models["large"].calls == [2]
    cheap, expensive = result.decisions
    assert (cheap.answered_by, cheap.reason) == ("tiny", "speculative_cheap")
    assert (expensive.answered_by, expensive.reason) == ("large", "speculative_expensive")
    assert cheap.cost == expensive.cost == pytest.approx(1.01)
    assert cheap.latency_ms == pytest.approx(1.0) and expensive.latency_ms == pytest.approx(11.0)
    assert result.labels.tolist() == [1, 0]


def test_speculative_cheap_failure_cancels_the_expensive_call() -> None:
    clock = FakeClock()
    models = {
        "tiny": FakeModel(lambda r: r, width=2, fail_with=RuntimeError("tiny is down")),
        "large": backend(LARGE, clock, 10.0, latency_s=5.0),
    }
    engine = Engine(
        policy(speculative(), tiers=("tiny", "large")),
        models,
        costs=COSTS,
        latency_ms=TIMES,
        clock=clock,
    )
    with pytest.raises(BackendError, match="tier 'tiny': RuntimeError: tiny is down"):
        asyncio.run(engine.run(rows_for(2)))
    assert models["large"].calls == []


# -- failures, validation, traces --------------------------------------------------------


def test_backend_failure_names_the_tier() -> None:
    s = Setup(chain_routing())
    s.models["tiny"].fail_with = RuntimeError("out of memory")
    with pytest.raises(BackendError, match="tier 'tiny': RuntimeError: out of memory") as info:
        s.run()
    assert isinstance(info.value.__cause__, RuntimeError)
    s.models["tiny"].fail_with = ModelUnavailable("tiny.onnx: cannot load")
    with pytest.raises(ModelUnavailable, match=r"^tiny.onnx: cannot load$"):
        s.run()


def test_a_failed_escalation_falls_back_to_the_answer_already_computed() -> None:
    s = Setup(chain_routing())
    s.models["large"].fail_with = RuntimeError("out of memory")
    result = s.run()
    assert [(d.answered_by, d.reason, d.degraded) for d in result.decisions] == [
        ("tiny", "confident", False),
        ("small", "confident", False),
        ("small", "fallback", True),  # large failed: small's answer, flagged
        ("tiny", "confident", False),
        ("small", "confident", False),
        ("small", "fallback", True),
    ]
    assert result.labels.tolist() == [1, 2, 2, 1, 2, 2]
    failed = result.decisions[2].steps[-1]
    assert (failed.tier, failed.accepted) == ("large", False)
    assert failed.error == "tier 'large': RuntimeError: out of memory"
    assert result.decisions[2].to_dict()["steps"][-1]["error"] == failed.error


def hanging_large(
    latency_ms: dict[str, float], **large: Any
) -> tuple[Engine, dict[str, FakeModel]]:
    """tiny -> large, where large sleeps 5 s of real time before answering."""
    clock = FakeClock()
    models = {
        "tiny": backend(TINY, clock, 1.0),
        "large": backend(LARGE, clock, 1.0, latency_s=5.0),
    }
    routing = {
        "kind": "confidence",
        "chain": [{"tier": "tiny", "threshold": 0.9}, {"tier": "large"}],
    }
    p = policy(routing, tiers=("tiny", "large"), large=large)
    return Engine(p, models, costs=COSTS, latency_ms=latency_ms, clock=clock), models


def test_a_slow_tier_times_out_and_the_row_falls_back() -> None:
    engine, _ = hanging_large(TIMES, timeout_ms=20)
    result = asyncio.run(engine.run(rows_for(6)))
    escalated = [d for d in result.decisions if d.reason == "fallback"]
    assert len(escalated) == 4 and {d.answered_by for d in escalated} == {"tiny"}
    assert escalated[0].steps[-1].error == "tier 'large': no answer within 20 ms (its timeout)"


def test_a_deadline_caps_the_call_and_applies_to_confidence_routing() -> None:
    engine, models = hanging_large({"tiny": 1.0, "large": 2.0})
    # rows 0-2: 50 ms (large fits its 2 ms estimate, then hangs: cut at the deadline);
    # rows 3-5: 2.5 ms (after tiny's 1 ms, large's 2 ms does not fit: not started)
    result = asyncio.run(engine.run(rows_for(6), deadlines_ms=[50.0] * 3 + [2.5] * 3))
    reasons = [(d.answered_by, d.reason) for d in result.decisions]
    assert reasons == [
        ("tiny", "confident"),
        ("tiny", "fallback"),
        ("tiny", "fallback"),
        ("tiny", "confident"),
        ("tiny", "deadline"),
        ("tiny", "deadline"),
    ]
    error = result.decisions[1].steps[-1].error
    assert error is not None and "(the request's deadline)" in error
    assert models["large"].calls == []  # cancelled while it hung, never answered


@pytest.mark.parametrize(
    ("tier", "output", "match"),
    [
        (
            "tiny",
            lambda rows: np.ones((len(rows) + 1, 3)),
            r"expected probabilities of shape \[6, n_classes\], got \[7, 3\]",
        ),
        ("tiny", lambda rows: np.full((len(rows), 3), np.nan), "non-finite probabilities"),
        (
            "large",
            lambda rows: np.full((len(rows), 4), 0.25),
            "tier 'large' returns 4 classes, tier 'tiny' 3",
        ),
    ],
)
def test_bad_backend_output_is_a_backend_error(
    tier: str, output: Callable[[np.ndarray], np.ndarray], match: str
) -> None:
    routing = {
        "kind": "confidence",
        "chain": [{"tier": "tiny", "threshold": 0.9}, {"tier": "large"}],
    }
    s = Setup(routing, tables={"tiny": TINY, "large": LARGE})
    s.models[tier] = FakeModel(output, width=2)
    engine = Engine(s.policy, s.models, costs=COSTS, latency_ms=TIMES, clock=s.clock)
    with pytest.raises(BackendError, match=match):
        asyncio.run(engine.run(rows_for(6)))


def test_complexity_falls_back_to_the_next_cheaper_tier_and_honours_deadlines() -> None:
    tables = {t: peaked([0.5] * 3, label=i) for i, t in enumerate(["tiny", "small", "large"])}
    s = Setup(COMPLEXITY, tables=tables, base_dir=Path("."))
    s.models["large"].fail_with = RuntimeError("replica died")
    rows = rows_for(3, [0.0, 5.0, 8.0])  # bands: tiny, small, large
    result = asyncio.run(s.engine.run(rows))
    assert [(d.answered_by, d.reason, d.degraded) for d in result.decisions] == [
        ("tiny", "band", False),
        ("small", "band", False),
        ("small", "fallback", True),
    ]
    assert result.decisions[2].steps[0].error == "tier 'large': RuntimeError: replica died"
    s.models["large"].fail_with = None
    # large (10 ms estimate) does not fit 5 ms: small (3 ms) does; 0.5 ms fits nothing
    result = asyncio.run(s.engine.run(rows, deadlines_ms=[None, 0.5, 5.0]))
    assert [(d.answered_by, d.reason, d.degraded) for d in result.decisions] == [
        ("tiny", "band", False),
        ("tiny", "deadline", True),
        ("small", "deadline", False),
    ]
    assert s.models["large"].calls == [1]  # only the failed call of the first run


def test_speculative_falls_back_to_the_cheap_answer() -> None:
    engine, models = speculative_setup(peaked([0.95, 0.5], label=1), large_latency_s=0.0)
    models["large"].fail_with = RuntimeError("replica died")
    result = asyncio.run(engine.run(rows_for(2)))
    assert [(d.answered_by, d.reason, d.degraded) for d in result.decisions] == [
        ("tiny", "speculative_cheap", False),
        ("tiny", "fallback", True),
    ]
    models["large"].fail_with = None
    result = asyncio.run(engine.run(rows_for(2), deadlines_ms=[50.0, 5.0]))
    assert [(d.answered_by, d.reason) for d in result.decisions] == [
        ("tiny", "speculative_cheap"),
        ("tiny", "deadline"),  # large's 10 ms estimate never fitted: not started for it
    ]
    assert models["large"].calls[-1] == 1  # started for row 0 only


def test_a_gear_caps_tiers_and_lowers_thresholds_and_flags_what_it_changed() -> None:
    routing = chain_routing()
    p = policy(routing)
    geared = Policy.model_validate(
        {
            **p.model_dump(),
            "gears": [
                {"name": "busy", "queue_depth_at_least": 8, "threshold_shift": 0.15},
                {"name": "swamped", "queue_depth_at_least": 32, "max_tier": "small"},
            ],
        }
    )
    s = Setup(routing)
    s.engine.replace_policy(geared)
    normal = s.run()
    busy = s.run(gear="busy")  # thresholds 0.9 -> 0.75 and 0.8 -> 0.65
    swamped = s.run(gear="swamped")
    assert [d.answered_by for d in normal.decisions] == [
        "tiny", "small", "large", "tiny", "small", "large",
    ]  # fmt: skip
    # tiny 0.6 (row 2) still escalates; small 0.6 < 0.65 too: large. Row 5: tiny 0.7 < 0.75,
    # small 0.6: large. So "busy" changes nothing here but the thresholds it records.
    assert [d.answered_by for d in busy.decisions] == [d.answered_by for d in normal.decisions]
    assert {d.gear for d in busy.decisions} == {"busy"}
    assert busy.decisions[2].steps[0].threshold == pytest.approx(0.75)
    assert [(d.answered_by, d.reason, d.degraded) for d in swamped.decisions] == [
        ("tiny", "confident", False),
        ("small", "confident", False),
        ("small", "max_tier", True),  # large was out of the gear's reach
        ("tiny", "confident", False),
        ("small", "confident", False),
        ("small", "max_tier", True),
    ]
    gear = {"name": "busy", "queue_depth_at_least": 8, "threshold_shift": 0.35}
    shifted = Policy.model_validate({**p.model_dump(), "gears": [gear]})
    s.engine.replace_policy(shifted)
    loose = s.run(gear="busy")  # tiny accepts >= 0.55: rows 2 (0.6) and 5 (0.7) stop there
    assert [(d.answered_by, d.degraded) for d in loose.decisions] == [
        ("tiny", False), ("small", False), ("tiny", True),
        ("tiny", False), ("small", False), ("tiny", True),
    ]  # fmt: skip
    with pytest.raises(PolicyError, match="no gear 'idle' \\(gears: normal, busy\\)"):
        s.run(gear="idle")


def test_a_failing_tier_opens_its_breaker_and_rows_fall_back_fast() -> None:
    routing = {"kind": "confidence", "chain": [{"tier": "tiny", "threshold": 0.9},
                                               {"tier": "large"}]}  # fmt: skip
    s = Setup(routing, tables={"tiny": TINY, "large": LARGE})
    p = Policy.model_validate(
        {**s.policy.model_dump(), "tiers": {
            "tiny": {"model": "tiny.onnx"},
            "large": {"model": "large.onnx", "breaker": {"failure_threshold": 2,
                                                         "reset_after_s": 1.0}}}}
    )  # fmt: skip
    s.engine.replace_policy(p)
    s.models["large"].fail_with = RuntimeError("replica died")
    for _ in range(2):
        s.run()
    breaker = s.engine.breaker("large")
    assert breaker is not None and breaker.state == "open"
    calls = len(s.models["large"].calls)
    result = s.run()  # refused at once: large is not called
    assert len(s.models["large"].calls) == calls
    error = result.decisions[2].steps[-1].error
    assert error is not None and error.startswith("tier 'large': circuit open after 2")
    assert {d.reason for d in result.decisions if d.degraded} == {"fallback"}
    s.models["large"].fail_with = None
    s.clock.advance_ms(1000)  # half-open: one probe goes through and closes it
    assert {d.answered_by for d in s.run().decisions} == {"tiny", "large"}
    assert breaker.state == "closed"
    snapshot = s.engine.signals.snapshot()["large"]
    assert snapshot.calls_seen == 3 and snapshot.error_rate == pytest.approx(2 / 3)


def test_input_is_validated_once_for_the_whole_batch() -> None:
    s = Setup(chain_routing())
    with pytest.raises(InputError, match="expected 2 features per row, got 3"):
        asyncio.run(s.engine.run(np.zeros((4, 3))))
    with pytest.raises(InputError, match=r"deadlines_ms: expected one per row \(6\), got 2"):
        s.run(deadlines_ms=[1.0, 2.0])
    assert [m.calls for m in s.models.values()] == [[], [], []]
    sla = Setup(sla_routing(), tables=SLA_TABLES)
    with pytest.raises(InputError, match="finite number"):
        sla.run(4, deadlines_ms=[1.0, math.nan, None, 2.0])


def test_decision_to_dict_is_json_ready() -> None:
    decision = Setup(chain_routing()).run().decisions[2]
    data = json.loads(json.dumps(decision.to_dict()))
    assert data["answered_by"] == "large" and data["reason"] == "last_tier"
    assert [s["tier"] for s in data["steps"]] == ["tiny", "small", "large"]
    assert set(data) == {
        "steps",
        "answered_by",
        "reason",
        "cost",
        "latency_ms",
        "deadline_ms",
        "degraded",
        "gear",
        "cache_hit",
        "score",
        "cache",
        "similarity",
    }


def test_engine_checks_its_tables_and_replaces_policies() -> None:
    s = Setup(chain_routing())
    with pytest.raises(PolicyError, match=r"backends has no entry for tiers \['large'\]"):
        Engine(
            s.policy,
            {"tiny": s.models["tiny"], "small": s.models["small"]},
            costs=COSTS,
            latency_ms=TIMES,
        )
    with pytest.raises(PolicyError, match=r"costs has no entry for tiers \['small'\]"):
        Engine(s.policy, s.models, costs={"tiny": 1, "large": 1}, latency_ms=TIMES)
    with pytest.raises(ValueError, match="ewma must lie in"):
        Engine(s.policy, s.models, costs=COSTS, latency_ms=TIMES, ewma=1.5)

    s.engine.replace_policy(policy(chain_routing(thresholds=(0.0, 0.0))))
    assert {d.answered_by for d in s.run().decisions} == {"tiny"}
    bad = Policy.model_validate(
        {
            "name": "x",
            "tiers": {"huge": {"model": "h.onnx"}},
            "routing": {"kind": "confidence", "chain": [{"tier": "huge"}]},
        }
    )
    with pytest.raises(PolicyError, match="backends has no entry for tiers"):
        s.engine.replace_policy(bad)
    assert {d.answered_by for d in s.run().decisions} == {"tiny"}  # the old policy stays


def test_router_registry() -> None:
    assert sorted(ROUTERS) == ["complexity", "confidence", "sla", "speculative"]

    class Odd:
        kind = "bandit"

    with pytest.raises(
        PolicyError, match=r"unknown routing kind 'bandit' \(allowed: complexity, confidence, sla"
    ):
        make_router(Odd())
