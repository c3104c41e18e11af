"""The edge runtime's gRPC server: ``inference.GRPCInferenceService`` on ``grpc.aio``, in
uvicorn's process and event loop, answering through the one
:class:`~cascade.serving.InferenceService` the HTTP routes use.

The HTTP app's bound on requests held at once counts gRPC calls too (one process, one
budget); messages are bounded by the service's ``max_body_bytes``, as bodies are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cascade.edge._asgi import EdgeApp
from cascade.errors import CascadeError
from cascade.serving._grpc import (
    GrpcInference,
    RpcFailure,
    failure_of,
    grpc_headers,
    rpc_methods,
)

__all__ = ["GRPC_GRACE_S", "EdgeServicer", "grpc_server"]

GRPC_GRACE_S = 5.0
"""How long a stopping server lets calls in flight finish."""


def _grpc() -> Any:
    try:
        import grpc
    except ImportError as exc:
        raise CascadeError(
            f'--grpc-port needs grpcio: pip install "cascade[grpc]" ({exc})'
        ) from exc
    return grpc


@rpc_methods
class EdgeServicer:
    """The RPCs of ``inference.GRPCInferenceService`` over ``app``'s service, sharing its
    bound on requests held at once (past it: UNAVAILABLE with ``retry-after``). With a
    token, as over HTTP, it is checked first: a caller without it learns nothing, not even
    that the server is busy."""

    def __init__(self, app: EdgeApp) -> None:
        self.app = app
        self.rpcs = GrpcInference(app.service)

    async def answer_rpc(self, rpc: str, request: Any, grpc_context: Any) -> Any:
        grpc = _grpc()
        app = self.app
        metadata = grpc_context.invocation_metadata() or ()
        if app.service.auth is not None:
            path = GrpcInference.path_of(rpc, request)
            refused = app.service.authorize(path, grpc_headers(metadata))
            if refused is not None:
                failure = failure_of(refused)
                await grpc_context.abort(grpc.StatusCode[failure.code], failure.details)
        if app.held >= app.max_requests:
            if rpc == "ModelInfer":
                app.service.metrics.shed(request.model_name, "backpressure")
            await grpc_context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"over {app.max_requests} requests held; retry later",
                trailing_metadata=(("retry-after", str(max(1, math.ceil(app.retry_after_s)))),),
            )
        app.held += 1
        try:
            return await self.rpcs.call(
                rpc,
                request,
                metadata,
                time_remaining_s=grpc_context.time_remaining(),
            )
        except RpcFailure as failure:
            await grpc_context.abort(
                grpc.StatusCode[failure.code], failure.details, trailing_metadata=failure.trailing
            )
        finally:
            app.held -= 1


def grpc_server(
    app: EdgeApp,
    *,
    host: str,
    port: int,
    tls: tuple[str, str] | None = None,
    options: Sequence[Any] = (),
) -> Any:
    """A ``grpc.aio`` server for ``app`` listening on ``host:port`` (not started: call
    ``await server.start()`` in the event loop that serves it); with ``tls`` (PEM
    certificate chain and key files), over TLS. ``CascadeError`` when the port cannot be
    bound or grpcio is missing.

    Example::

        server = grpc_server(app, host="127.0.0.1", port=8001)
        await server.start()
        ...
        await server.stop(GRPC_GRACE_S)
    """
    grpc = _grpc()
    from cascade.serving._oip import grpc_service_pb2_grpc

    limit = app.service.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared listener
            *options,
        ]
    )
    add: Any = grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server
    add(EdgeServicer(app), server)
    try:
        if tls is None:
            server.add_insecure_port(f"{host}:{port}")
        else:
            chain, key = (Path(path).read_bytes() for path in tls)
            credentials = grpc.ssl_server_credentials([(key, chain)])
            server.add_secure_port(f"{host}:{port}", credentials)
    except RuntimeError as exc:
        raise CascadeError(f"gRPC cannot listen on {host}:{port}: {exc}") from exc
    return server
