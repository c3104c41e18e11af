"""Serving core shared by the Ray ingress and the plain ASGI edge: no Ray in here.

The Open Inference Protocol (KServe v2) request/response layer, the coalescer that
merges concurrent requests into engine batches, the framework-free HTTP service
(routes, errors, admission, decision trace) that every runtime puts behind its server.

Example::

    from cascade.serving import Coalescer, build_infer_response, parse_infer_request

    request = parse_infer_request(body, input_name="input", width=64, tiers=["tiny", "large"])
    probabilities, decisions = await coalescer.submit(request.rows, deadline_ms=request.deadline_ms)
"""

from __future__ import annotations

from cascade.serving._audit import AuditSink, LiveAudit, audit_limits
from cascade.serving._auth import (
    OPEN_HEALTH,
    TOKEN_ENV,
    BearerAuth,
    bearer_header,
    load_token,
)
from cascade.serving._coalescer import Coalescer
from cascade.serving._deadline import DEADLINE_HEADER, DEADLINE_HEADERS, request_budget_ms
from cascade.serving._metrics import METRICS, SCRAPED_PREFIX, MetricSpec, RecordingMetrics
from cascade.serving._openapi import openapi_document
from cascade.serving._profile import PROFILE_HEADER, Profile, sends_its_time
from cascade.serving._protocol import (
    OUTPUT_NAMES,
    InferRequest,
    build_infer_response,
    bytes_elements,
    encode_response,
    error_body,
    model_metadata,
    parse_infer_request,
    policy_hash,
    scalar_parameters,
)
from cascade.serving._served import RemoteFactory, ServedModel
from cascade.serving._service import (
    HttpReply,
    InferenceService,
    PolicyText,
    ServiceMetrics,
    unavailable,
)
from cascade.serving._settings import (
    INGRESS,
    AppArgs,
    ServingLimits,
    deployment_name,
    ingress_options,
    tier_options,
)
from cascade.serving._shadow import Shadow, check_candidate, read_candidate

__all__ = [
    "DEADLINE_HEADER",
    "DEADLINE_HEADERS",
    "INGRESS",
    "METRICS",
    "OPEN_HEALTH",
    "OUTPUT_NAMES",
    "PROFILE_HEADER",
    "SCRAPED_PREFIX",
    "TOKEN_ENV",
    "AppArgs",
    "AuditSink",
    "BearerAuth",
    "Coalescer",
    "HttpReply",
    "InferRequest",
    "InferenceService",
    "LiveAudit",
    "MetricSpec",
    "PolicyText",
    "Profile",
    "RecordingMetrics",
    "RemoteFactory",
    "ServedModel",
    "ServiceMetrics",
    "ServingLimits",
    "Shadow",
    "audit_limits",
    "bearer_header",
    "build_infer_response",
    "bytes_elements",
    "check_candidate",
    "deployment_name",
    "encode_response",
    "error_body",
    "ingress_options",
    "load_token",
    "model_metadata",
    "openapi_document",
    "parse_infer_request",
    "policy_hash",
    "read_candidate",
    "request_budget_ms",
    "scalar_parameters",
    "sends_its_time",
    "tier_options",
    "unavailable",
]
