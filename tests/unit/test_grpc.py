"""The gRPC service's translation onto the HTTP service: a real InferenceService with a real
digits policy, messages built as a Triton client builds them. No server, no Ray."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf.message import Message

from cascade.serving import InferenceService, PolicyText
from cascade.serving._grpc import GrpcInference, RpcFailure, infer_http_request
from cascade.serving._oip import grpc_service_pb2 as pb
from cascade.serving._protocol import bytes_elements
from cascade.zoo import read_dataset

ROWS = np.asarray(read_dataset("digits").test.X[:5], dtype=np.float32)


@pytest.fixture
def service(digits_policy_models: Path, tmp_path: Path) -> InferenceService:
    path = tmp_path / "digits.yaml"
    path.write_text(
        f"name: digits\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {digits_policy_models / 'tiny.onnx'}}}\n"
        f"  large: {{model: {digits_policy_models / 'large.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        "    - {tier: tiny, threshold: 0.9}\n    - {tier: large}\n"
    )
    svc = InferenceService(max_rows=8, max_body_bytes=1 << 16)
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=lambda name: {})
    return svc


def _call(
    svc: InferenceService,
    rpc: str,
    request: Message,
    metadata: Any = (),
    *,
    binary_outputs: bool = True,
    **kw: Any,
) -> Any:
    rpcs = GrpcInference(svc, binary_outputs=binary_outputs)
    return asyncio.run(rpcs.call(rpc, request, metadata, **kw))


def _elements(raw: bytes) -> list[str]:
    """BYTES in the binary form: a 4-byte little-endian length, then the element."""
    items, at = [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at : at + 4], "little")
        items.append(raw[at + 4 : at + 4 + size].decode())
        at += 4 + size
    return items


def _http(svc: InferenceService, body: dict[str, Any]) -> dict[str, Any]:
    async def read() -> bytes:
        return json.dumps(body).encode()

    reply = asyncio.run(svc.handle("POST", "/v2/models/digits/infer", {}, read))
    assert reply.status == 200, reply.body
    document: dict[str, Any] = json.loads(reply.body)
    return document


def _request(rows: np.ndarray, *, raw: bool = True, **parameters: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits", id="r1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(rows.shape))
    if raw:  # tritonclient's default
        request.raw_input_contents.append(rows.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    for key, value in parameters.items():
        kind = {bool: "bool_param", int: "int64_param", float: "double_param"}.get(type(value))
        setattr(request.parameters[key], kind or "string_param", value)
    return request


def _outputs(response: pb.ModelInferResponse) -> dict[str, Any]:
    """The outputs as a client decodes raw_output_contents: numbers, or BYTES as strings."""
    decoded: dict[str, Any] = {}
    for out, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if out.datatype == "BYTES":
            decoded[out.name] = _elements(raw)
        else:
            dtype = {"FP32": "<f4", "INT64": "<i8", "BOOL": "|b1"}[out.datatype]
            decoded[out.name] = np.frombuffer(raw, dtype).reshape(list(out.shape)).tolist()
    return decoded


@pytest.mark.parametrize(
    ("raw", "binary_outputs"),
    [(True, True), (False, True), (True, False)],
    ids=["raw_input_contents", "fp32_contents", "json_outputs"],
)
def test_model_infer_answers_what_http_answers(
    service: InferenceService, raw: bool, binary_outputs: bool
) -> None:
    request = _request(ROWS, raw=raw)
    response = _call(service, "ModelInfer", request, binary_outputs=binary_outputs)
    assert (response.model_name, response.id) == ("digits", "r1")
    outputs = _outputs(response)
    http = _http(service, {"inputs": [{"name": "input", "shape": [5, 64], "datatype": "FP32",
                                       "data": ROWS.ravel().tolist()}]})  # fmt: skip
    assert [o.name for o in response.outputs] == [o["name"] for o in http["outputs"]]
    for tensor in http["outputs"]:
        expected = np.reshape(tensor["data"], tensor["shape"]).tolist()
        if tensor["datatype"] == "FP32":
            np.testing.assert_allclose(outputs[tensor["name"]], expected, rtol=1e-6)
        else:
            assert outputs[tensor["name"]] == expected, tensor["name"]
    assert response.parameters["gear"].string_param == "normal"


def test_requested_outputs_and_parameters_pass_through(service: InferenceService) -> None:
    request = _request(ROWS[:2], max_tier="tiny", trace=False)
    request.outputs.add(name="label")
    response = _call(service, "ModelInfer", request)
    assert [o.name for o in response.outputs] == ["label"]
    http = _http(service, {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                                       "data": ROWS[:2].ravel().tolist()}],
                           "parameters": {"max_tier": "tiny"}})  # fmt: skip
    assert _outputs(response)["label"] == http["outputs"][1]["data"]


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (_request(ROWS[:, :10]), "INVALID_ARGUMENT", r"shape \[5, 10\] does not match"),
        (pb.ModelInferRequest(model_name="x"), "NOT_FOUND", r"unknown model 'x' \(models: "),
        (_request(ROWS, max_tier="huge"), "INVALID_ARGUMENT", "is not a tier of this policy"),
        (_request(ROWS[:1], priority=-1), "INVALID_ARGUMENT", "parameters.priority"),
    ],
    ids=["shape", "model", "max_tier", "priority"],
)  # fmt: skip
def test_http_errors_become_status_codes_with_the_services_message(
    service: InferenceService, request_: pb.ModelInferRequest, code: str, message: str
) -> None:
    with pytest.raises(RpcFailure, match=message) as failure:
        _call(service, "ModelInfer", request_)
    assert failure.value.code == code


def test_raw_contents_must_match_the_inputs(service: InferenceService) -> None:
    request = _request(ROWS)
    request.raw_input_contents.append(b"")
    with pytest.raises(RpcFailure, match="raw_input_contents has 2 entries") as failure:
        _call(service, "ModelInfer", request)
    assert failure.value.code == "INVALID_ARGUMENT"


def test_an_expired_grpc_deadline_is_unavailable_with_retry_after(
    service: InferenceService,
) -> None:
    with pytest.raises(RpcFailure) as failure:
        _call(service, "ModelInfer", _request(ROWS), time_remaining_s=0.0)
    assert failure.value.code == "UNAVAILABLE"
    assert dict(failure.value.trailing)["retry-after"].isdigit()


def test_triton_timeout_and_metadata_deadline_become_the_budget(
    service: InferenceService,
) -> None:
    # Triton's `timeout` (µs) is the request's deadline_ms; 1 µs cannot be met
    with pytest.raises(RpcFailure, match="deadline") as failure:
        _call(service, "ModelInfer", _request(ROWS, timeout=1))
    assert failure.value.code == "UNAVAILABLE"
    with pytest.raises(RpcFailure, match="grpc-timeout must be"):
        _call(service, "ModelInfer", _request(ROWS), [("grpc-timeout", "soon")])
    assert _call(service, "ModelInfer", _request(ROWS), time_remaining_s=30.0).outputs


def test_health_and_metadata(service: InferenceService) -> None:
    assert _call(service, "ServerLive", pb.ServerLiveRequest()).live
    assert _call(service, "ServerReady", pb.ServerReadyRequest()).ready
    assert _call(service, "ModelReady", pb.ModelReadyRequest(name="digits")).ready
    meta = _call(service, "ServerMetadata", pb.ServerMetadataRequest())
    assert meta.name == "cascade"
    assert "binary_tensor_data" in meta.extensions
    model = _call(service, "ModelMetadata", pb.ModelMetadataRequest(name="digits"))
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("input", "FP32", [-1, 64])
    ]
    assert [t.name for t in model.outputs][:2] == ["probabilities", "label"]
    with pytest.raises(RpcFailure, match="unknown model 'x'") as failure:
        _call(service, "ModelMetadata", pb.ModelMetadataRequest(name="x"))
    assert failure.value.code == "NOT_FOUND"


def test_a_server_without_models_is_live_but_not_ready() -> None:
    empty = InferenceService()
    assert _call(empty, "ServerLive", pb.ServerLiveRequest()).live
    assert not _call(empty, "ServerReady", pb.ServerReadyRequest()).ready


def test_typed_contents_become_the_binary_extensions_little_endian_bytes() -> None:
    request = pb.ModelInferRequest(model_name="m")
    text = request.inputs.add(name="text", datatype="BYTES", shape=[2])
    text.contents.bytes_contents.extend([b"hello", "h\u00e9".encode()])
    ints = request.inputs.add(name="ids", datatype="INT64", shape=[2])
    ints.contents.int64_contents.extend([1, -2])
    body, headers = infer_http_request(request, binary_outputs=True)
    length = int(headers["inference-header-content-length"])
    document = json.loads(body[:length])
    texts = bytes_elements(["hello", "h\u00e9"])  # 4-byte little-endian lengths
    assert [t["parameters"] for t in document["inputs"]] == [
        {"binary_data_size": len(texts)},
        {"binary_data_size": 16},
    ]
    assert body[length:] == texts + np.array([1, -2], "<i8").tobytes()
    assert document["parameters"] == {"binary_data_output": True}


def test_the_token_is_the_authorization_metadata(
    digits_policy_models: Path, tmp_path: Path
) -> None:
    from cascade.serving._auth import BearerAuth

    path = tmp_path / "digits.yaml"
    path.write_text(
        "name: digits\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {digits_policy_models / 'tiny.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: tiny}\n"
    )
    svc = InferenceService(auth=BearerAuth("s3cret"))
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=lambda name: {})
    with pytest.raises(RpcFailure, match="Authorization: Bearer <token>") as failure:
        _call(svc, "ModelInfer", _request(ROWS))
    assert failure.value.code == "UNAUTHENTICATED"
    with pytest.raises(RpcFailure, match="not valid"):
        _call(svc, "ModelMetadata", pb.ModelMetadataRequest(name="digits"),
              [("authorization", "Bearer wrong")])  # fmt: skip
    token = [("authorization", "Bearer s3cret")]
    assert _call(svc, "ModelInfer", _request(ROWS), token).outputs
    assert _call(svc, "ServerReady", pb.ServerReadyRequest()).ready  # open for probes


@pytest.mark.parametrize(
    ("rpc", "request_", "path"),
    [
        ("ServerLive", pb.ServerLiveRequest(), "/v2/health/live"),
        ("ServerMetadata", pb.ServerMetadataRequest(), "/v2"),
        ("ModelReady", pb.ModelReadyRequest(name="m", version="ab"),
         "/v2/models/m/versions/ab/ready"),
        ("ModelMetadata", pb.ModelMetadataRequest(name="m"), "/v2/models/m"),
        ("ModelInfer", pb.ModelInferRequest(model_name="m"), "/v2/models/m/infer"),
    ],
)  # fmt: skip
def test_each_rpc_is_the_route_it_stands_for(rpc: str, request_: Message, path: str) -> None:
    assert GrpcInference.path_of(rpc, request_) == path


def test_a_versioned_call_reaches_the_versioned_route(service: InferenceService) -> None:
    version = _call(service, "ModelMetadata", pb.ModelMetadataRequest(name="digits")).versions[0]
    request = _request(ROWS)
    request.model_version = version
    assert _call(service, "ModelInfer", request).model_version == version
    request.model_version = "0000"
    with pytest.raises(RpcFailure) as failure:
        _call(service, "ModelInfer", request)
    assert failure.value.code == "NOT_FOUND"
