"""The Open Inference Protocol (KServe v2) layer: every client mistake pinned, and happy paths."""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from cascade.errors import InputError
from cascade.policy import Policy
from cascade.routing import Decision, Step
from cascade.serving import (
    InferRequest,
    build_infer_response,
    bytes_elements,
    encode_response,
    error_body,
    model_metadata,
    parse_infer_request,
    policy_hash,
)
from cascade.serving._protocol import decode_body

WIDTH = 4
TIERS = ("tiny", "small", "large")


def body_of(
    *,
    inputs: Any = None,
    data: Any = None,
    shape: Any = None,
    datatype: str = "FP32",
    **top: Any,
) -> bytes:
    if inputs is None:
        if data is None:
            data = [float(i) for i in range(2 * WIDTH)]
        tensor = {"name": "input", "shape": shape or [2, WIDTH], "datatype": datatype}
        tensor["data"] = data
        inputs = [tensor]
    return json.dumps({"inputs": inputs, **top}).encode()


def parse(body: bytes, **kwargs: Any) -> InferRequest:
    return parse_infer_request(body, input_name="input", width=WIDTH, tiers=TIERS, **kwargs)


def fails(body: bytes, message: str, **kwargs: Any) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        parse(body, **kwargs)


# --- happy paths -------------------------------------------------------------------------


def test_flat_data_with_defaults() -> None:
    request = parse(body_of())
    assert request.id is None
    assert request.rows.dtype == np.float32
    assert request.rows.flags.c_contiguous
    np.testing.assert_array_equal(request.rows, np.arange(8, dtype=np.float32).reshape(2, 4))
    assert request.deadline_ms is None
    assert request.max_tier is None
    assert request.trace is False  # the full trace is opt-in
    assert request.output_names == ["probabilities", "label", "answered_by", "degraded"]
    assert request.binary_outputs == frozenset()


def test_nested_data_equals_flat() -> None:
    nested = [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    np.testing.assert_array_equal(parse(body_of(data=nested)).rows, parse(body_of()).rows)


@pytest.mark.parametrize("datatype", ["INT8", "INT32", "INT64", "UINT8", "UINT64", "FP16", "FP64"])
def test_other_datatypes_are_cast_to_float32(datatype: str) -> None:
    request = parse(body_of(data=list(range(8)), datatype=datatype))
    assert request.rows.dtype == np.float32
    np.testing.assert_array_equal(request.rows, np.arange(8, dtype=np.float32).reshape(2, 4))


def test_parameters_id_and_outputs_are_parsed() -> None:
    body = body_of(
        id="req-1",
        parameters={"deadline_ms": 25, "max_tier": "small", "trace": False, "other": 1},
        outputs=[{"name": "label"}, {"name": "label"}],
    )
    request = parse(body)
    assert request.id == "req-1"
    assert request.deadline_ms == 25.0
    assert request.max_tier == "small"
    assert request.trace is False
    assert request.output_names == ["label"]


def test_explicit_nulls_mean_defaults() -> None:
    request = parse(body_of(id=None, parameters={"deadline_ms": None, "max_tier": None}))
    assert (request.id, request.deadline_ms, request.max_tier) == (None, None, None)


# --- client mistakes: one pinned message each ---------------------------------------------


def test_body_too_large_is_refused_before_parsing() -> None:
    fails(b"x" * 9_000_000, "request body is 9000000 bytes; the limit is 8388608")


def test_invalid_json_says_where() -> None:
    fails(b'{"inputs": [}', "request body is not valid JSON: Expecting value: line 1 column 13")


def test_body_not_utf8() -> None:
    fails(b'{"id": "\xff"}', "request body is not UTF-8 text")


def test_top_level_must_be_an_object() -> None:
    fails(b"[1, 2]", "request body must be a JSON object, got a list")


@pytest.mark.parametrize("inputs", [None, []])
def test_inputs_missing_or_empty(inputs: Any) -> None:
    body = json.dumps({} if inputs is None else {"inputs": inputs}).encode()
    fails(body, "'inputs' must list one input named 'input', got none")


def test_inputs_not_a_list() -> None:
    fails(
        body_of(inputs={"name": "input"}),
        "'inputs' must list one input named 'input', got an object",
    )


def test_more_than_one_input() -> None:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}
    fails(body_of(inputs=[tensor, tensor]), "expected exactly one input ('input'), got 2")


def test_wrong_input_name() -> None:
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}
    fails(body_of(inputs=[tensor]), "unknown input 'x' (expected 'input')")
    del tensor["name"]
    fails(body_of(inputs=[tensor]), "inputs[0] needs a string 'name' (expected 'input')")


@pytest.mark.parametrize("key", ["shape", "datatype", "data"])
def test_missing_tensor_field(key: str) -> None:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}
    del tensor[key]
    fails(body_of(inputs=[tensor]), f"input 'input': missing '{key}'")


@pytest.mark.parametrize(
    ("shape", "shown"),
    [([2, 63], "[2, 63]"), ([8], "[8]"), ([2, 2, 2], "[2, 2, 2]"), ([-1, 4], "[-1, 4]")],
)
def test_shape_must_be_batch_by_width(shape: list[int], shown: str) -> None:
    fails(body_of(shape=shape), f"input 'input': shape {shown} does not match [batch, 4]")


def test_shape_must_hold_integers() -> None:
    fails(body_of(shape=[2.0, 4]), "input 'input': 'shape' must be a list of integers")


@pytest.mark.parametrize("datatype", ["BYTES", "BOOL", "fp32"])
def test_unsupported_datatype_lists_the_allowed(datatype: str) -> None:
    fails(
        body_of(datatype=datatype),
        f"input 'input': datatype \"{datatype}\" is not supported (allowed: FP16, FP32, FP64, "
        "INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64)",
    )


def test_data_length_must_match_shape() -> None:
    fails(body_of(data=[1.0] * 7), "input 'input': data has 7 values; shape [2, 4] needs 8")


def test_nested_data_must_match_shape() -> None:
    data = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
    fails(body_of(data=data), "input 'input': nested data has shape [4, 2]; 'shape' says [2, 4]")


def test_ragged_nested_data() -> None:
    fails(body_of(data=[[1.0] * 4, [1.0] * 3]), "input 'input': nested 'data' is ragged")


@pytest.mark.parametrize(
    ("value", "shown"),
    [("1.5", 'a string, not a number ("1.5")'), (None, "null, not a number (null)"),
     (True, "a boolean, not a number (true)"), ({"a": 1}, "an object, not a number")],
)  # fmt: skip
def test_non_numeric_values_are_named(value: Any, shown: str) -> None:
    data: list[Any] = [[0.0] * 4, [0.0, 0.0, value, 0.0]]
    fails(body_of(data=data), f"input 'input': data[1][2] is {shown}")


def test_data_not_a_list() -> None:
    fails(body_of(data="abc"), "input 'input': 'data' must be a list of numbers, got a string")


def test_integers_beyond_64_bits() -> None:
    fails(
        body_of(data=[2**70] + [0] * 7, datatype="INT64"), "data holds integers beyond the 64-bit"
    )


def test_int_datatype_needs_integers_in_range() -> None:
    fails(body_of(data=[0.5] * 8, datatype="INT32"), "datatype INT32 needs integers")
    fails(body_of(data=[300] + [0] * 7, datatype="INT8"), "values outside INT8's range [-128, 127]")
    fails(body_of(data=[-1] + [0] * 7, datatype="UINT8"), "values outside UINT8's range [0, 255]")


def test_nan_and_infinity_literals_are_refused_with_row_numbers() -> None:
    body = (
        b'{"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP64", '
        b'"data": [0, 0, 0, 0, NaN, 0, 0, 0, 0, -Infinity, 0, 0]}]}'
    )
    fails(body, "input 'input': 2 non-finite values (NaN, inf or beyond float32) in rows [1, 2]")


def test_fp64_beyond_float32_is_refused() -> None:
    fails(body_of(data=[1e300] + [0.0] * 7, datatype="FP64"), "non-finite values")


def test_too_many_rows() -> None:
    fails(
        body_of(shape=[8193, 4], data=[]), "input 'input': 8193 rows; the limit is 4096 per request"
    )
    fails(body_of(), "input 'input': 2 rows; the limit is 1 per request", max_rows=1)


def test_zero_rows() -> None:
    fails(body_of(shape=[0, 4], data=[]), "input 'input': 0 rows; send at least one row")


@pytest.mark.parametrize(
    ("value", "shown"), [(-5, "-5"), (0, "0"), ("10", '"10"'), (True, "true"), (1e400, "Infinity")]
)
def test_deadline_must_be_positive(value: Any, shown: str) -> None:
    fails(
        body_of(parameters={"deadline_ms": value}),
        f"parameters.deadline_ms must be a positive number, got {shown}",
    )


def test_unknown_max_tier_lists_the_tiers() -> None:
    fails(
        body_of(parameters={"max_tier": "huge"}),
        'parameters.max_tier "huge" is not a tier of this policy (tiers: tiny, small, large)',
    )


def test_trace_must_be_a_boolean() -> None:
    fails(body_of(parameters={"trace": "yes"}), 'parameters.trace must be true or false, got "yes"')


def test_parameters_must_be_an_object() -> None:
    fails(body_of(parameters=[1]), "'parameters' must be an object, got a list")


def test_unknown_output_lists_the_allowed() -> None:
    fails(
        body_of(outputs=[{"name": "logits"}]),
        "unknown output 'logits' (allowed: probabilities, label, answered_by, degraded)",
    )
    fails(body_of(outputs=["label"]), "outputs[0] must be an object with a string 'name'")
    fails(body_of(outputs="label"), "'outputs' must be a list, got a string")


def test_id_must_be_a_string() -> None:
    fails(body_of(id=7), "'id' must be a string, got int")


# --- responses ---------------------------------------------------------------------------


def decision(confidence: Any = 0.97) -> Decision:
    step = Step(
        tier="tiny", confidence=confidence, threshold=0.9, accepted=True, latency_ms=0.1, cost=0.01
    )
    return Decision(
        steps=(step,), answered_by="tiny", reason="confident", cost=0.01, latency_ms=0.2,
        deadline_ms=None,
    )  # fmt: skip


PROBS = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)


def dumps(body: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(json.dumps(body, allow_nan=False))
    return loaded


def test_response_with_class_names_and_trace_round_trips() -> None:
    decisions = [decision(np.float32(0.97)).to_dict(), decision(float("nan")).to_dict()]
    body = build_infer_response(
        model_name="digits",
        model_version="1",
        request_id="req-1",
        probabilities=PROBS,
        labels=PROBS.argmax(axis=1),
        classes=["cat", "dog"],
        trace=decisions,
        output_names=["probabilities", "label"],
        parameters={"gear": "normal"},
    )
    loaded = dumps(body)
    assert loaded["model_name"] == "digits"
    assert loaded["model_version"] == "1"
    assert loaded["id"] == "req-1"
    probabilities, label = loaded["outputs"]
    assert probabilities["name"] == "probabilities"
    assert probabilities["shape"] == [2, 2]
    assert probabilities["datatype"] == "FP32"
    np.testing.assert_allclose(probabilities["data"], PROBS.ravel())
    assert label == {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["dog", "cat"]}
    # parameters hold scalars only (KServe's models, gRPC): the trace is a JSON string
    assert loaded["parameters"]["gear"] == "normal"
    traced = json.loads(loaded["parameters"]["trace"])
    assert traced[0]["answered_by"] == "tiny"
    assert traced[0]["steps"][0]["confidence"] == pytest.approx(0.97)
    assert traced[1]["steps"][0]["confidence"] is None  # NaN is not JSON


def test_response_subset_without_classes_trace_or_id() -> None:
    body = build_infer_response(
        model_name="digits",
        model_version="1",
        request_id=None,
        probabilities=PROBS,
        labels=np.array([1, 0], dtype=np.int64),
        classes=None,
        output_names=["label"],
    )
    assert dumps(body) == {
        "model_name": "digits",
        "model_version": "1",
        "outputs": [{"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]}],
    }


def test_response_refuses_server_side_mistakes() -> None:
    common: dict[str, Any] = {
        "model_name": "m", "model_version": "1", "request_id": None,
        "output_names": ["probabilities"],
    }  # fmt: skip
    with pytest.raises(ValueError, match="non-finite"):
        build_infer_response(
            probabilities=np.array([[np.nan, 1.0]]), labels=np.array([1]), classes=None, **common
        )
    with pytest.raises(ValueError, match="do not index the 2 classes"):
        build_infer_response(
            probabilities=PROBS,
            labels=np.array([1, 5]),
            classes=["a", "b"],
            **common | {"output_names": ["label"]},
        )
    with pytest.raises(ValueError, match="one value per row"):
        build_infer_response(
            probabilities=PROBS,
            labels=np.array([1, 0]),
            classes=None,
            **common | {"output_names": ["answered_by"], "answered_by": ["tiny"]},
        )


def test_model_metadata() -> None:
    meta = model_metadata(
        name="digits",
        version="1",
        input_name="input",
        width=64,
        n_classes=10,
        classes=None,
        policy_hash="0123456789abcdef",
        extra={"tiers": ["tiny", "large"], "p": np.float32(0.5)},
    )
    assert dumps(meta) == {
        "name": "digits",
        "versions": ["1"],
        "platform": "cascade",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "answered_by", "datatype": "BYTES", "shape": [-1]},
            {"name": "degraded", "datatype": "BOOL", "shape": [-1]},
        ],
        # scalars only: lists as JSON text, no nulls
        "parameters": {"policy_hash": "0123456789abcdef", "tiers": '["tiny", "large"]', "p": 0.5},
    }
    named = model_metadata(
        name="d", version="1", input_name="x", width=2, n_classes=2, classes=["a", "b"],
        policy_hash="h",
    )  # fmt: skip
    assert named["outputs"][1]["datatype"] == "BYTES"
    assert json.loads(named["parameters"]["classes"]) == ["a", "b"]


def test_policy_hash_is_stable_and_sensitive() -> None:
    def make(threshold: float) -> Policy:
        return Policy.model_validate(
            {
                "name": "p",
                "tiers": {"tiny": {"model": "tiny.onnx"}, "large": {"model": "large.onnx"}},
                "routing": {
                    "kind": "confidence",
                    "chain": [{"tier": "tiny", "threshold": threshold}, {"tier": "large"}],
                },
            }
        )

    digest = policy_hash(make(0.9))
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert policy_hash(make(0.9)) == digest
    assert policy_hash(make(0.8)) != digest


def test_error_body() -> None:
    assert error_body("bad") == {"error": "bad"}


# --- binary tensor data extension ---------------------------------------------------------


def binary_body(
    values: np.ndarray, *, datatype: str = "FP32", size: int | None = None
) -> tuple[bytes, int]:
    raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
    tensor = {"name": "input", "shape": list(values.shape), "datatype": datatype,
              "parameters": {"binary_data_size": len(raw) if size is None else size}}  # fmt: skip
    header = json.dumps({"inputs": [tensor], "parameters": {"deadline_ms": 20}}).encode()
    return header + raw, len(header)


def test_binary_data_gives_the_same_rows_as_json() -> None:
    values = np.arange(2 * WIDTH, dtype=np.float32).reshape(2, WIDTH) / 3
    body, header = binary_body(values)
    request = parse(body, header_length=header)
    np.testing.assert_array_equal(request.rows, values)
    assert request.deadline_ms == 20
    json_request = parse(body_of(data=values.ravel().tolist()))
    np.testing.assert_array_equal(request.rows, json_request.rows)
    ints, header = binary_body(
        np.arange(2 * WIDTH, dtype=np.int16).reshape(2, WIDTH), datatype="INT16"
    )
    assert parse(ints, header_length=header).rows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_binary_data_mistakes_are_400s() -> None:
    values = np.ones((2, WIDTH), dtype=np.float32)
    body, header = binary_body(values)
    fails(body[:-4], "shape [2, 4] of FP32 needs 32 bytes; binary_data_size says 32 and 28 "
          "follow the JSON header", header_length=header)  # fmt: skip
    wrong, header = binary_body(values, size=16)
    fails(wrong, "binary_data_size says 16", header_length=header)
    fails(body, "Inference-Header-Content-Length is 9999, but the body has",
          header_length=9999)  # fmt: skip
    fails(body[:header], "needs the binary data after the JSON header")  # no header length
    nan = values.copy()
    nan[1, 2] = np.nan
    body, header = binary_body(nan)
    fails(body, "non-finite values", header_length=header)
    both = json.loads(binary_body(values)[0][:header])
    both["inputs"][0]["data"] = [1.0] * 8
    fails(json.dumps(both).encode(), "give either 'data' or parameters.binary_data_size")


# --- binary outputs, BYTES, compressed bodies -----------------------------------------------


def split_reply(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    length = int(headers["inference-header-content-length"])
    header: dict[str, Any] = json.loads(body[:length])
    return header, body[length:]


def test_binary_outputs_follow_the_json_header_in_order() -> None:
    request = parse(body_of(**{
        "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                    {"name": "probabilities", "parameters": {"binary_data": True}},
                    {"name": "answered_by"}, {"name": "degraded"}],
    }))  # fmt: skip
    assert request.binary_outputs == {"label", "probabilities"}
    document = build_infer_response(
        model_name="m", model_version="1", request_id=None, probabilities=PROBS,
        labels=PROBS.argmax(axis=1), classes=["cat", "dog"],
        output_names=request.output_names, answered_by=["tiny", "large"],
        degraded=[False, True], binary_outputs=request.binary_outputs,
    )  # fmt: skip
    body, headers = encode_response(document)
    assert headers["content-type"] == "application/octet-stream"
    header, raw = split_reply(body, headers)
    label, probabilities, answered_by, degraded = header["outputs"]
    assert "data" not in label and "data" not in probabilities
    names = bytes_elements(["dog", "cat"])  # 4-byte little-endian lengths, then UTF-8
    assert names == struct.pack("<I", 3) + b"dog" + struct.pack("<I", 3) + b"cat"
    assert label["parameters"] == {"binary_data_size": len(names)}
    assert probabilities["parameters"] == {"binary_data_size": PROBS.nbytes}
    assert raw == names + PROBS.astype("<f4").tobytes()
    assert answered_by["data"] == ["tiny", "large"]
    assert degraded == {"name": "degraded", "shape": [2], "datatype": "BOOL",
                        "data": [False, True]}  # fmt: skip


def test_binary_data_output_makes_every_output_binary_unless_one_says_no() -> None:
    everything = parse(body_of(**{"parameters": {"binary_data_output": True}}))
    assert everything.binary_outputs == {"probabilities", "label", "answered_by", "degraded"}
    one_not = parse(body_of(**{
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "label", "parameters": {"binary_data": False}},
                    {"name": "degraded"}],
    }))  # fmt: skip
    assert one_not.binary_outputs == {"degraded"}
    document = build_infer_response(
        model_name="m", model_version="1", request_id=None, probabilities=PROBS,
        labels=np.array([1, 0]), classes=None, output_names=["label", "degraded"],
        degraded=[True, False], binary_outputs={"label", "degraded"},
    )  # fmt: skip
    _, raw = split_reply(*encode_response(document))
    assert raw == np.array([1, 0], "<i8").tobytes() + b"\x01\x00"
    plain, headers = encode_response(build_infer_response(
        model_name="m", model_version="1", request_id=None, probabilities=PROBS,
        labels=np.array([1, 0]), classes=None, output_names=["label"],
    ))  # fmt: skip
    assert headers == {"content-type": "application/json"}
    assert json.loads(plain)["outputs"][0]["data"] == [1, 0]
    fails(body_of(**{"parameters": {"binary_data_output": "yes"}}),
          'parameters.binary_data_output must be true or false, got "yes"')  # fmt: skip
    fails(body_of(**{"outputs": [{"name": "label", "parameters": {"binary_data": 1}}]}),
          "outputs[0].parameters.binary_data must be true or false")  # fmt: skip
    fails(body_of(**{"outputs": [{"name": "label", "parameters": {"classification": 3}}]}),
          "classification is not supported")  # fmt: skip


def text_body(texts: list[str], *, size: int | None = None, cut: int = 0) -> tuple[bytes, int]:
    raw = bytes_elements(texts)[: len(bytes_elements(texts)) - cut]
    tensor = {"name": "text", "shape": [len(texts)], "datatype": "BYTES",
              "parameters": {"binary_data_size": len(raw) if size is None else size}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + raw, len(header)


def parse_text(body: bytes, **kwargs: Any) -> InferRequest:
    return parse_infer_request(body, input_name="text", width=0, tiers=TIERS, text=True, **kwargs)


def test_binary_bytes_inputs_give_the_same_texts_as_json() -> None:
    texts = ["book a flight", "", "naïve café ☕"]
    body, header = text_body(texts)
    assert parse_text(body, header_length=header).rows.tolist() == texts
    as_json = json.dumps({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES",
                                      "data": texts}]}).encode()  # fmt: skip
    assert parse_text(as_json).rows.tolist() == texts


def test_binary_bytes_mistakes_are_400s() -> None:
    def text_fails(body: bytes, header: int, message: str) -> None:
        with pytest.raises(InputError, match=re.escape(message)):
            parse_text(body, header_length=header)

    text_fails(*text_body(["abc", "de"], cut=1), "BYTES element 1 says 2 bytes; 1 remain")
    text_fails(*text_body(["abc", "de"], cut=5), "BYTES element 1 is cut short")
    body, header = text_body(["abc"], size=99)
    text_fails(body, header, "binary_data_size says 99 bytes and 7 follow")
    bad = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                  "parameters": {"binary_data_size": 5}}]}).encode()  # fmt: skip
    text_fails(bad + struct.pack("<I", 1) + b"\xff", len(bad), "BYTES element 0 is not UTF-8")


def test_compressed_bodies_are_decoded_within_the_size_limit() -> None:
    body = body_of()
    assert decode_body(gzip.compress(body), "gzip", 1 << 20) == body
    assert decode_body(zlib.compress(body), "deflate", 1 << 20) == body
    assert decode_body(body, "identity", 1 << 20) == body
    bomb = gzip.compress(b"[" * 100_000)  # about 200 bytes that expand 500-fold
    with pytest.raises(InputError, match="more than 1000 bytes once decompressed"):
        decode_body(bomb, "gzip", 1000)
    with pytest.raises(InputError, match="not valid gzip data"):
        decode_body(b"not gzip at all", "gzip", 1000)
    with pytest.raises(InputError, match="cut short"):
        decode_body(gzip.compress(body)[:-12], "gzip", 1 << 20)
    with pytest.raises(InputError, match="'br' is not supported"):
        decode_body(body, "br", 1000)
