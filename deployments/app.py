"""The Ray Serve layer: one deployment per `deployment` tier and an HTTP ingress.

Thin on purpose: everything testable without Ray lives in ``cascade`` (policies, the engine,
the Open Inference Protocol layer, request coalescing). Here a Serve class builds a cascade
object in ``__init__`` and delegates.

    serve run deployments.app:build_app policies='["policies/digits.yaml"]'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from cascade.backends import InputSpec, open_model
from cascade.deploy import AppArgs, ingress_options, tier_options
from cascade.errors import PolicyError
from cascade.evaluate import ensure_models
from cascade.policy import load_policy
from cascade.serving import METRICS, InferenceService, PolicyText, RecordingMetrics, RemoteFactory

__all__ = ["AppArgs", "Ingress", "ModelDeployment", "build_app"]


@serve.deployment
class ModelDeployment:
    """One ONNX tier behind a Serve deployment, batching calls with ``@serve.batch``."""

    def __init__(self, path: str, providers: tuple[str, ...]) -> None:
        self.model = open_model(path, providers=providers, offload=True)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batch size and wait come from ``user_config``, so changing them restarts nothing."""
        self.predict.set_max_batch_size(int(config["max_batch_size"]))
        self.predict.set_batch_wait_timeout_s(float(config["max_wait_ms"]) / 1000.0)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def predict(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        # Each call carries a batch of rows already; one session run answers them all.
        sizes = [len(b) for b in batches]
        out = await self.model.predict(np.concatenate(batches))
        return list(np.split(out, np.cumsum(sizes)[:-1]))

    def check_health(self) -> None:
        spec = self.model.input_spec
        probe = (
            np.array(["health check"], dtype=object)
            if spec.dtype == "string"
            else np.zeros((1, spec.width or 1), np.float32)
        )
        self.model.predict_sync(probe)  # type: ignore[attr-defined]


class _HandleModel:
    """A deployment tier seen by the engine: the Model protocol over a DeploymentHandle."""

    def __init__(self, name: str, handle: DeploymentHandle, spec: InputSpec) -> None:
        self.name = name
        self.input_spec = spec
        self._handle = handle

    async def predict(self, batch: Any) -> np.ndarray:
        rows = batch if self.input_spec.dtype == "string" else np.asarray(batch, np.float32)
        result: np.ndarray = await self._handle.predict.remote(rows)
        return result


class _Metrics(RecordingMetrics):
    """The service's metrics (``cascade.serving._metrics``) as Ray Serve metrics, exported
    by Ray's metrics agent in the Prometheus format."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self._series: dict[str, Any] = {}
        for name, spec in METRICS.items():
            if spec.kind == "counter":
                made: Any = metrics.Counter(name, spec.help, tag_keys=spec.labels)
            elif spec.kind == "gauge":
                made = metrics.Gauge(name, spec.help, tag_keys=spec.labels)
            else:
                made = metrics.Histogram(name, spec.help, boundaries=list(spec.buckets),
                                         tag_keys=spec.labels)  # fmt: skip
            self._series[name] = made

    def inc(self, name: str, amount: float, labels: dict[str, str]) -> None:
        self._series[name].inc(amount, labels)

    def set(self, name: str, value: float, labels: dict[str, str]) -> None:
        self._series[name].set(value, labels)

    def observe(self, name: str, value: float, labels: dict[str, str]) -> None:
        self._series[name].observe(value, labels)


@serve.deployment
class Ingress:
    """HTTP routes of the Open Inference Protocol v2, running the engine in this replica.

    A plain Serve ``__call__``: the routes live in :class:`cascade.serving.InferenceService`,
    shared with the edge runtime, and no web framework sits on the request path.
    """

    def __init__(
        self, handles: dict[str, dict[str, DeploymentHandle]], args: dict[str, Any]
    ) -> None:
        self.args = AppArgs.model_validate(args)
        self.handles = handles
        self.service = InferenceService(
            max_rows=self.args.max_rows,
            max_body_bytes=self.args.max_body_bytes,
            coalesce_ms=self.args.coalesce_ms,
            metrics=_Metrics(),
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply policies from ``user_config``: new thresholds swap in without a restart.

        A policy that does not validate is refused and the one serving stays; the error is
        reported in that model's metadata.
        """
        self.service.apply_policies(
            [PolicyText(item["path"], item["text"]) for item in config.get("policies", [])],
            remote=self._remote,
        )

    def _remote(self, policy: str) -> dict[str, RemoteFactory]:
        def factory(tier: str, handle: DeploymentHandle) -> RemoteFactory:
            return lambda spec: _HandleModel(tier, handle, spec)

        return {tier: factory(tier, h) for tier, h in self.handles.get(policy, {}).items()}

    async def __call__(self, request: Request) -> Response:
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        reply = await self.service.handle(request.method, path, request.headers, request.body)
        return Response(reply.body, reply.status, headers=reply.headers)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``args`` (see :class:`AppArgs`).

    Example::

        serve.run(build_app({"policies": ["policies/digits.yaml"]}), route_prefix="/")
    """
    parsed = AppArgs.model_validate(args)
    handles: dict[str, dict[str, Any]] = {}
    paths = []
    for path in parsed.policies:
        loaded = load_policy(path)
        policy = loaded.policy
        unreachable = [g.name for g in policy.gears
                       if g.queue_depth_at_least > parsed.max_ongoing_requests]  # fmt: skip
        if unreachable:
            # the replica never holds more than max_ongoing_requests: such a gear never engages
            raise PolicyError(
                f"{path}: gears {unreachable} engage above max_ongoing_requests "
                f"({parsed.max_ongoing_requests}), a queue depth the replica never reaches"
            )
        ensure_models(loaded, progress=False)
        paths.append(str(Path(path).resolve()))
        bound: dict[str, Any] = {}
        for name, tier in policy.tiers.items():
            if tier.placement != "deployment":
                continue
            options = tier_options(policy, name, parsed)
            options["user_config"] = {
                "max_batch_size": tier.batching.max_batch_size,
                "max_wait_ms": tier.batching.max_wait_ms,
            }
            bound[name] = ModelDeployment.options(**options).bind(
                str(loaded.model_path(name)), tuple(tier.providers)
            )
        handles[policy.name] = bound
    texts = [{"path": path, "text": Path(path).read_text()} for path in paths]
    ingress = Ingress.options(
        **ingress_options(parsed),
        backpressure_config=BackpressureConfig(retry_after_s=parsed.retry_after_s),
        user_config={"policies": texts},
    )
    return ingress.bind(handles, parsed.model_dump())
