"""Routing: the engine that runs a policy over tier backends, its strategies and traces.

Example::

    from cascade.routing import Engine

    engine = Engine(policy, backends, costs={"tiny": 0.01, "large": 1.0},
                    latency_ms={"tiny": 0.05, "large": 2.0})
    result = await engine.run(rows)
    result.labels, [d.answered_by for d in result.decisions]
"""

from __future__ import annotations

from cascade.routing._confidence import calibrate, confidence
from cascade.routing._decision import BatchResult, Decision, Reason, Step, TierCall
from cascade.routing._deferral import LearnedRule, deferral_features, deferral_width
from cascade.routing._engine import Engine
from cascade.routing._ranker import Ranker, Ranking, StageTrace
from cascade.routing._scorers import SCORERS, FeatureScorer, OnnxScorer, Scorer, make_scorer
from cascade.routing._strategies import (
    ROUTERS,
    ComplexityRouter,
    ConfidenceRouter,
    Pending,
    RouteContext,
    Router,
    SlaRouter,
    SpeculativeRouter,
    make_router,
    routed_tiers,
)

__all__ = [
    "ROUTERS",
    "SCORERS",
    "BatchResult",
    "ComplexityRouter",
    "ConfidenceRouter",
    "Decision",
    "Engine",
    "FeatureScorer",
    "LearnedRule",
    "OnnxScorer",
    "Pending",
    "Ranker",
    "Ranking",
    "Reason",
    "RouteContext",
    "Router",
    "Scorer",
    "SlaRouter",
    "SpeculativeRouter",
    "StageTrace",
    "Step",
    "TierCall",
    "calibrate",
    "confidence",
    "deferral_features",
    "deferral_width",
    "make_router",
    "make_scorer",
    "routed_tiers",
]
