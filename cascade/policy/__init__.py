"""Policy files: schema (pydantic), loading with file:line errors, JSON Schema.

Example::

    from cascade.policy import read_policy

    loaded = read_policy("policies/digits.yaml")
    loaded.policy.routing.kind, loaded.model_path("tiny")
"""

from __future__ import annotations

from cascade.policy._loader import PolicyFile, parse_policy, read_policy
from cascade.policy._models import (
    BUNDLED_DATASETS,
    RANKING_DATASETS,
    AuditSection,
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
    LearnedDeferral,
    LogSection,
    OverloadSection,
    Policy,
    ProfileSection,
    Provenance,
    ProvenanceReference,
    Resources,
    Routing,
    Scorer,
    ShadowSection,
    SlaRouting,
    SpeculativeRouting,
    Stage,
    Tier,
)
from cascade.policy._schema import policy_json_schema, write_schema

__all__ = [
    "BUNDLED_DATASETS",
    "RANKING_DATASETS",
    "AuditSection",
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
    "LearnedDeferral",
    "LogSection",
    "OverloadSection",
    "Policy",
    "PolicyFile",
    "ProfileSection",
    "Provenance",
    "ProvenanceReference",
    "Resources",
    "Routing",
    "Scorer",
    "ShadowSection",
    "SlaRouting",
    "SpeculativeRouting",
    "Stage",
    "Tier",
    "parse_policy",
    "policy_json_schema",
    "read_policy",
    "write_schema",
]
