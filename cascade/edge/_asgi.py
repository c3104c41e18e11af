"""The edge's HTTP layer: a bare ASGI app over :class:`~cascade.serving.InferenceService`.

No web framework and no Ray: the routes, errors, admission and decision trace are the
service's, exactly as the Ray ingress serves them. This adapter adds only what Serve's
proxy does in the cluster: the body size limit (checked before the body is read), a bound
on requests held at once (503 with Retry-After beyond it), ``GET /metrics`` and closing
remote tiers' connections at shutdown. With a token (``service.auth``) every request is
checked first, ``/metrics`` included: a 401 before the bound and before the body is read.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cascade.edge._metrics import PrometheusMetrics
from cascade.serving import PROFILE_HEADER, HttpReply, InferenceService, unavailable

__all__ = ["EdgeApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MODEL = re.compile(r"/v2/models/([^/]+)/infer/?")
_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class _TooLarge(Exception):
    pass


class EdgeApp:
    """An ASGI application answering the Open Inference Protocol v2 routes of ``service``.

    ``max_requests`` bounds the requests held at once (the Ray runtime's
    ``max_ongoing_requests + max_queued_requests``); past it a request gets a 503 with
    ``Retry-After: retry_after_s`` before its body is read.

    Example::

        metrics = PrometheusMetrics()
        service = InferenceService(metrics=metrics)
        service.apply_policies([PolicyText(path, text)], remote=lambda name: {})
        uvicorn.run(EdgeApp(service, metrics), host="127.0.0.1", port=8000)
    """

    def __init__(
        self,
        service: InferenceService,
        metrics: PrometheusMetrics | None = None,
        *,
        max_requests: int = 320,
        retry_after_s: float = 1.0,
        on_startup: Callable[[], None] | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.max_requests = max_requests
        self.retry_after_s = retry_after_s
        self.on_startup = on_startup
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: not a route of this protocol
            return
        if self.service.auth is not None:
            # before anything else: a caller without the token learns nothing, not even
            # that the server is busy, and its body is never read
            refused = self.service.authorize(_path(scope), _headers(scope))
            if refused is not None:
                await _respond(send, refused, head=scope["method"] == "HEAD")
                return
        if self.held >= self.max_requests:
            reply = unavailable(
                f"over {self.max_requests} requests held; retry later",
                retry_after_s=self.retry_after_s,
            )
            model = _MODEL.fullmatch(scope["path"])
            if model is not None:
                self.service.metrics.shed(model.group(1), "backpressure")
                served = self.service.models.get(model.group(1))
                if served is not None and served.shadow is not None:
                    served.shadow.shed()  # a shadow policy waits for spare capacity
            await _respond(send, reply)
            return
        self.held += 1
        try:
            reply = await self._handle(scope, receive)
        finally:
            self.held -= 1
        await _respond(send, reply, head=scope["method"] == "HEAD")

    async def _handle(self, scope: Scope, receive: Receive) -> HttpReply:
        path = _path(scope)
        method: str = scope["method"]
        headers = _headers(scope)
        # a client that sends its send time wants the wire measured: the body read below is
        # part of the service's time then (and only then is the clock read here)
        received_s = self.service.clock() if PROFILE_HEADER in headers else None
        if path.rstrip("/") == "/metrics" and self.metrics is not None:
            if method not in ("GET", "HEAD"):
                return HttpReply.error(f"method {method} is not allowed on /metrics", 405,
                                       allow="GET")  # fmt: skip
            return HttpReply(200, self.metrics.render().encode(), {"content-type": _PROMETHEUS})
        limit = self.service.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _too_large(f"request body is {int(declared)} bytes; the limit is {limit}")
        try:
            body = await _read_body(receive, limit)
        except _TooLarge as exc:
            return _too_large(str(exc))

        async def read() -> bytes:
            return body

        return await self.service.handle(method, path, headers, read, received_s=received_s)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.on_startup is not None:
                    self.on_startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for served in self.service.models.values():
                    await served.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body, refused as soon as it grows past ``limit`` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"request body is over {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _too_large(message: str) -> HttpReply:
    return HttpReply.error(message, 413)


async def _respond(send: Send, reply: HttpReply, *, head: bool = False) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    headers.append((b"content-length", str(len(reply.body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})
