"""Policy files: schema (pydantic), loading with file:line errors, JSON Schema.

Example::

    from cascade.policy import load_policy

    loaded = load_policy("policies/digits.yaml")
    loaded.policy.routing.kind, loaded.model_path("tiny")
"""

from __future__ import annotations

from cascade.policy._loader import LoadedPolicy, load_policy, parse_policy
from cascade.policy._models import (
    Autoscaling,
    Band,
    Batching,
    CacheSection,
    Calibration,
    ChainStep,
    ComplexityRouting,
    ConfidenceMeasure,
    ConfidenceRouting,
    Gear,
    Policy,
    Provenance,
    Resources,
    Routing,
    Scorer,
    SlaRouting,
    SpeculativeRouting,
    Stage,
    Tier,
)
from cascade.policy._schema import policy_json_schema, write_schema

__all__ = [
    "Autoscaling",
    "Band",
    "Batching",
    "CacheSection",
    "Calibration",
    "ChainStep",
    "ComplexityRouting",
    "ConfidenceMeasure",
    "ConfidenceRouting",
    "Gear",
    "LoadedPolicy",
    "Policy",
    "Provenance",
    "Resources",
    "Routing",
    "Scorer",
    "SlaRouting",
    "SpeculativeRouting",
    "Stage",
    "Tier",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
    "write_schema",
]
