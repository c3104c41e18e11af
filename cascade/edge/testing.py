"""Real local HTTP servers for tests and benchmarks of split inference.

:class:`ThreadedServer` serves any ASGI app on 127.0.0.1 from a background thread;
:class:`FlakyEndpoint` puts a switch in front of one, so a test can make the remote tier
slow, failing, malformed or down, and bring it back, over real sockets.

Example::

    remote = FlakyEndpoint(build_edge_app(EdgeSettings(policies=["large.yaml"])))
    with remote:
        remote.set("down")       # connection refused
        remote.set("slow", delay_ms=500)
        remote.set("ok")
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any, Literal

__all__ = ["FlakyEndpoint", "Mode", "ThreadedServer", "free_port", "proxy_app"]

Mode = Literal["ok", "slow", "error", "malformed", "down"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThreadedServer:
    """uvicorn serving ``app`` on ``127.0.0.1:port`` in a daemon thread; restartable.

    Example::

        with ThreadedServer(app) as server:
            httpx.get(f"{server.url}/v2/health/live")
    """

    def __init__(
        self, app: Any, *, port: int | None = None, tls: tuple[str, str] | None = None
    ) -> None:
        self.app = app
        self.port = port or free_port()
        self.tls = tls  # (certificate file, key file): HTTPS
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Listen on the port (the same one after a stop) and return once it accepts."""
        import uvicorn

        if self._thread is not None:
            return
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, lifespan="on", interface="asgi3",
            log_level="error", access_log=False, timeout_graceful_shutdown=1,
            ssl_certfile=self.tls[0] if self.tls else None,
            ssl_keyfile=self.tls[1] if self.tls else None,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._thread = None
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        """Close the listening socket and every connection: clients get refused."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class FlakyEndpoint(ThreadedServer):
    """A :class:`ThreadedServer` whose behaviour is switched while it runs.

    ``ok``: the wrapped app answers; ``slow``: it answers after ``delay_ms``; ``error``: a
    500 with a JSON error; ``malformed``: a 200 whose body is cut-off JSON; ``down``: the
    server stops listening (connection refused) until another mode starts it again.
    """

    def __init__(
        self, app: Any, *, port: int | None = None, tls: tuple[str, str] | None = None
    ) -> None:
        super().__init__(self._asgi, port=port, tls=tls)
        self.inner = app
        self.mode: Mode = "ok"
        self.delay_ms = 0.0
        self.requests = 0  # requests that reached this server

    def set(self, mode: Mode, *, delay_ms: float = 0.0) -> None:
        """Switch behaviour from the next request on."""
        self.mode, self.delay_ms = mode, delay_ms
        if mode == "down":
            self.stop()
        else:
            self.start()

    async def _asgi(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        self.requests += 1
        if self.mode == "slow":
            await asyncio.sleep(self.delay_ms / 1000.0)
        if self.mode in ("error", "malformed"):
            status, body = (
                (500, b'{"error": "injected failure"}')
                if self.mode == "error"
                else (200, b'{"model_name": "x", "outputs": [{"name": "probab')
            )
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.inner(scope, receive, send)


def proxy_app(upstream: str, *, max_connections: int = 64) -> Any:
    """An ASGI app forwarding every request to ``upstream`` (e.g. the cluster's URL), so a
    :class:`FlakyEndpoint` can delay or cut the way to a real remote service."""
    import httpx

    clients: dict[int, httpx.AsyncClient] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            for client in clients.values():
                await client.aclose()
            clients.clear()
            await send({"type": "lifespan.shutdown.complete"})
            return
        loop = id(asyncio.get_running_loop())
        if loop not in clients:
            limits = httpx.Limits(max_connections=max_connections)
            clients[loop] = httpx.AsyncClient(base_url=upstream, limits=limits, timeout=60)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        skip = {b"host", b"content-length", b"connection"}
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k not in skip]
        path = scope["path"] + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        reply = await clients[loop].request(scope["method"], path, content=body, headers=headers)
        dropped = ("content-length", "transfer-encoding", "connection")
        out = [(k.encode(), v.encode()) for k, v in reply.headers.items() if k not in dropped]
        out.append((b"content-length", str(len(reply.content)).encode()))
        await send({"type": "http.response.start", "status": reply.status_code, "headers": out})
        await send({"type": "http.response.body", "body": reply.content})

    return app
