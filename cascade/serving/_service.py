"""The HTTP service: Open Inference Protocol v2 routes over served policies, framework-free.

One object answers ``(method, path, headers, body)`` with an :class:`HttpReply`. The Ray
ingress calls it from its ``__call__``, a plain ASGI server from its app: the routes, errors,
admission and decision trace exist once. No web framework sits on the request path.

Routes (each model route also under ``/v2/models/{name}/versions/{version}/...``, where the
version is the policy's hash, as model metadata lists it)::

    GET  /v2                GET /v2/health/live     GET /v2/health/ready    GET /openapi.json
    GET  /v2/models         GET /v2/models/{name}   GET /v2/models/{name}/ready
    GET  /v2/models/{name}/config                   POST /v2/models/{name}/infer
    POST /v2/models/{name}/feedback
    PUT|GET|DELETE /v2/models/{name}/shadow    POST /v2/models/{name}/shadow/promote
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from cascade.errors import CascadeError, CircuitOpen, InputError, OverloadedError
from cascade.policy import PolicyFile, parse_policy
from cascade.serving._answer_log import AnswerLog, parse_feedback
from cascade.serving._auth import BearerAuth
from cascade.serving._deadline import epoch_header, request_budget_ms, sent_delay_ms
from cascade.serving._profile import PROFILE_HEADER, Profile
from cascade.serving._protocol import (
    CONTENT_ENCODINGS,
    build_infer_response,
    decode_body,
    encode_response,
    error_body,
    model_metadata,
    parse_infer_request,
    parse_json_object,
    scalar_parameters,
)
from cascade.serving._ranking import build_rank_response, parse_rank_request
from cascade.serving._served import RemoteFactory, ServedModel, ServedRanker, serve_policy
from cascade.serving._shadow import follow_reload, read_candidate
from cascade.serving._shadow_routes import Answer, ShadowRoutes

__all__ = ["HttpReply", "InferenceService", "PolicyText", "ServiceMetrics", "unavailable"]

_JSON = "application/json"
_LOG = logging.getLogger("cascade.serving")


@dataclass(frozen=True)
class HttpReply:
    """What a route answers: status, body bytes and headers (content type included)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": _JSON})

    @classmethod
    def json(cls, document: Any, status: int = 200, **headers: str) -> HttpReply:
        return cls(status, json.dumps(document).encode(), {"content-type": _JSON, **headers})

    @classmethod
    def error(cls, message: str, status: int, **headers: str) -> HttpReply:
        return cls.json(error_body(message), status, **headers)


class ServiceMetrics(Protocol):
    """Where a runtime exports what the service counts (Ray metrics, Prometheus text, ...)."""

    def record(self, model: str, decisions: Any, elapsed_ms: float) -> None:
        """One answered request: its rows' decisions and its time inside the service."""

    def shed(self, model: str, why: str) -> None:
        """One request refused with a 503: ``admission`` (on arrival), ``queue`` (when
        dequeued), ``late`` (answered past its deadline), ``body`` or ``backpressure``."""

    def gear(self, model: str, index: int) -> None:
        """The gear engaged now (0: normal)."""

    def record_ranking(self, model: str, ranking: Any, elapsed_ms: float) -> None:
        """One ranked query: its stages' trace and its time inside the service."""

    def cache(self, model: str, outcomes: dict[str, int], false_hit_rate: float | None) -> None:
        """One request's cache outcomes (rows per ``exact_hit``, ``similar_hit``, ``miss``)
        and the similarity cache's audited false-hit rate so far."""

    def profile(self, model: str, phases: dict[str, float]) -> None:
        """One request the policy sampled for profiling: ms per phase."""

    def audit(self, model: str, snapshot: dict[str, Any], rows: dict[tuple[str, str], int]) -> None:
        """The live audit concluded (about once a second): its snapshot
        (``cascade.serving._audit``) and the audited rows by ``(tier, outcome)`` since."""

    def answer_log(self, model: str, rows: dict[str, int]) -> None:
        """Rows the answer log wrote, dropped (its queue full) and failed to write, since
        the last call (``{"written": 12}``)."""

    def shadow(self, model: str, outcome: str, rows: int, figures: Any = None) -> None:
        """Rows of a shadow policy (``compared``, ``dropped``, ``skipped``, ``failed``);
        after a comparison, the side-by-side ``figures`` (``cascade.serving._shadow``)."""


class _NoMetrics:
    def record(self, model: str, decisions: Any, elapsed_ms: float) -> None:
        pass

    def shed(self, model: str, why: str) -> None:
        pass

    def gear(self, model: str, index: int) -> None:
        pass

    def record_ranking(self, model: str, ranking: Any, elapsed_ms: float) -> None:
        pass

    def cache(self, model: str, outcomes: dict[str, int], false_hit_rate: float | None) -> None:
        pass

    def profile(self, model: str, phases: dict[str, float]) -> None:
        pass

    def audit(self, model: str, snapshot: dict[str, Any], rows: dict[tuple[str, str], int]) -> None:
        pass

    def answer_log(self, model: str, rows: dict[str, int]) -> None:
        pass

    def shadow(self, model: str, outcome: str, rows: int, figures: Any = None) -> None:
        pass


@dataclass(frozen=True)
class PolicyText:
    """A policy file as shipped to a server: its path (for relative model paths) and text."""

    path: str
    text: str


def unavailable(message: str, *, retry_after_s: float = 1.0) -> HttpReply:
    """A 503 with Retry-After: overload, a failed first tier, or a deadline out of reach."""
    return HttpReply.error(message, 503, **{"retry-after": str(max(1, math.ceil(retry_after_s)))})


Body = Callable[[], Awaitable[bytes]]
_Handler = Callable[..., Awaitable[HttpReply]]
_SLOT = "\u0000cascade-profile\u0000"  # where the profile goes, until it is complete
_SLOT_JSON = json.dumps(_SLOT).encode()


class InferenceService:
    """Open Inference Protocol v2 over one or more served policies, one model name each.

    Example::

        service = InferenceService(max_rows=4096, max_body_bytes=8 << 20)
        service.apply_policies([PolicyText(path, Path(path).read_text())], remote=lambda p: {})
        reply = await service.handle("POST", "/v2/models/digits/infer", headers, read_body)

    Latency profiles (``cascade.serving._profile``): a request that asks
    (``parameters.profile: true``) gets its profile in the response, as a JSON *string* in
    ``parameters.profile`` (response parameters stay scalars, as KServe and gRPC clients
    need); a request the policy samples (``profile: {sample_rate}``) goes to the metric
    ``cascade_phase_latency_ms{phase}`` instead, its response unchanged: the metric then
    holds an unbiased sample of the traffic, which profiles clients ask for (a load test)
    would skew, and a sampled client gets no bytes it did not ask for. Profiles are timed
    with ``clock`` (seconds); ``wall_clock`` (epoch seconds) reads the client's send time
    (header ``x-cascade-sent-at``) against it. Requests that are not profiled read neither
    clock for it and allocate nothing for it.

    ``auth`` (:class:`~cascade.serving._auth.BearerAuth`): every request but those to its
    open routes must bear its token, checked in :meth:`handle` before any route runs.
    """

    def __init__(
        self,
        *,
        max_rows: int = 4096,
        max_body_bytes: int = 8 * 2**20,
        coalesce_ms: float = 2.0,
        front_queue_ms: float = 0.0,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
        auth: BearerAuth | None = None,
        promote: Literal["apply", "reload"] = "apply",
    ) -> None:
        self.auth = auth
        # how a shadow policy goes live: applied here (one process serves), or by `cascade
        # promote` through `cascade reload` (Ray Serve: every ingress replica must take it)
        self.promote = promote
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self.coalesce_ms = coalesce_ms
        self.front_queue_ms = front_queue_ms
        self.metrics: ServiceMetrics = metrics or _NoMetrics()
        self.clock = clock
        self.wall_clock = wall_clock
        self.models: dict[str, ServedModel | ServedRanker] = {}
        self.reload_errors: dict[str, str] = {}
        # per model: the key (its file) and the policy it serves
        self.files: dict[str, tuple[str, PolicyFile]] = {}
        # the remote tiers' factories of the last apply (a promotion applies with them)
        self.remote: Callable[[str], Mapping[str, RemoteFactory]] = lambda name: {}
        self._shed_log = _ShedLog(time.monotonic)
        self._routes: list[tuple[str, re.Pattern[str], _Handler]] = [
            ("GET", re.compile(r"/v2"), self._server_metadata),
            ("GET", re.compile(r"/v2/health/live"), self._live),
            ("GET", re.compile(r"/v2/health/ready"), self._ready),
            ("GET", re.compile(r"/v2/models"), self._list_models),
        ]
        model_routes: list[tuple[str, str, _Handler]] = [
            ("GET", "", self._metadata),
            ("GET", "/ready", self._model_ready),
            ("GET", "/config", self._config),
            ("POST", "/infer", self._infer),
            ("POST", "/feedback", self._feedback),
        ]
        for prefix in (_MODEL, f"{_MODEL}/versions/([^/]+)"):
            self._routes += [
                (method, re.compile(prefix + suffix), handler)
                for method, suffix, handler in model_routes
            ]
        self._routes += [
            (method, re.compile(_MODEL + suffix), _replying(handler))
            for method, suffix, handler in ShadowRoutes(self).routes()
        ]
        self._routes.append(("GET", re.compile(r"/openapi\.json"), self._openapi))

    # ---- policies ----------------------------------------------------------------------

    def apply_policies(
        self,
        policies: Sequence[PolicyText | PolicyFile],
        *,
        remote: Callable[[str], Mapping[str, RemoteFactory]],
    ) -> None:
        """Serve ``policies``: new thresholds swap in without rebuilding the engine.

        Each is a policy file's text as shipped to this process (parsed and checked here) or
        one already read in this process (:func:`~cascade.policy.read_policy`: not parsed
        again). ``remote(policy_name)`` gives the backends of that policy's tiers that do not
        run here. A policy that does not validate is refused and the one serving stays; the
        error is reported in that model's metadata. Never raises: a failed reload must not
        take down the good policies this service answers for.
        """
        self.remote = remote
        for item in policies:
            key = item.path if isinstance(item, PolicyText) else str(item.path or item.policy.name)
            try:
                if isinstance(item, PolicyText):
                    item = parse_policy(
                        item.text, source=key, base_dir=Path(key).parent, check_files=True
                    )
                candidate = read_candidate(item)  # a bad shadow candidate refuses the policy
                name = item.policy.name
                current = self.models.get(name)
                if current is not None and current.same_tiers(item.policy):
                    current.set_policy(item.policy)
                else:
                    self.models[name] = serve_policy(
                        item,
                        remote=remote(name),
                        coalesce_ms=self.coalesce_ms,
                        front_queue_ms=self.front_queue_ms,
                    )
                    if isinstance(current, ServedModel):
                        current.close_log()  # its slot and file go to the new one
                        if current.audit is not None:
                            current.audit.close()  # its drain task stops with it
                self._wire_audit(name)
                self.files[name] = (key, item)
                follow_reload(name, self.models[name], current, item, candidate,
                              metrics=self.metrics)  # fmt: skip
                self.reload_errors.pop(key, None)
                _LOG.info("policy applied model=%s version=%s file=%s", name,
                          self.models[name].version, key)  # fmt: skip
            except CascadeError as exc:
                self.reload_errors[key] = str(exc)
                _LOG.warning("policy refused file=%s (the one serving stays): %s", key, exc)

    def _wire_audit(self, name: str) -> None:
        """The model's live audit reports to this service's metrics."""
        served = self.models[name]
        audit = served.audit if isinstance(served, ServedModel) else None
        if audit is not None and audit.sink is None:
            metrics = self.metrics
            audit.sink = lambda snapshot, rows: metrics.audit(name, snapshot, rows)

    def close_logs(self) -> None:
        """Write what every answer log holds and close it (a runtime's shutdown; blocks)."""
        for name, served in self.models.items():
            log = served.answer_log if isinstance(served, ServedModel) else None
            if isinstance(served, ServedModel) and log is not None:
                served.close_log()
                self._log_counts(name, log)  # its last writes

    # ---- dispatch ----------------------------------------------------------------------

    async def handle(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: Body,
        *,
        received_s: float | None = None,
    ) -> HttpReply:
        """Answer one request. ``headers`` are looked up by lower-case name.

        ``received_s``: when the host got the request, on :attr:`clock`, read only when the
        client sent its send time (``x-cascade-sent-at``): a profile then starts there, and
        has the body read as a phase of its own (``read``), whoever reads it.
        """
        path = path.rstrip("/") or "/"
        refused = self.authorize(path, headers)
        if refused is not None:
            return refused
        allowed = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if method == route_method or (method == "HEAD" and route_method == "GET"):
                return await handler(
                    *match.groups(), headers=headers, body=body, received_s=received_s
                )
            allowed.append(route_method)
        if allowed:
            return HttpReply.error(
                f"method {method} is not allowed on {path} (allowed: {', '.join(allowed)})",
                405,
                allow=", ".join(allowed),
            )
        return HttpReply.error(f"no route {path} (see /openapi.json)", 404)

    def authorize(self, path: str, headers: Mapping[str, str]) -> HttpReply | None:
        """The 401 for a request to ``path`` without the token (``None``: it may go on).

        :meth:`handle` asks first; a host asks too for what it answers itself (the edge's
        ``/metrics``) or before it reads a body it would not need.
        """
        if self.auth is None:
            return None
        refusal = self.auth.refusal(path.rstrip("/") or "/", headers)
        if refusal is None:
            return None
        return HttpReply.error(refusal.message, 401, **{"www-authenticate": refusal.challenge})

    def _shed(self, name: str, why: str, reason: str) -> None:
        """One request refused with a 503: counted, and logged at most once a second per
        model and cause (a shed storm would otherwise flood the log it is read in)."""
        self.metrics.shed(name, why)
        self._shed_log(name, why, reason)
        served = self.models.get(name)
        if served is not None and served.shadow is not None:
            served.shadow.shed()
        if isinstance(served, ServedModel) and served.audit is not None:
            served.audit.shed()  # the live audit pauses: no spare capacity now

    def _model(
        self, name: str, version: str | None = None
    ) -> ServedModel | ServedRanker | HttpReply:
        """The model served as ``name``, or the 404 to answer; with ``version`` (a versioned
        route) only while that is the version it serves (its policy's hash)."""
        served = self.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.models))
            return HttpReply.error(f"unknown model '{name}' (models: {known})", 404)
        if version is not None and version != served.version:
            return HttpReply.error(
                f"model '{name}' has no version '{version}': it serves version "
                f"'{served.version}' (its policy's hash; GET /v2/models/{name} lists it)",
                404,
            )
        return served

    # ---- routes ------------------------------------------------------------------------

    async def _server_metadata(self, **_: Any) -> HttpReply:
        from cascade import __version__

        # the protocol's server metadata; the extension is the binary tensor data of inputs
        return HttpReply.json(
            {"name": "cascade", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def _live(self, **_: Any) -> HttpReply:
        return HttpReply.json({"live": True})

    async def _ready(self, **_: Any) -> HttpReply:
        # the protocol reads the status code (200: ready; 4xx: not, as Triton answers 400),
        # and so do Kubernetes probes and tritonclient.is_server_ready()
        ready = bool(self.models)
        return HttpReply.json({"ready": ready}, 200 if ready else 400)

    async def _list_models(self, **_: Any) -> HttpReply:
        # what `cascade status` walks: every model served, its version and kind
        return HttpReply.json(
            {
                "models": [
                    {
                        "name": name,
                        "version": served.version,
                        "kind": "ranking" if isinstance(served, ServedRanker) else "classification",
                    }
                    for name, served in sorted(self.models.items())
                ]
            }
        )

    async def _model_ready(self, name: str, version: str | None = None, **_: Any) -> HttpReply:
        served = self._model(name, version)
        if isinstance(served, HttpReply):
            return served
        return HttpReply.json({"name": name, "ready": True})

    async def _config(self, name: str, version: str | None = None, **_: Any) -> HttpReply:
        """What the metadata's scalar parameters cannot hold, as plain JSON: the policy as
        served, its tiers and classes, load, gears and breakers, reload errors; and, for
        Triton's clients, the model configuration's own fields."""
        served = self._model(name, version)
        if isinstance(served, HttpReply):
            return served
        assert served.policy is not None
        if isinstance(served, ServedRanker):
            metadata, classes = self._ranker_metadata(name, served), None
        else:
            metadata, classes = self._model_metadata(name, served), served.classes
        return HttpReply.json(
            {
                "name": name,
                "platform": "cascade",
                "versions": [served.version],
                "max_batch_size": self.max_rows,
                "input": [_triton_tensor(t) for t in metadata["inputs"]],
                "output": [_triton_tensor(t) for t in metadata["outputs"]],
                "policy": served.policy.model_dump(mode="json", exclude_none=True),
                "tiers": served.tiers,
                "classes": classes,
                "load": served.load(),
                "reload_errors": sorted(self.reload_errors.values()),
                "shadow": None if served.shadow is None else served.shadow.report(),
                **({"audit": audit.snapshot()} if (audit := _audit_of(served)) else {}),
            }
        )

    async def _metadata(self, name: str, version: str | None = None, **_: Any) -> HttpReply:
        served = self._model(name, version)
        if isinstance(served, HttpReply):
            return served
        assert served.policy is not None
        if isinstance(served, ServedRanker):
            return HttpReply.json(self._ranker_metadata(name, served))
        return HttpReply.json(self._model_metadata(name, served))

    def _model_metadata(self, name: str, served: ServedModel) -> dict[str, Any]:
        assert served.policy is not None
        return model_metadata(
            name=name,
            version=served.version,
            input_name=served.spec.name,
            width=served.spec.width or 0,
            n_classes=served.n_classes,
            classes=served.classes,
            policy_hash=served.version,
            text=served.spec.dtype == "string",
            extra={
                "routing": served.policy.chain_routing.kind,
                "tiers": served.tiers,
                "reload_errors": sorted(self.reload_errors.values()),
                "load": served.load(),
                **({"audit": served.audit.snapshot()} if served.audit is not None else {}),
            },
        )

    def _ranker_metadata(self, name: str, served: ServedRanker) -> dict[str, Any]:
        assert served.policy is not None
        width = served.spec.width or 0
        return {
            "name": name,
            "versions": [served.version],
            "platform": "cascade",
            "inputs": [
                {"name": served.spec.name, "datatype": "FP32", "shape": [-1, width]},
                {"name": "ids", "datatype": "BYTES", "shape": [-1], "optional": True},
            ],
            "outputs": [
                {"name": "indices", "datatype": "INT64", "shape": [-1]},
                {"name": "scores", "datatype": "FP32", "shape": [-1]},
                {"name": "ids", "datatype": "BYTES", "shape": [-1]},
            ],
            "parameters": scalar_parameters(
                {
                    "policy_hash": served.version,
                    "routing": "ranking",
                    "tiers": served.tiers,
                    "stages": [
                        s.model_dump(exclude_none=True) | ({"limit": s.limit} if s.keep else {})
                        for s in served.policy.stages
                    ],
                    "reload_errors": sorted(self.reload_errors.values()),
                    "load": served.load(),
                }
            ),
        }

    async def _rank(
        self, name: str, served: ServedRanker, raw: bytes, headers: Mapping[str, str]
    ) -> HttpReply:
        try:
            request = parse_rank_request(
                raw,
                header_length=_header_length(headers),
                input_name=served.spec.name,
                width=served.spec.width or 0,
                max_rows=self.max_rows,
                max_bytes=self.max_body_bytes,
            )
            served.ranker.resolve(request.k, request.n)
        except InputError as exc:
            return HttpReply.error(str(exc), 400)
        served.in_flight += 1
        began = time.perf_counter()
        try:
            ranking = await served.ranker.rank(request.rows, k=request.k, n=request.n)
        except (TimeoutError, CascadeError) as exc:
            return _failed(name, exc)
        finally:
            served.in_flight -= 1
        self.metrics.record_ranking(name, ranking, (time.perf_counter() - began) * 1000)
        return HttpReply.json(
            build_rank_response(
                model_name=name,
                model_version=served.version,
                request=request,
                indices=ranking.indices,
                scores=ranking.scores,
                relative_cost=ranking.relative_cost,
                stages=[t.to_dict() for t in ranking.stages],
            )
        )

    async def _openapi(self, **_: Any) -> HttpReply:
        from cascade.serving._openapi import openapi_document, secure_document

        versions = sorted({served.version for served in self.models.values()})
        document = openapi_document(sorted(self.models), versions)
        if self.auth is not None:
            secure_document(document, open_paths=self.auth.open_paths)
        return HttpReply.json(document)

    async def _infer(
        self,
        name: str,
        version: str | None = None,
        *,
        headers: Mapping[str, str],
        body: Body,
        received_s: float | None = None,
    ) -> HttpReply:
        began = self.clock()
        served = self._model(name, version)
        if isinstance(served, HttpReply):
            return served
        assert served.policy is not None
        try:
            raw = await body()
        except Exception as exc:  # e.g. Ray's TaskCancelledError, under overload
            # Under overload the proxy may give up streaming a body it no longer has a client
            # for; that is the service's state, not the client's mistake, and no 500.
            self._shed(name, "body", type(exc).__name__)
            return unavailable(f"request body could not be read: {type(exc).__name__}")
        # the host read its clock on arrival (the client sent its send time): the body read
        # is then a phase of its own; otherwise it is part of "parse", and no clock is read
        read_s = None if received_s is None else self.clock()
        encoding = headers.get("content-encoding")
        if encoding is not None:
            if encoding.strip().lower() not in CONTENT_ENCODINGS:
                return HttpReply.error(
                    f"Content-Encoding {encoding!r} is not supported (supported: "
                    f"{', '.join(CONTENT_ENCODINGS)})",
                    415,
                )
            try:
                raw = decode_body(raw, encoding, self.max_body_bytes)
            except InputError as exc:
                return HttpReply.error(str(exc), 400)
        if isinstance(served, ServedRanker):
            return await self._rank(name, served, raw, headers)
        try:
            parsed = parse_infer_request(
                raw,
                header_length=_header_length(headers),
                input_name=served.spec.name,
                width=served.spec.width or 0,
                tiers=served.tiers,
                max_rows=self.max_rows,
                max_bytes=self.max_body_bytes,
                text=served.spec.dtype == "string",
            )
            if parsed.max_tier is not None:
                served.engine.check_max_tier(parsed.max_tier)
            section = served.policy.profile
            sampled = (
                section is not None
                and section.sample_rate > 0
                and random.random() < section.sample_rate
            )
            profile = None
            if parsed.profile or sampled:
                origin_s = began if received_s is None else received_s
                profile = self._profile(
                    headers, origin_s, read_s, asked=parsed.profile, sampled=sampled
                )
            wall_s = self.wall_clock()
            budget_ms = request_budget_ms(headers, parsed.deadline_ms, wall_s=wall_s)
            delay_ms = sent_delay_ms(headers, wall_s=wall_s)
        except InputError as exc:
            return HttpReply.error(str(exc), 400)
        refusal = served.admit(budget_ms, len(parsed.rows), parsed.priority, delay_ms=delay_ms)
        if refusal is not None:
            self._shed(name, "admission", refusal.reason)
            return unavailable(refusal.reason, retry_after_s=refusal.retry_after_s)
        gears = bool(served.policy.gears)
        served.in_flight += 1
        if gears:  # the policy's own gears follow the requests in flight
            served.shift(served.in_flight)
        if profile is not None:
            profile.mark("admission")
        try:
            probabilities, decisions = await served.infer(
                parsed.rows,
                deadline_ms=budget_ms,
                max_tier=parsed.max_tier,
                profile=profile,
                priority=parsed.priority,
            )
        except (TimeoutError, CascadeError) as exc:
            if isinstance(exc, OverloadedError):
                self._shed(name, "queue", str(exc))
            return _failed(name, exc)
        finally:
            served.in_flight -= 1
        elapsed_ms = (self.clock() - began) * 1000
        if budget_ms is not None and elapsed_ms > budget_ms:
            # never a late answer as a normal 200: the client has given up on it by now
            self._shed(name, "late", f"answered in {elapsed_ms:.1f} ms, {budget_ms:.1f} left")
            return unavailable(
                f"the deadline passed: the answer took {elapsed_ms:.1f} ms here, "
                f"{budget_ms:.1f} ms were left on arrival"
            )
        if gears or served.automatic:
            self.metrics.gear(name, served.shifter.state.index)
        self.metrics.record(name, decisions, elapsed_ms)
        if served.caches is not None:
            outcomes = {"exact_hit": 0, "similar_hit": 0, "miss": 0}
            for d in decisions:
                outcomes[f"{d.cache}_hit" if d.cache_hit else "miss"] += 1
            similar = served.caches.similar
            rate = similar.false_hit_rate if similar is not None else None
            self.metrics.cache(name, outcomes, rate)
        log = served.answer_log
        if log is not None:
            if log.sampled():
                log.answers(version=served.version, request_id=parsed.id, rows=parsed.rows,
                            probabilities=probabilities, decisions=decisions)  # fmt: skip
            self._log_counts(name, log)
        if profile is not None:
            profile.mark("metrics")
        labels = probabilities.argmax(axis=1)
        document = build_infer_response(
            model_name=name,
            model_version=served.version,
            request_id=parsed.id,
            probabilities=probabilities,
            labels=labels,
            classes=served.classes,
            output_names=parsed.output_names,
            answered_by=[d.answered_by for d in decisions],
            degraded=[d.degraded for d in decisions],
            trace=[d.to_dict() for d in decisions] if parsed.trace else None,
            parameters={"gear": decisions[0].gear or "normal"},
            binary_outputs=parsed.binary_outputs,
        )
        if served.shadow is not None:  # the answer is built: the candidate sees it after
            served.shadow.offer(parsed.rows, labels, decisions)
        if profile is None:
            reply = HttpReply(200, *encode_response(document))
        else:
            reply = self._profiled_reply(name, document, profile)
        if served.audit is not None:  # after the reply is sent: ~13 µs off its latency
            asyncio.get_running_loop().call_soon(
                served.audit.observe, parsed.rows, probabilities, decisions
            )
        return reply

    def _log_counts(self, name: str, log: AnswerLog) -> None:
        rows = log.unreported()
        if rows:
            self.metrics.answer_log(name, rows)

    async def _feedback(
        self, name: str, version: str | None = None, *, body: Body, **_: Any
    ) -> HttpReply:
        """True labels for the rows of an earlier request, by its id, into the answer log
        (Seldon Core's feedback route): ``{"id": "req-7", "labels": [3, "7", null]}``."""
        served = self._model(name, version)
        if isinstance(served, HttpReply):
            return served
        if isinstance(served, ServedRanker):
            return HttpReply.error(f"model '{name}' ranks candidates; feedback labels classes", 400)
        try:
            raw = await body()
        except Exception as exc:  # as for /infer: the service's state, not the client's mistake
            return unavailable(f"request body could not be read: {type(exc).__name__}")
        try:
            feedback = parse_feedback(
                parse_json_object(raw, self.max_body_bytes),
                classes=served.classes,
                n_classes=served.n_classes,
                max_rows=self.max_rows,
            )
        except InputError as exc:
            return HttpReply.error(str(exc), 400)
        log = served.answer_log
        if log is None:
            return HttpReply.error(
                f"model '{name}' keeps no answer log (its policy has no `log` section): "
                "feedback has nowhere to go",
                409,
            )
        expected = log.expected_rows(feedback.id)
        if expected is not None and expected != len(feedback.labels):
            return HttpReply.error(
                f"request '{feedback.id}' had {expected} rows; feedback gives "
                f"{len(feedback.labels)} labels (one per row, null for a row without one)",
                400,
            )
        if not log.feedback(feedback):
            self._log_counts(name, log)
            return unavailable("the answer log's queue is full; send the feedback again")
        self._log_counts(name, log)
        labelled = sum(label is not None for label in feedback.labels)
        matched = expected is not None
        return HttpReply.json({"id": feedback.id, "labels": labelled, "matched": matched})

    def _profile(
        self,
        headers: Mapping[str, str],
        origin_s: float,
        read_s: float | None,
        *,
        asked: bool,
        sampled: bool,
    ) -> Profile:
        """A profile starting at ``origin_s``, its ``read`` phase ending at ``read_s`` (where
        the host timed the body read) and ``parse`` now; ``before`` from the client's send
        time where the header gives it and this machine's clock can be read against it (not
        earlier than the send: another machine's clock)."""
        before_ms = None
        sent_at = epoch_header(headers, PROFILE_HEADER)
        if sent_at is not None:
            now_s, wall_s = self.clock(), self.wall_clock()
            before_ms = (wall_s - (now_s - origin_s) - sent_at) * 1000.0
            before_ms = before_ms if before_ms >= 0 else None
        profile = Profile(self.clock, origin_s, before_ms=before_ms, asked=asked, sampled=sampled)
        if read_s is not None:
            profile.mark("read", at_s=read_s)
        profile.mark("parse")
        return profile

    def _profiled_reply(self, name: str, document: dict[str, Any], profile: Profile) -> HttpReply:
        """The reply of a profiled request: ``encode`` is timed on the body it would have
        had anyway (a placeholder where the profile goes), then the profile is put in."""
        if profile.asked:
            document["parameters"]["profile"] = _SLOT  # the last key: see rfind below
        body, headers = encode_response(document)
        profile.mark("encode")
        if profile.sampled:
            self.metrics.profile(name, profile.durations())
        if profile.asked:
            # the last occurrence in the JSON header: a request id echoed earlier may hold
            # the slot, and binary outputs after the header are not JSON
            header_length = int(headers.get("inference-header-content-length", len(body)))
            at = body.rfind(_SLOT_JSON, 0, header_length)
            text = json.dumps(profile.to_json()).encode()
            body = body[:at] + text + body[at + len(_SLOT_JSON) :]
            if "inference-header-content-length" in headers:
                grown = header_length + len(text) - len(_SLOT_JSON)
                headers["inference-header-content-length"] = str(grown)
        return HttpReply(200, body, headers)

    @property
    def routes(self) -> list[tuple[str, str]]:
        """``(method, path pattern)`` of every route, ``{name}`` for the model name and
        ``{version}`` for its version."""
        named = []
        for method, pattern, _ in self._routes:
            path = pattern.pattern.replace("([^/]+)", "{name}", 1).replace("\\.", ".")
            named.append((method, path.replace("([^/]+)", "{version}")))
        return named


_MODEL = "/v2/models/([^/]+)"


class _ShedLog:
    """Warning lines for sheds, at most one per ``every_s`` per (model, cause), each saying
    how many requests that cause refused since the last line and the latest reason::

        shed model=digits why=admission count=412 (since the last line) reason=...
    """

    def __init__(self, clock: Callable[[], float], every_s: float = 1.0) -> None:
        self.clock = clock
        self.every_s = every_s
        self._counts: dict[tuple[str, str], int] = {}
        self._last: dict[tuple[str, str], float] = {}

    def __call__(self, model: str, why: str, reason: str) -> None:
        key = (model, why)
        self._counts[key] = self._counts.get(key, 0) + 1
        now = self.clock()
        if now - self._last.get(key, -math.inf) < self.every_s:
            return
        _LOG.warning("shed model=%s why=%s count=%d (since the last line) reason=%s",
                     model, why, self._counts[key], reason)  # fmt: skip
        self._counts[key] = 0
        self._last[key] = now


def _audit_of(served: ServedModel | ServedRanker) -> Any:
    """The live audit of ``served``, if it has one (ranking policies have none)."""
    return served.audit if isinstance(served, ServedModel) else None


def _triton_tensor(tensor: dict[str, Any]) -> dict[str, Any]:
    """A metadata tensor as Triton's model configuration spells it (``TYPE_FP32``, ``dims``
    without the batch dimension)."""
    return {
        "name": tensor["name"],
        "data_type": f"TYPE_{'STRING' if tensor['datatype'] == 'BYTES' else tensor['datatype']}",
        "dims": tensor["shape"][1:] or [1],
        **({"optional": True} if tensor.get("optional") else {}),
    }


def _replying(route: Callable[..., Awaitable[Answer]]) -> _Handler:
    """A route answering ``(status, document or error message)`` as an :class:`HttpReply`."""

    async def handler(*args: Any, **kwargs: Any) -> HttpReply:
        status, document = await route(*args, **kwargs)
        if isinstance(document, str):
            return HttpReply.error(document, status)
        return HttpReply.json(document, status)

    return handler


def _failed(model: str, exc: TimeoutError | CascadeError) -> HttpReply:
    """The reply to a request the cascade could not answer: 400 for the client's mistake
    (the engine checks the rows too), else 503 with Retry-After (an open circuit says when)."""
    if isinstance(exc, InputError):
        return HttpReply.error(str(exc), 400)
    retry_after_s = exc.retry_after_s if isinstance(exc, CircuitOpen | OverloadedError) else 1.0
    return unavailable(f"model '{model}' failed: {exc}", retry_after_s=retry_after_s)


def _header_length(headers: Mapping[str, str]) -> int | None:
    """The binary tensor data extension's ``Inference-Header-Content-Length``, if sent."""
    value = headers.get("inference-header-content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(
            f"Inference-Header-Content-Length must be a byte count, got {value!r}"
        ) from None
