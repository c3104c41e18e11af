"""The edge runtime: the policies' engine in this one process behind uvicorn, without Ray.

``cascade serve --runtime edge POLICY...`` runs :func:`serve_edge`; tests and benchmarks
build the app with :func:`build_edge_app` and serve it however they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cascade.edge._asgi import EdgeApp
from cascade.edge._metrics import PrometheusMetrics
from cascade.errors import PolicyError
from cascade.policy import PolicyFile, read_policy
from cascade.serving import InferenceService, PolicyText, ServingLimits

__all__ = ["EdgeSettings", "build_edge_app", "serve_edge"]


class EdgeSettings(ServingLimits):
    """What the edge runtime serves and its limits; the Ray runtime's knobs, same defaults.

    Example::

        EdgeSettings(policies=["policies/covertype-edge.yaml"], max_rows=1024)
    """

    @property
    def max_requests(self) -> int:
        """Requests the process holds at once before it sheds with a 503."""
        if self.max_queued_requests < 0:
            return 2**31
        return self.max_ongoing_requests + self.max_queued_requests


def _texts(paths: list[str]) -> list[PolicyText]:
    return [PolicyText(str(Path(p).resolve()), Path(p).read_text()) for p in paths]


def _return_freed_memory_to_the_system(threshold: int = 128 * 1024) -> None:
    """Let glibc hand big freed blocks back at once (``mallopt(M_MMAP_THRESHOLD)``).

    Loading an ONNX forest, onnxruntime frees about 140 MB of temporaries; glibc raises its
    mmap threshold after big frees and then keeps such blocks in the heap, so the process
    stays that much larger for good. Fixing the threshold kept the covertype edge process
    at 323 MB RSS instead of 424 MB (`cascade footprint policies/covertype.yaml`; same
    sessions, same answers, no system call per request). Linux with glibc only; elsewhere
    nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):  # another C library: leave it be
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # -3: M_MMAP_THRESHOLD


def build_edge_app(
    settings: EdgeSettings, *, policies: Sequence[PolicyFile] | None = None
) -> EdgeApp:
    """The ASGI app serving ``settings.policies`` (or ``policies``, those files already
    read, in the same order). A policy that does not load, or whose model files are
    missing, raises ``PolicyError`` here, before serving: the edge never builds models
    (`cascade serve` does, before it starts the app).

    Example::

        app = build_edge_app(EdgeSettings(policies=["policies/digits.yaml"]))
        uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    _return_freed_memory_to_the_system()
    read = list(policies) if policies is not None else [read_policy(p) for p in settings.policies]
    metrics = PrometheusMetrics()
    service = InferenceService(
        max_rows=settings.max_rows,
        max_body_bytes=settings.max_body_bytes,
        coalesce_ms=settings.coalesce_ms,
        metrics=metrics,
        auth=settings.auth(),
    )
    service.apply_policies(read, remote=lambda name: {})
    if service.reload_errors:
        raise PolicyError("; ".join(sorted(service.reload_errors.values())))
    return EdgeApp(
        service,
        metrics,
        max_requests=settings.max_requests,
        retry_after_s=settings.retry_after_s,
    )


def serve_edge(
    settings: EdgeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    announce: Callable[[str], None] | None = None,
    policies: Sequence[PolicyFile] | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    grpc_port: int | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; SIGHUP re-reads the policy files (an invalid one is
    refused and reported in its model's metadata, the old one keeps serving).

    ``announce(url)`` is called once the socket listens (and the gRPC one, with
    ``grpc_port``: ``inference.GRPCInferenceService`` on ``host:grpc_port``, in this process
    and event loop, stopped before the HTTP server at shutdown). ``tls_cert`` and ``tls_key``
    (PEM files, both or neither): HTTPS, by uvicorn's own TLS (``ssl_certfile``,
    ``ssl_keyfile``); the certificate file may hold the chain after the server's own. gRPC
    then uses the same certificate and key.
    """
    import uvicorn

    if (tls_cert is None) != (tls_key is None):
        raise PolicyError("TLS needs both a certificate and its key (--tls-cert, --tls-key)")

    app = build_edge_app(settings, policies=policies)

    def reload() -> None:
        app.service.apply_policies(_texts(settings.policies), remote=lambda name: {})

    def started() -> None:
        loop = asyncio.get_running_loop()
        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, reload)

    app.on_startup = started
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        interface="asgi3",
        log_level="warning",
        access_log=False,  # a log line per request costs more CPU than a tiny tier's answer
        server_header=False,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )
    _server(config, on_listening=announce, grpc_port=grpc_port).run()


def _server(
    config: Any, *, on_listening: Callable[[str], None] | None, grpc_port: int | None = None
) -> Any:
    """uvicorn's server, announcing the URL once it listens (not merely once it starts), and
    ending its run normally after SIGINT/SIGTERM (uvicorn re-raises the signal, which would
    kill the process before `cascade serve` reports "stopped" and exits 0). With
    ``grpc_port``, the gRPC server starts after the HTTP one and stops before it (its calls
    in flight finish while the app's models are still open)."""
    import uvicorn

    class Server(uvicorn.Server):
        grpc: Any = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and grpc_port is not None:
                from cascade.edge._grpc import grpc_server

                tls = (config.ssl_certfile, config.ssl_keyfile) if config.is_ssl else None
                self.grpc = grpc_server(config.app, host=config.host, port=grpc_port, tls=tls)
                await self.grpc.start()
            if self.started and on_listening is not None:
                scheme = "https" if config.is_ssl else "http"
                on_listening(f"{scheme}://{config.host}:{config.port}")

        async def shutdown(self, sockets: Any = None) -> None:
            if self.grpc is not None:
                from cascade.edge._grpc import GRPC_GRACE_S

                await self.grpc.stop(GRPC_GRACE_S)
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            stops = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)
