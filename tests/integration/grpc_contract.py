"""The gRPC contract (``inference.GRPCInferenceService``), run by test_http_contract.py
against its servers (Ray Serve through HAProxy, and the edge), which serve gRPC too: one Ray
start-up for both protocols.

In this process the calls go through grpcio with our stubs (their messages sit in a
descriptor pool of their own). An unmodified Triton client runs in a subprocess: its
``inference.*`` messages and KServe's, which test_http_contract imports, both claim protobuf's
default pool, and one process cannot hold both.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cascade.serving._oip import grpc_service_pb2 as pb
from cascade.zoo import read_dataset

ROWS = np.asarray(read_dataset("digits").test.X[:6], dtype=np.float32)
_DTYPES = {"FP32": "<f4", "INT64": "<i8", "BOOL": "|b1"}


class _Server:  # what test_http_contract's Server gives these tests
    url: str
    grpc: str


@contextmanager
def grpc_stub(target: str, *, ca: Path | None = None) -> Iterator[Any]:
    """Our stubs on a channel to ``target`` (``host:port``); over TLS trusting ``ca``."""
    import grpc

    from cascade.serving._oip.grpc_service_pb2_grpc import GRPCInferenceServiceStub

    if ca is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes()))
    with channel:
        yield GRPCInferenceServiceStub(channel)


def grpc_status(call: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    """The status code name and details an RPC ends with (``OK``, ``""`` when it answers)."""
    import grpc

    try:
        call(*args, timeout=60, **kwargs)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()
    return "OK", ""


def _stub(server: _Server) -> Any:
    return grpc_stub(server.grpc)


def _http_answer(server: _Server, rows: np.ndarray) -> dict[str, list[Any]]:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}  # fmt: skip
    response = httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def _decoded(response: pb.ModelInferResponse) -> dict[str, list[Any]]:
    """``raw_output_contents`` as flat lists, as a client reads them."""
    out: dict[str, list[Any]] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype != "BYTES":
            out[tensor.name] = np.frombuffer(raw, _DTYPES[tensor.datatype]).tolist()
            continue
        items, at = [], 0
        while at < len(raw):  # each element: 4-byte little-endian length, then its bytes
            size = int.from_bytes(raw[at : at + 4], "little")
            items.append(raw[at + 4 : at + 4 + size].decode())
            at += 4 + size
        out[tensor.name] = items
    return out


def _assert_same(got: dict[str, list[Any]], http: dict[str, list[Any]]) -> None:
    assert list(got) == list(http)
    np.testing.assert_allclose(got.pop("probabilities"), http["probabilities"], rtol=1e-6)
    assert got == {k: v for k, v in http.items() if k != "probabilities"}


def _infer_request(rows: np.ndarray, *, typed: bool = False) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits", id="g1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    if typed:
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    else:  # tritonclient's way
        request.raw_input_contents.append(rows.astype("<f4").tobytes())
    return request


def test_grpc_health_and_metadata(server: _Server) -> None:
    with _stub(server) as stub:
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=30).ready
        assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30).name == "cascade"
        meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=30)
    http = httpx.get(f"{server.url}/v2/models/digits", timeout=30).json()
    assert list(meta.versions) == http["versions"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 64])
    ]
    assert [t.name for t in meta.outputs] == [t["name"] for t in http["outputs"]]


@pytest.mark.parametrize("typed", [False, True], ids=["raw_input_contents", "fp32_contents"])
def test_grpc_infer_answers_what_http_answers(server: _Server, typed: bool) -> None:
    with _stub(server) as stub:
        response = stub.ModelInfer(_infer_request(ROWS, typed=typed), timeout=60)
    assert response.id == "g1"
    _assert_same(_decoded(response), _http_answer(server, ROWS))


@pytest.mark.parametrize(
    ("model", "width", "status", "message"),
    [
        ("digits", 10, "INVALID_ARGUMENT", "shape [6, 10] does not match [batch, 64]"),
        ("nope", 64, "NOT_FOUND", "unknown model 'nope' (models: "),
    ],
)
def test_grpc_errors_carry_the_services_message(
    server: _Server, model: str, width: int, status: str, message: str
) -> None:
    import grpc

    request = _infer_request(np.zeros((6, width), np.float32))
    request.model_name = model
    with _stub(server) as stub, pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, timeout=60)
    assert raised.value.code().name == status
    assert message in raised.value.details()


_TRITON = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

rows = np.asarray(json.loads(sys.argv[2]), np.float32)
client = grpcclient.InferenceServerClient(sys.argv[1])
out = {"health": [client.is_server_live(), client.is_server_ready(),
                  client.is_model_ready("digits")],
       "server": client.get_server_metadata().name}
tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
tensor.set_data_from_numpy(rows)
result = client.infer("digits", [tensor], request_id="t1")
out["id"] = result.get_response().id
out["outputs"] = {}
for o in result.get_response().outputs:
    value = result.as_numpy(o.name).ravel()
    out["outputs"][o.name] = [v.decode() if isinstance(v, bytes) else v.item() for v in value]
bad = grpcclient.InferInput("input", [1, 3], "FP32")
bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
try:
    client.infer("digits", [bad])
except InferenceServerException as exc:
    out["error"] = [exc.status(), exc.message()]
print(json.dumps(out))
"""


def test_an_unmodified_tritonclient_grpc_talks_to_it(server: _Server) -> None:
    if importlib.util.find_spec("tritonclient") is None:  # not imported here: see above
        pytest.skip("tritonclient is not installed")
    done = subprocess.run(
        [sys.executable, "-c", _TRITON, server.grpc, json.dumps(ROWS.tolist())],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["health"] == [True, True, True]
    assert (seen["server"], seen["id"]) == ("cascade", "t1")
    _assert_same(seen["outputs"], _http_answer(server, ROWS))
    assert seen["error"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "shape [1, 3] does not match [batch, 64]" in seen["error"][1]
