"""The Ray Serve layer: one deployment per `deployment` tier and an HTTP ingress.

Thin on purpose: everything testable without Ray lives in ``cascade`` (policies, the engine,
the Open Inference Protocol layer, request coalescing). Here a Serve class builds a cascade
object in ``__init__`` and delegates.

    serve run deployments.app:build_app policies='["policies/digits.yaml"]'
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from cascade.backends import CALL_DEADLINE, CALL_TIMES, InputSpec, open_model
from cascade.catalog import require_model_files
from cascade.errors import PolicyError
from cascade.policy import PolicyFile, read_policy
from cascade.serving import (
    METRICS,
    AppArgs,
    InferenceService,
    PolicyText,
    RecordingMetrics,
    RemoteFactory,
    ingress_options,
    read_candidate,
    sends_its_time,
    tier_options,
)
from cascade.serving._grpc import GrpcInference, RpcFailure, empty_response, rpc_methods

__all__ = ["AppArgs", "Ingress", "ModelDeployment", "app_for", "build_app"]


@serve.deployment
class ModelDeployment:
    """One ONNX tier behind a Serve deployment, batching calls with ``@serve.batch``.

    A call from a profiled batch comes through :meth:`predict_timed`, which also returns the
    time it waited here for its ``@serve.batch`` and the model run's: the ingress reports
    them in the tier call (``CALL_TIMES``), and the rest of the call is the hop. Durations
    only, on this replica's clock: no timestamps cross machines. Timed and plain calls share
    one ``@serve.batch`` queue (a queue of their own would time another queue), so a plain
    call passes ``None`` as its arrival.

    A call carries its deadline (epoch seconds, from the engine's budget for it): when its
    batch forms, a call the model can no longer answer in time is left out and answered
    ``None``, which the ingress takes as a timeout (the rows keep their cheaper answers).
    """

    def __init__(self, path: str, providers: tuple[str, ...]) -> None:
        self.model = open_model(path, providers=providers, offload=True)
        self.row_ms = 0.0  # moving average of the model's time per row, for the queue check

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Batch size and wait come from ``user_config``, so changing them restarts nothing."""
        self.predict.set_max_batch_size(int(config["max_batch_size"]))
        self.predict.set_batch_wait_timeout_s(float(config["max_wait_ms"]) / 1000.0)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def predict(
        self, batches: list[np.ndarray], arrived: list[float | None], ends: list[float | None]
    ) -> list[Any]:
        # Each call carries a batch of rows already; one session run answers them all.
        # ``arrived``: when a timed call reached this replica (None: not timed); the clock
        # is read here for every batch (the model's time per row is kept for the queue
        # check). ``ends``: the epoch time by which the caller
        # needs the answer (None: no deadline): a call that waited past the point where the
        # model could still answer it in time is not run, and gets None (its rows shed here,
        # before any work is spent on them).
        now = time.time() if ends.count(None) != len(ends) else 0.0
        need_s = self.row_ms / 1000.0
        run = [
            end is None or now + need_s * len(b) <= end
            for b, end in zip(batches, ends, strict=True)
        ]
        kept = [b for b, go in zip(batches, run, strict=True) if go]
        answers: list[Any] = [None] * len(batches)
        if not kept:
            return answers
        sizes = [len(b) for b in kept]
        timed = arrived.count(None) != len(arrived)
        started = time.perf_counter()
        out = await self.model.predict(np.concatenate(kept))
        model_ms = (time.perf_counter() - started) * 1000.0
        self.row_ms = (
            0.9 * self.row_ms + 0.1 * model_ms / len(out) if self.row_ms else model_ms / len(out)
        )
        parts = iter(np.split(out, np.cumsum(sizes)[:-1]))
        for i, go in enumerate(run):
            if not go:
                continue
            answers[i] = next(parts)
            at = arrived[i]
            if timed and at is not None:
                answers[i] = (answers[i], {"queue": (started - at) * 1000.0, "model": model_ms})
        return answers

    async def predict_timed(
        self, rows: np.ndarray, ends: float | None = None
    ) -> tuple[np.ndarray, dict[str, float]] | None:
        """:meth:`predict` for one call, with its queue and model ms here."""
        answer: tuple[np.ndarray, dict[str, float]] | None = await self.predict(
            rows, time.perf_counter(), ends
        )
        return answer

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
        times = CALL_TIMES.get()  # a dict only in a profiled batch
        # the call's deadline on the epoch clock, which the replica shares (one machine, or
        # NTP): its queue refuses the call once the model could no longer answer in time
        left = CALL_DEADLINE.get()
        ends = None if left is None else time.time() + (left - time.monotonic())
        if times is None:
            result: np.ndarray | None = await self._handle.predict.remote(rows, None, ends)
        else:
            timed = await self._handle.predict_timed.remote(rows, ends)
            result = None if timed is None else timed[0]
            if timed is not None:
                times.update(timed[1])
        if result is None:
            # a timeout, as the engine's own deadline cut is: the rows' cheaper answers
            # stand (degraded), and the tier's circuit breaker does not count it
            raise TimeoutError(f"tier '{self.name}': shed in its queue, the deadline was near")
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
@rpc_methods
class Ingress:
    """HTTP routes of the Open Inference Protocol v2, running the engine in this replica.

    A plain Serve ``__call__``: the routes live in :class:`cascade.serving.InferenceService`,
    shared with the edge runtime, and no web framework sits on the request path. The gRPC
    service's RPCs (``ModelInfer``...; `cascade serve --grpc-port`) are methods Serve's gRPC
    proxy calls, translated onto the same service by
    :class:`~cascade.serving._grpc.GrpcInference`.
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
            front_queue_ms=self.args.front_queue_ms,
            metrics=_Metrics(),
            # the token from the replica's own file or environment, never from the config
            auth=self.args.auth(),
            # a shadow policy goes live on every replica through `cascade promote`
            promote="reload",
        )
        self.rpcs = GrpcInference(self.service)

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

    def __del__(self) -> None:
        # Serve calls it at a graceful shutdown: the answer logs write what they still hold
        service = getattr(self, "service", None)  # None: __init__ failed
        if service is not None:
            service.close_logs()

    def app_args(self) -> dict[str, Any]:
        """The arguments this app was built with: `cascade reload` rebuilds it with them."""
        return self.args.model_dump()

    async def __call__(self, request: Request) -> Response:
        path = request.scope["path"]
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        # the client sent its send time: the profile starts here, the body read is timed
        received_s = self.service.clock() if sends_its_time(request.scope["headers"]) else None
        reply = await self.service.handle(
            request.method, path, request.headers, request.body, received_s=received_s
        )
        return Response(reply.body, reply.status, headers=reply.headers)

    async def answer_rpc(self, rpc: str, request: Any, grpc_context: Any) -> Any:
        """One RPC; an error is set on Serve's context, which has no abort. Serve passes no
        gRPC deadline through: a call's budget comes from its metadata (``x-cascade-deadline``)
        or its parameters (``timeout``, ``deadline_ms``) only."""
        try:
            return await self.rpcs.call(rpc, request, grpc_context.invocation_metadata())
        except RpcFailure as failure:
            import grpc

            grpc_context.set_code(grpc.StatusCode[failure.code])
            grpc_context.set_details(failure.details)
            if failure.trailing:
                grpc_context.set_trailing_metadata(list(failure.trailing))
            return empty_response(rpc)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``args`` (see :class:`AppArgs`): the import path of
    ``serve run`` and of a Serve config.

    Example::

        serve.run(build_app({"policies": ["policies/digits.yaml"]}), route_prefix="/")
    """
    parsed = AppArgs.model_validate(args)
    return app_for([read_policy(path) for path in parsed.policies], parsed)


def app_for(loaded: list[PolicyFile], args: AppArgs) -> serve.Application:
    """The Serve application for policies already loaded (``args.policies`` in order).

    Every local model file must exist: a missing one is a ``PolicyError`` that says how to
    build it (``cascade serve`` builds them before it calls this; the app never trains).
    """
    handles: dict[str, dict[str, Any]] = {}
    texts = []
    for item in loaded:
        policy = item.policy
        unreachable = [g.name for g in policy.gears
                       if g.queue_depth_at_least > args.max_ongoing_requests]  # fmt: skip
        if unreachable:
            # the replica never holds more than max_ongoing_requests: such a gear never engages
            raise PolicyError(
                f"{item.path}: gears {unreachable} engage above max_ongoing_requests "
                f"({args.max_ongoing_requests}), a queue depth the replica never reaches"
            )
        require_model_files(item)
        read_candidate(item)  # a shadow: section's candidate, checked before it ships
        # the text read above goes to the replica: what was checked here is what it parses
        texts.append({"path": str(item.path), "text": item.text})
        bound: dict[str, Any] = {}
        for name, tier in policy.tiers.items():
            if tier.placement != "deployment":
                continue
            options = tier_options(policy, name, args)
            options["user_config"] = {
                "max_batch_size": tier.batching.max_batch_size,
                "max_wait_ms": tier.batching.max_wait_ms,
            }
            bound[name] = ModelDeployment.options(**options).bind(
                str(item.model_path(name)), tuple(tier.providers)
            )
        handles[policy.name] = bound
    ingress = Ingress.options(
        **ingress_options(args),
        backpressure_config=BackpressureConfig(retry_after_s=args.retry_after_s),
        user_config={"policies": texts},
    )
    return ingress.bind(handles, args.model_dump())
