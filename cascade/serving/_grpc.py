"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``) over the
HTTP service, as pure translation: no gRPC server, no Ray.

Each RPC becomes the HTTP request it stands for, answered by
:meth:`InferenceService.handle <cascade.serving.InferenceService.handle>`; the reply comes
back as the RPC's response message or as a status code. Routes, validation, admission,
deadlines and auth therefore exist once, and whatever the HTTP service learns (a versioned
route, a new error) the gRPC service answers the same way. ``ModelInfer`` travels as the
binary tensor data extension: ``raw_input_contents`` go through untouched, typed
``contents`` are packed into the same little-endian bytes.

The runtimes put a server around :class:`GrpcInference`: the edge a ``grpc.aio`` server
(:mod:`cascade.edge._grpc`), the Ray ingress Serve's gRPC proxy (``deployments/app.py``).

Statuses::

    HTTP 400 INVALID_ARGUMENT    401 UNAUTHENTICATED    404 NOT_FOUND    405 UNIMPLEMENTED
         413 RESOURCE_EXHAUSTED  429, 503 UNAVAILABLE (Retry-After in trailing metadata)
         anything else INTERNAL
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import Message

from cascade.serving._oip import grpc_service_pb2 as pb
from cascade.serving._profile import PROFILE_HEADER
from cascade.serving._protocol import bytes_elements
from cascade.serving._service import HttpReply, InferenceService

__all__ = [
    "RPC_NAMES",
    "GrpcInference",
    "RpcFailure",
    "empty_response",
    "failure_of",
    "grpc_code",
    "grpc_headers",
    "infer_http_request",
    "infer_response",
    "rpc_methods",
]

_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    429: "UNAVAILABLE",
    503: "UNAVAILABLE",
}

# datatype -> (the typed contents field, its little-endian dtype); FP16 and BYTES have none
# that numpy packs (FP16: raw only, as in Triton; BYTES: bytes_contents, length-prefixed)
_CONTENTS: dict[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "|b1"),
    "INT8": ("int_contents", "<i1"),
    "INT16": ("int_contents", "<i2"),
    "INT32": ("int_contents", "<i4"),
    "INT64": ("int64_contents", "<i8"),
    "UINT8": ("uint_contents", "<u1"),
    "UINT16": ("uint_contents", "<u2"),
    "UINT32": ("uint_contents", "<u4"),
    "UINT64": ("uint64_contents", "<u8"),
    "FP32": ("fp32_contents", "<f4"),
    "FP64": ("fp64_contents", "<f8"),
}
_FP16 = "<f2"

_RESPONSES: dict[str, type[Message]] = {
    "ServerLive": pb.ServerLiveResponse,
    "ServerReady": pb.ServerReadyResponse,
    "ModelReady": pb.ModelReadyResponse,
    "ServerMetadata": pb.ServerMetadataResponse,
    "ModelMetadata": pb.ModelMetadataResponse,
    "ModelInfer": pb.ModelInferResponse,
}
RPC_NAMES = tuple(_RESPONSES)
"""The RPCs served; the rest of Triton's service (streaming, statistics, repository,
shared memory) answers UNIMPLEMENTED."""


def empty_response(rpc: str) -> Message:
    """The empty response message of ``rpc``: what a servicer returns with an error status
    set on its context (Ray Serve's), where it cannot abort."""
    return _RESPONSES[rpc]()


_T = TypeVar("_T")


def rpc_methods(cls: type[_T]) -> type[_T]:
    """Give ``cls`` one method per RPC of :data:`RPC_NAMES`, ``Name(request, grpc_context)``,
    each returning ``await self.answer_rpc("Name", request, grpc_context)``: the servicer
    shape ``grpc.aio`` calls, and the ingress methods Ray Serve's gRPC proxy calls (Serve
    passes its context to a parameter named ``grpc_context``). Each runtime writes
    ``answer_rpc`` once.

    Example::

        @rpc_methods
        class Servicer:
            async def answer_rpc(self, rpc, request, grpc_context): ...
    """

    def method(rpc: str) -> Callable[..., Awaitable[Message]]:
        async def answer(self: Any, request: Message, grpc_context: Any) -> Message:
            response: Message = await self.answer_rpc(rpc, request, grpc_context)
            return response

        answer.__name__ = answer.__qualname__ = rpc
        answer.__doc__ = f"The ``{rpc}`` RPC of ``inference.GRPCInferenceService``."
        return answer

    for rpc in RPC_NAMES:
        setattr(cls, rpc, method(rpc))
    return cls


class RpcFailure(Exception):
    """An RPC's error status: ``code`` is a ``grpc.StatusCode`` name, ``details`` the HTTP
    service's error message, ``trailing`` metadata (``retry-after`` on UNAVAILABLE)."""

    def __init__(self, code: str, details: str, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details
        self.trailing = trailing


def grpc_code(status: int) -> str:
    """The ``grpc.StatusCode`` name for an HTTP error status.

    Example::

        grpc_code(404)   # "NOT_FOUND"
        grpc_code(500)   # "INTERNAL"
    """
    return _CODES.get(status, "INTERNAL")


def failure_of(reply: HttpReply) -> RpcFailure:
    """The gRPC status for an HTTP error reply: the code of its status, its ``{"error"}``
    message as details, ``retry-after`` as trailing metadata."""
    try:
        details = str(json.loads(reply.body)["error"])
    except (ValueError, KeyError, TypeError):
        details = reply.body.decode("utf-8", "replace") or f"HTTP {reply.status}"
    trailing: tuple[tuple[str, str], ...] = ()
    retry_after = reply.headers.get("retry-after")
    if retry_after is not None and reply.status in (429, 503):
        trailing = (("retry-after", retry_after),)
    return RpcFailure(grpc_code(reply.status), details, trailing)


def _parameter(value: pb.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def _set_parameter(target: pb.InferParameter, value: Any) -> bool:
    """Response parameters are scalars: str, bool, int, float; anything else is skipped."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        return False
    return True


def _request_parameters(request: pb.ModelInferRequest) -> dict[str, Any]:
    """The request's parameters as the HTTP body's: Triton's ``timeout`` (µs) becomes
    ``deadline_ms`` (the tighter one counts), everything else passes through by type."""
    parameters = {key: _parameter(value) for key, value in request.parameters.items()}
    timeout_us = parameters.pop("timeout", None)
    if isinstance(timeout_us, int) and not isinstance(timeout_us, bool) and timeout_us > 0:
        given = parameters.get("deadline_ms")
        ms = timeout_us / 1000.0
        parameters["deadline_ms"] = ms if not isinstance(given, int | float) else min(given, ms)
    return {k: v for k, v in parameters.items() if v is not None}


def _input_bytes(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes:
    """A typed-contents input as the binary form's bytes (BYTES: length-prefixed)."""
    contents = tensor.contents
    if tensor.datatype == "BYTES":
        return bytes_elements(contents.bytes_contents)
    typed = _CONTENTS.get(tensor.datatype)
    if typed is None:  # FP16 or an unknown datatype: the service says what is allowed
        return b""
    field, dtype = typed
    return np.asarray(getattr(contents, field), dtype=np.dtype(dtype)).tobytes()


def infer_http_request(
    request: pb.ModelInferRequest, *, binary_outputs: bool = False
) -> tuple[bytes, dict[str, str]]:
    """The HTTP body (binary tensor data extension) and headers a ``ModelInferRequest``
    stands for. ``binary_outputs``: ask for the outputs in binary form too.

    Example::

        body, headers = infer_http_request(request)
        reply = await service.handle("POST", "/v2/models/digits/infer", headers | meta, read)
    """
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise RpcFailure(
            "INVALID_ARGUMENT",
            f"raw_input_contents has {len(request.raw_input_contents)} entries; give one per "
            f"input ({len(request.inputs)}) or none",
        )
    inputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for i, tensor in enumerate(request.inputs):
        raw = request.raw_input_contents[i] if request.raw_input_contents else _input_bytes(tensor)
        inputs.append({"name": tensor.name, "datatype": tensor.datatype,
                       "shape": list(tensor.shape),
                       "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
        chunks.append(raw)
    document: dict[str, Any] = {"inputs": inputs}
    if request.id:
        document["id"] = request.id
    parameters = _request_parameters(request)
    if binary_outputs:
        parameters["binary_data_output"] = True
    if parameters:
        document["parameters"] = parameters
    if request.outputs:
        outputs: list[dict[str, Any]] = [{"name": o.name} for o in request.outputs]
        if binary_outputs:
            for output in outputs:
                output["parameters"] = {"binary_data": True}
        document["outputs"] = outputs
    header = json.dumps(document).encode()
    headers = {"content-type": "application/octet-stream",
               "inference-header-content-length": str(len(header))}  # fmt: skip
    return header + b"".join(chunks), headers


def _output_bytes(tensor: Mapping[str, Any]) -> bytes:
    """A JSON output's ``data`` as the binary form (raw_output_contents)."""
    datatype = tensor.get("datatype")
    data = tensor.get("data", [])
    if datatype == "BYTES":
        return bytes_elements([str(item) for item in np.ravel(np.asarray(data, dtype=object))])
    if datatype == "FP16":
        return np.asarray(data, dtype=np.dtype(_FP16)).tobytes()
    typed = _CONTENTS.get(str(datatype))
    if typed is None:
        raise RpcFailure("INTERNAL", f"output '{tensor.get('name')}': datatype {datatype!r}")
    return np.asarray(data, dtype=np.dtype(typed[1])).tobytes()


def infer_response(reply: HttpReply) -> pb.ModelInferResponse:
    """The ``ModelInferResponse`` for an infer route's 200: a JSON body (outputs' ``data``
    packed into ``raw_output_contents``) or the binary extension's (its bytes sliced
    through, not re-encoded)."""
    header, binary = reply.body, b""
    length = reply.headers.get("inference-header-content-length")
    if length is not None:
        header, binary = reply.body[: int(length)], reply.body[int(length) :]
    document = json.loads(header)
    response = pb.ModelInferResponse(
        model_name=document.get("model_name", ""),
        model_version=str(document.get("model_version", "")),
        id=document.get("id") or "",
    )
    for key, value in (document.get("parameters") or {}).items():
        if not _set_parameter(response.parameters[key], value):
            del response.parameters[key]
    at = 0
    for tensor in document.get("outputs", []):
        output = response.outputs.add(name=tensor["name"], datatype=tensor["datatype"],
                                      shape=tensor["shape"])  # fmt: skip
        parameters = dict(tensor.get("parameters") or {})
        size = parameters.pop("binary_data_size", None)
        for key, value in parameters.items():
            if not _set_parameter(output.parameters[key], value):
                del output.parameters[key]
        if size is None:
            response.raw_output_contents.append(_output_bytes(tensor))
        else:
            response.raw_output_contents.append(binary[at : at + int(size)])
            at += int(size)
    return response


Metadata = Iterable[tuple[str, str | bytes]]
_FIXED_PATHS = {"ServerLive": "/v2/health/live", "ServerReady": "/v2/health/ready",
                "ServerMetadata": "/v2"}  # fmt: skip


def _model_path(name: str, version: str) -> str:
    return f"/v2/models/{name}" + (f"/versions/{version}" if version else "")


def grpc_headers(metadata: Metadata) -> dict[str, str]:
    """Invocation metadata as request headers (lower-case keys; binary ``-bin`` ones left
    out: no HTTP header carries them)."""
    return {k.lower(): v for k, v in metadata if isinstance(v, str) and not k.endswith("-bin")}


def _timeout_header(seconds: float) -> str:
    """gRPC's own ``grpc-timeout`` form (at most 8 digits) for ``seconds`` left."""
    micros = max(0, math.floor(seconds * 1e6))
    return f"{micros}u" if micros < 10**8 else f"{min(micros // 1000, 10**8 - 1)}m"


@dataclass
class GrpcInference:
    """``inference.GRPCInferenceService`` answered by ``service``, its RPCs by name.

    ``binary_outputs`` (default): ask the HTTP service for every output in binary form,
    sliced into ``raw_output_contents`` as they come, never re-encoded; without it outputs
    come as JSON ``data`` and are packed here.

    Example::

        rpcs = GrpcInference(service)
        response = await rpcs.call("ModelInfer", request, metadata, time_remaining_s=0.25)
        # raises RpcFailure("NOT_FOUND", "unknown model 'x' (models: digits)") and the like
    """

    service: InferenceService
    binary_outputs: bool = True

    async def call(
        self,
        rpc: str,
        request: Message,
        metadata: Metadata = (),
        *,
        time_remaining_s: float | None = None,
    ) -> Message:
        """Answer RPC ``rpc`` (one of :data:`RPC_NAMES`); raises :class:`RpcFailure`.

        ``metadata``: the call's invocation metadata (an ``authorization`` token, deadline
        headers); ``time_remaining_s``: what is left of the call's gRPC deadline, which
        becomes the request's budget (the tightest of all its deadlines counts).
        """
        headers = grpc_headers(metadata)
        if time_remaining_s is not None:
            headers["grpc-timeout"] = _timeout_header(time_remaining_s)
        handler: Callable[[Any, dict[str, str]], Awaitable[Message]] = getattr(self, f"_{rpc}")
        return await handler(request, headers)

    @staticmethod
    def path_of(rpc: str, request: Any) -> str:
        """The HTTP route RPC ``rpc`` stands for: a host that checks the token before
        anything else (:meth:`InferenceService.authorize`) asks it about this path.

        Example::

            GrpcInference.path_of("ModelInfer", pb.ModelInferRequest(model_name="digits"))
            # "/v2/models/digits/infer"
        """
        if rpc in _FIXED_PATHS:
            return _FIXED_PATHS[rpc]
        if rpc == "ModelInfer":
            return _model_path(request.model_name, request.model_version) + "/infer"
        suffix = "/ready" if rpc == "ModelReady" else ""
        return _model_path(request.name, request.version) + suffix

    async def _get(self, path: str, headers: Mapping[str, str]) -> HttpReply:
        async def empty() -> bytes:
            return b""

        return await self.service.handle("GET", path, headers, empty)

    async def _json(self, path: str, headers: Mapping[str, str], *ok: int) -> tuple[int, Any]:
        """The status and JSON document of GET ``path``; ``RpcFailure`` unless the status is
        200 or one of ``ok``."""
        reply = await self._get(path, headers)
        if reply.status not in (200, *ok):
            raise failure_of(reply)
        return reply.status, json.loads(reply.body)

    async def _ServerLive(self, request: Message, headers: Mapping[str, str]) -> Message:
        _, document = await self._json(self.path_of("ServerLive", request), headers)
        return pb.ServerLiveResponse(live=bool(document.get("live", True)))

    async def _ServerReady(self, request: Message, headers: Mapping[str, str]) -> Message:
        path = self.path_of("ServerReady", request)
        status, _ = await self._json(path, headers, 400)  # 400: not ready
        return pb.ServerReadyResponse(ready=status == 200)

    async def _ModelReady(
        self, request: pb.ModelReadyRequest, headers: Mapping[str, str]
    ) -> Message:
        path = self.path_of("ModelReady", request)
        status, document = await self._json(path, headers, 400)
        return pb.ModelReadyResponse(ready=status == 200 and bool(document.get("ready", True)))

    async def _ServerMetadata(self, request: Message, headers: Mapping[str, str]) -> Message:
        _, document = await self._json(self.path_of("ServerMetadata", request), headers)
        return pb.ServerMetadataResponse(name=document.get("name", ""),
                                         version=str(document.get("version", "")),
                                         extensions=document.get("extensions", []))  # fmt: skip

    async def _ModelMetadata(
        self, request: pb.ModelMetadataRequest, headers: Mapping[str, str]
    ) -> Message:
        _, document = await self._json(self.path_of("ModelMetadata", request), headers)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=document.get("name", ""),
            versions=[str(v) for v in document.get("versions", [])],
            platform=document.get("platform", ""),
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                    for t in document.get("inputs", [])],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                     for t in document.get("outputs", [])],
        )  # fmt: skip

    async def _ModelInfer(self, request: pb.ModelInferRequest, headers: dict[str, str]) -> Message:
        body, extra = infer_http_request(request, binary_outputs=self.binary_outputs)
        for name in ("content-encoding", "content-length", "inference-header-content-length"):
            headers.pop(name, None)  # the body is ours: metadata does not describe it
        headers.update(extra)

        async def read() -> bytes:
            return body

        path = self.path_of("ModelInfer", request)
        received_s = self.service.clock() if PROFILE_HEADER in headers else None
        reply = await self.service.handle("POST", path, headers, read, received_s=received_s)
        if reply.status != 200:
            raise failure_of(reply)
        return infer_response(reply)
