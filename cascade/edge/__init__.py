"""The edge runtime: the same policies and engine in one process, without Ray.

A bare ASGI app (:class:`EdgeApp`) over the framework-free
:class:`~cascade.serving.InferenceService` the Ray ingress uses too, served by uvicorn:
the same Open Inference Protocol routes, errors, decision trace and caches, metrics as
Prometheus text at ``/metrics``. Tiers whose model is an endpoint URL are reached over
HTTP (:class:`~cascade.backends.HttpModel`): split inference, degraded to the best local
answer when the network is gone. Nothing here imports Ray.

Example::

    from cascade.edge import EdgeSettings, serve_edge

    serve_edge(EdgeSettings(policies=["policies/covertype-edge.yaml"]), port=8080)
"""

from __future__ import annotations

from cascade.edge._asgi import EdgeApp
from cascade.edge._metrics import PrometheusMetrics
from cascade.edge._runner import EdgeSettings, build_edge_app, serve_edge

__all__ = [
    "EdgeApp",
    "EdgeSettings",
    "PrometheusMetrics",
    "build_edge_app",
    "serve_edge",
]
