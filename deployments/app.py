"""The Ray Serve layer: one deployment per `deployment` tier and an HTTP ingress.

Thin on purpose: everything testable without Ray lives in ``cascade`` (policies, the engine,
the Open Inference Protocol layer, request coalescing). Here a Serve class builds a cascade
object in ``__init__`` and delegates.

    serve run deployments.app:build_app policies='["policies/digits.yaml"]'
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at run
# time, and string annotations made it take `request: Request` for a query parameter.

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from cascade.backends import InputSpec, OnnxModel
from cascade.errors import CascadeError, CircuitOpen, InputError, PolicyError
from cascade.evaluate import ensure_models, resolve_tiers
from cascade.load import Gear, GearShifter
from cascade.policy import LoadedPolicy, load_policy, parse_policy
from cascade.routing import Engine
from cascade.serving import (
    Coalescer,
    build_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
    policy_hash,
)

__all__ = ["AppArgs", "Ingress", "ModelDeployment", "build_app"]


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (also the `args` of a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    policies: list[str] = Field(min_length=1, description="policy files to serve")
    max_rows: int = Field(4096, ge=1, description="most rows per request")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="largest request body")
    coalesce_ms: float = Field(2.0, ge=0, description="window coalescing concurrent requests")
    max_ongoing_requests: int = Field(64, ge=1, description="requests one replica runs at once")
    max_queued_requests: int = Field(
        256, ge=-1, description="requests waiting for an ingress replica before 503 (-1: no limit)"
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of a 503 for backpressure")


@serve.deployment
class ModelDeployment:
    """One ONNX tier behind a Serve deployment, batching calls with ``@serve.batch``."""

    def __init__(self, path: str, providers: tuple[str, ...]) -> None:
        self.model = OnnxModel(path, providers=providers, offload=True)

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
        self.model.predict_sync(np.zeros((1, self.model.input_spec.width or 1), np.float32))


class _HandleModel:
    """A deployment tier seen by the engine: the Model protocol over a DeploymentHandle."""

    def __init__(self, name: str, handle: DeploymentHandle, spec: InputSpec) -> None:
        self.name = name
        self.input_spec = spec
        self._handle = handle

    async def predict(self, batch: Any) -> np.ndarray:
        result: np.ndarray = await self._handle.predict.remote(np.asarray(batch, np.float32))
        return result


class _Served:
    """One policy as served: its engine, coalescer and metadata."""

    def __init__(self, loaded: LoadedPolicy, handles: dict[str, DeploymentHandle],
                 args: AppArgs) -> None:  # fmt: skip
        policy = loaded.policy
        tiers = resolve_tiers(loaded)
        backends: dict[str, Any] = {
            name: OnnxModel(tiers[name].path, providers=tier.providers)
            for name, tier in policy.tiers.items()
            if tier.placement != "deployment"
        }
        # The input spec from a session the ingress runs anyway; only a policy of deployment
        # tiers alone needs one loaded here just to read it.
        first = next(iter(backends.values()), None) or OnnxModel(next(iter(tiers.values())).path)
        self.spec = first.input_spec
        for name, tier in policy.tiers.items():
            if tier.placement == "deployment":
                backends[name] = _HandleModel(name, handles[name], self.spec)
        card = next((t.card for t in tiers.values() if t.card is not None), None)
        self.classes = list(card.classes) if card is not None else None
        self.n_classes = len(self.classes) if self.classes else first.n_classes
        self.engine = Engine(
            policy,
            backends,
            costs={n: t.cost for n, t in tiers.items()},
            latency_ms={n: t.latency_ms for n, t in tiers.items()},
            base_dir=loaded.base_dir,
        )
        self.coalescer = Coalescer(
            lambda rows, deadlines, caps: self.engine.run(
                rows, deadlines_ms=deadlines, max_tiers=caps, gear=self.shifter.gear.name
            ),
            max_wait_ms=args.coalesce_ms,
        )
        self.in_flight = 0  # requests inside this replica: the load the gears follow
        self.set_policy(policy)

    def set_policy(self, policy: Any) -> None:
        """Take ``policy`` (same tiers) from the next batch on; the gear restarts at normal."""
        if getattr(self, "policy", None) is not None:
            self.engine.replace_policy(policy)
        self.policy = policy
        self.version = policy_hash(policy)
        gears = [Gear("normal", 0.0)] + [
            Gear(g.name, float(g.queue_depth_at_least), g.max_tier, g.threshold_shift)
            for g in policy.gears
        ]
        self.shifter = GearShifter(
            gears, hysteresis=policy.gear_hysteresis, hold_s=policy.gear_hold_s
        )

    def admit(self, deadline_ms: float | None) -> str | None:
        """Why a request with this deadline cannot be answered in time now, or ``None``.

        The cheapest path is the first tier, after the batch running now (if any): when even
        that is predicted to end past the deadline, shedding at once beats answering late.
        """
        if deadline_ms is None:
            return None
        first = self.engine.latency_estimate(self.engine.first_tier)
        wait = (self.coalescer.batch_ms or 0.0) if self.coalescer.busy else 0.0
        if first + wait <= deadline_ms:
            return None
        return (
            f"cannot answer within deadline_ms={deadline_ms:g}: the cheapest path "
            f"('{self.engine.first_tier}') needs about {first + wait:.1f} ms now"
        )


class _Metrics:
    """Serve metrics of the ingress (exported by Ray's metrics agent, Prometheus format).

    ``cascade_requests_total{model}``; ``cascade_answers_total{model,tier}`` (rows answered
    per tier); ``cascade_escalations_total{model}`` (rows answered past their entry tier);
    ``cascade_degraded_total{model}``; ``cascade_request_rows{model}`` (rows per request);
    ``cascade_tier_latency_ms{model,tier}`` (calls as the engine timed them);
    ``cascade_request_latency_ms{model}`` (end to end inside the ingress);
    ``cascade_shed_total{model,why}`` (503s: ``admission``, a deadline out of reach on
    arrival; ``late``, an answer that came past its deadline); ``cascade_gear{model}``.
    """

    def __init__(self) -> None:
        from ray.serve import metrics

        model = ("model",)
        tier = ("model", "tier")
        buckets_ms = [0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000]
        self.requests = metrics.Counter("cascade_requests_total", "requests", tag_keys=model)
        self.answers = metrics.Counter("cascade_answers_total", "rows answered per tier",
                                       tag_keys=tier)  # fmt: skip
        self.escalations = metrics.Counter(
            "cascade_escalations_total", "rows answered past their entry tier", tag_keys=model
        )
        self.degraded = metrics.Counter("cascade_degraded_total", "degraded rows", tag_keys=model)
        self.rows = metrics.Histogram("cascade_request_rows", "rows per request",
                                      boundaries=[1, 2, 4, 8, 16, 64, 256, 1024],
                                      tag_keys=model)  # fmt: skip
        self.tier_latency = metrics.Histogram("cascade_tier_latency_ms", "tier call latency",
                                              boundaries=buckets_ms, tag_keys=tier)  # fmt: skip
        self.latency = metrics.Histogram("cascade_request_latency_ms", "request latency",
                                         boundaries=buckets_ms, tag_keys=model)  # fmt: skip
        self.shed = metrics.Counter("cascade_shed_total", "requests refused with a 503",
                                    tag_keys=("model", "why"))  # fmt: skip
        self.gear = metrics.Gauge("cascade_gear", "engaged gear (0: normal)", tag_keys=model)

    def record(self, model: str, decisions: Any, elapsed_ms: float) -> None:
        tags = {"model": model}
        self.requests.inc(1, tags)
        self.rows.observe(len(decisions), tags)
        self.latency.observe(elapsed_ms, tags)
        for decision in decisions:
            self.answers.inc(1, {"model": model, "tier": decision.answered_by})
            if decision.steps and decision.answered_by != decision.steps[0].tier:
                self.escalations.inc(1, tags)
            if decision.degraded:
                self.degraded.inc(1, tags)
        seen = {(s.tier, s.latency_ms) for d in decisions for s in d.steps}
        for tier, latency_ms in seen:  # one observation per batched call, not per row
            self.tier_latency.observe(latency_ms, {"model": model, "tier": tier})


def _header_length(request: Request) -> int | None:
    """The binary tensor data extension's ``Inference-Header-Content-Length``, if sent."""
    value = request.headers.get("inference-header-content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(
            f"Inference-Header-Content-Length must be a byte count, got {value!r}"
        ) from None


def _unavailable(message: str, *, retry_after_s: float = 1.0) -> JSONResponse:
    """A 503 with Retry-After: overload, a failed first tier, or a deadline out of reach."""
    # Defined above the ingress on purpose: Serve pickles the FastAPI app, routes and their
    # globals, when the class is decorated; names defined below it do not exist in replicas.
    retry = str(max(1, math.ceil(retry_after_s)))
    return JSONResponse(error_body(message), 503, headers={"Retry-After": retry})


fastapi_app = FastAPI(title="cascade", description="Open Inference Protocol v2 over a cascade")


@serve.deployment
@serve.ingress(fastapi_app)
class Ingress:
    """HTTP routes of the Open Inference Protocol v2, running the engine in this replica."""

    def __init__(
        self, handles: dict[str, dict[str, DeploymentHandle]], args: dict[str, Any]
    ) -> None:
        self.args = AppArgs.model_validate(args)
        self.handles = handles
        self.served: dict[str, _Served] = {}
        self.reload_errors: dict[str, str] = {}
        self.metrics = _Metrics()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply policies from ``user_config``: new thresholds swap in without a restart.

        A policy that does not validate is refused and the one serving stays; the error is
        reported in that model's metadata. Never raises: a failed reconfigure would take the
        replica down with the good policies it serves.
        """
        for item in config.get("policies", []):
            path = Path(item["path"])
            try:
                loaded = parse_policy(
                    item["text"], source=str(path), base_dir=path.parent, check_files=True
                )
                name = loaded.policy.name
                current = self.served.get(name)
                if current is not None and current.policy.tiers == loaded.policy.tiers:
                    current.set_policy(loaded.policy)
                else:
                    self.served[name] = _Served(loaded, self.handles.get(name, {}), self.args)
                self.reload_errors.pop(str(path), None)
            except CascadeError as exc:
                self.reload_errors[str(path)] = str(exc)

    def _model(self, name: str) -> _Served | JSONResponse:
        served = self.served.get(name)
        if served is None:
            known = ", ".join(sorted(self.served))
            return JSONResponse(error_body(f"unknown model '{name}' (models: {known})"), 404)
        return served

    @fastapi_app.get("/v2/health/live")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @fastapi_app.get("/v2/health/ready")
    async def ready(self) -> dict[str, bool]:
        return {"ready": True}

    @fastapi_app.get("/v2/models/{name}/ready", response_model=None)
    async def model_ready(self, name: str) -> dict[str, Any] | JSONResponse:
        served = self._model(name)
        if isinstance(served, JSONResponse):
            return served
        return {"name": name, "ready": True}

    @fastapi_app.get("/v2/models/{name}", response_model=None)
    async def metadata(self, name: str) -> dict[str, Any] | JSONResponse:
        served = self._model(name)
        if isinstance(served, JSONResponse):
            return served
        return model_metadata(
            name=name,
            version=served.version,
            input_name=served.spec.name,
            width=served.spec.width or 0,
            n_classes=served.n_classes,
            classes=served.classes,
            policy_hash=served.version,
            extra={
                "routing": served.policy.routing.kind,
                "tiers": list(served.policy.tiers),
                "reload_errors": sorted(self.reload_errors.values()),
                "load": {
                    "gear": served.shifter.gear.name,
                    "in_flight": served.in_flight,
                    "breakers": {
                        tier: breaker.state
                        for tier in served.policy.tiers
                        if (breaker := served.engine.breaker(tier)) is not None
                    },
                },
            },
        )

    @fastapi_app.post("/v2/models/{name}/infer", response_model=None)
    async def infer(self, name: str, request: Request) -> Response:
        began = time.perf_counter()
        served = self._model(name)
        if isinstance(served, JSONResponse):
            return served
        try:
            body = await request.body()
        except Exception as exc:  # Ray's TaskCancelledError, under overload
            # Under overload the proxy may give up streaming a body it no longer has a client
            # for; that is the service's state, not the client's mistake, and no 500.
            self.metrics.shed.inc(1, {"model": name, "why": "body"})
            return _unavailable(f"request body could not be read: {type(exc).__name__}")
        try:
            parsed = parse_infer_request(
                body,
                header_length=_header_length(request),
                input_name=served.spec.name,
                width=served.spec.width or 0,
                tiers=list(served.policy.tiers),
                max_rows=self.args.max_rows,
                max_bytes=self.args.max_body_bytes,
            )
            if parsed.max_tier is not None:
                served.engine.check_max_tier(parsed.max_tier)
        except InputError as exc:
            return JSONResponse(error_body(str(exc)), 400)
        refusal = served.admit(parsed.deadline_ms)
        if refusal is not None:
            self.metrics.shed.inc(1, {"model": name, "why": "admission"})
            return _unavailable(refusal)
        served.in_flight += 1
        if served.policy.gears:  # no gears: nothing to shift, and no cost per request
            served.shifter.update(served.in_flight)
        try:
            probabilities, decisions = await served.coalescer.submit(
                parsed.rows, deadline_ms=parsed.deadline_ms, max_tier=parsed.max_tier
            )
        except InputError as exc:
            return JSONResponse(error_body(str(exc)), 400)
        except CircuitOpen as exc:
            return _unavailable(f"model '{name}' failed: {exc}", retry_after_s=exc.retry_after_s)
        except (TimeoutError, CascadeError) as exc:
            return _unavailable(f"model '{name}' failed: {exc}")
        finally:
            served.in_flight -= 1
        elapsed_ms = (time.perf_counter() - began) * 1000
        if parsed.deadline_ms is not None and elapsed_ms > parsed.deadline_ms:
            # never a late answer as a normal 200: the client has given up on it by now
            self.metrics.shed.inc(1, {"model": name, "why": "late"})
            return _unavailable(
                f"deadline_ms={parsed.deadline_ms:g} passed: the answer took {elapsed_ms:.1f} ms"
            )
        if served.policy.gears:
            self.metrics.gear.set(served.shifter.state.index, {"model": name})
        self.metrics.record(name, decisions, elapsed_ms)
        body = build_infer_response(
            model_name=name,
            model_version=served.version,
            request_id=parsed.id,
            probabilities=probabilities,
            labels=probabilities.argmax(axis=1),
            classes=served.classes,
            decisions=[d.to_dict() for d in decisions] if parsed.trace else None,
            output_names=parsed.output_names,
            summary={
                "answered_by": [d.answered_by for d in decisions],
                "degraded": [d.degraded for d in decisions],
                "gear": decisions[0].gear or "normal",
            },
        )
        # Serialised here: FastAPI's encoder would walk every float again (~50 µs a request).
        return Response(json.dumps(body).encode(), media_type="application/json")


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
            options: dict[str, Any] = {
                "name": f"{policy.name}-{name}",
                "max_ongoing_requests": max(
                    parsed.max_ongoing_requests, tier.batching.max_batch_size
                ),
                "ray_actor_options": {"num_cpus": 0.5},
            }
            if tier.autoscaling is not None:
                options["autoscaling_config"] = {
                    "min_replicas": tier.autoscaling.min_replicas,
                    "max_replicas": tier.autoscaling.max_replicas,
                    "target_ongoing_requests": tier.autoscaling.target_ongoing_requests,
                }
            else:
                options["num_replicas"] = tier.replicas
            options["user_config"] = {
                "max_batch_size": tier.batching.max_batch_size,
                "max_wait_ms": tier.batching.max_wait_ms,
            }
            if "CUDAExecutionProvider" in tier.providers:
                options["ray_actor_options"]["num_gpus"] = 1
            bound[name] = ModelDeployment.options(**options).bind(
                str(loaded.model_path(name)), tuple(tier.providers)
            )
        handles[policy.name] = bound
    texts = [{"path": path, "text": Path(path).read_text()} for path in paths]
    ingress = Ingress.options(
        max_ongoing_requests=parsed.max_ongoing_requests,
        max_queued_requests=parsed.max_queued_requests,
        backpressure_config=BackpressureConfig(retry_after_s=parsed.retry_after_s),
        ray_actor_options={"num_cpus": 0.5},
        user_config={"policies": texts},
    )
    return ingress.bind(handles, parsed.model_dump())
