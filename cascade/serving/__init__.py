"""Serving core shared by the Ray ingress and the plain ASGI edge: no Ray in here.

The Open Inference Protocol (KServe v2) request/response layer, and the coalescer that
merges concurrent requests into engine batches.

Example::

    from cascade.serving import Coalescer, build_infer_response, parse_infer_request

    request = parse_infer_request(body, input_name="input", width=64, tiers=["tiny", "large"])
    probabilities, decisions = await coalescer.submit(request.rows, deadline_ms=request.deadline_ms)
"""

from __future__ import annotations

from cascade.serving._coalescer import Coalescer
from cascade.serving._protocol import (
    OUTPUT_NAMES,
    InferRequest,
    build_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
    policy_hash,
)

__all__ = [
    "OUTPUT_NAMES",
    "Coalescer",
    "InferRequest",
    "build_infer_response",
    "error_body",
    "model_metadata",
    "parse_infer_request",
    "policy_hash",
]
