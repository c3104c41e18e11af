"""The gRPC contract (``inference.GRPCInferenceService``), run by test_http_contract.py
against its servers (Ray Serve through HAProxy, and the edge), which serve gRPC too: one Ray
start-up for both protocols. An unmodified Triton client talks to them as users' do; typed
``contents`` (which tritonclient never sends) go through grpcio with our stubs.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from cascade.zoo import read_dataset

ROWS = np.asarray(read_dataset("digits").test.X[:6], dtype=np.float32)


class _Server:  # what test_http_contract's Server gives these tests
    url: str
    grpc: str


def _triton(server: _Server) -> Any:
    grpcclient = pytest.importorskip("tritonclient.grpc")
    return grpcclient, grpcclient.InferenceServerClient(server.grpc)


def _http_answer(server: _Server, rows: np.ndarray) -> dict[str, Any]:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}  # fmt: skip
    response = httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def test_grpc_health_and_metadata(server: _Server) -> None:
    _, client = _triton(server)
    with client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        assert client.get_server_metadata().name == "cascade"
        meta = client.get_model_metadata("digits")
        http = httpx.get(f"{server.url}/v2/models/digits", timeout=30).json()
        assert list(meta.versions) == http["versions"]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("input", "FP32", [-1, 64])
        ]


def test_grpc_infer_answers_what_http_answers(server: _Server) -> None:
    grpcclient, client = _triton(server)
    tensor = grpcclient.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)  # raw_input_contents, tritonclient's way
    with client:
        result = client.infer("digits", [tensor], request_id="g1")
    http = _http_answer(server, ROWS)
    assert result.get_response().id == "g1"
    assert [label.decode() for label in result.as_numpy("label")] == http["label"]
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), np.reshape(http["probabilities"], (6, 10)), rtol=1e-6
    )


def test_grpc_typed_contents_through_grpcio_stubs(server: _Server) -> None:
    import grpc

    from cascade.serving._oip import grpc_service_pb2 as pb
    from cascade.serving._oip.grpc_service_pb2_grpc import GRPCInferenceServiceStub

    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=list(ROWS.shape))
    request.inputs[0].contents.fp32_contents.extend(ROWS.ravel().tolist())
    request.outputs.add(name="label")
    with grpc.insecure_channel(server.grpc) as channel:
        response = GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    raw = response.raw_output_contents[0]
    labels, at = [], 0
    while at < len(raw):  # BYTES: 4-byte little-endian length, then the element
        size = int.from_bytes(raw[at : at + 4], "little")
        labels.append(raw[at + 4 : at + 4 + size].decode())
        at += 4 + size
    assert [o.name for o in response.outputs] == ["label"]
    assert labels == _http_answer(server, ROWS)["label"]


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
    grpcclient, client = _triton(server)
    from tritonclient.utils import InferenceServerException

    tensor = grpcclient.InferInput("input", [6, width], "FP32")
    tensor.set_data_from_numpy(np.zeros((6, width), np.float32))
    with client, pytest.raises(InferenceServerException) as raised:
        client.infer(model, [tensor])
    assert raised.value.status() == f"StatusCode.{status}"
    assert message in raised.value.message()
