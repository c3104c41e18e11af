"""The Open Inference Protocol (KServe v2) request and response layer, as pure functions.

Both the Ray ingress and the plain ASGI edge turn HTTP bodies into ``InferRequest``s here
and answers back into v2 response bodies, so both speak exactly the same protocol. Every
client mistake is an ``InputError`` whose message says what is wrong (HTTP 400).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade.backends import InputSpec, validate_batch, validate_texts
from cascade.errors import InputError
from cascade.policy import Policy

__all__ = [
    "CONTENT_ENCODINGS",
    "OUTPUT_NAMES",
    "InferRequest",
    "build_infer_response",
    "bytes_elements",
    "decode_body",
    "encode_response",
    "error_body",
    "model_metadata",
    "output_tensor",
    "parse_infer_request",
    "parse_input",
    "parse_json_object",
    "parse_outputs",
    "policy_hash",
    "scalar_parameters",
    "split_binary",
    "type_name",
]

OUTPUT_NAMES = ("probabilities", "label", "answered_by", "degraded")
"""The outputs a request may ask for, and the ones it gets when it names none: the class
probabilities, the label, and per row the tier that answered and whether the answer is
degraded (below what the policy would have asked: a gear's cap, a deadline, a failed tier)."""

_DATATYPES: dict[str, type[np.generic]] = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
}
_ALLOWED_DATATYPES = ", ".join(_DATATYPES)


@dataclass(frozen=True)
class InferRequest:
    """A parsed, validated v2 inference request.

    Example::

        request = parse_infer_request(body, input_name="input", width=64, tiers=["tiny"])
        request.rows.shape, request.deadline_ms, request.output_names

    ``profile``: the request asked for its latency profile (``parameters.profile: true``).
    ``priority``: ``parameters.priority`` (Triton's: 1 is the highest class, 0 the default).
    ``binary_outputs``: the outputs to send as raw bytes after the JSON header (the binary
    tensor data extension: ``parameters.binary_data_output`` for all of them, or an output's
    own ``parameters.binary_data``).
    """

    id: str | None
    rows: np.ndarray
    deadline_ms: float | None
    max_tier: str | None
    trace: bool
    output_names: list[str]
    profile: bool = False
    priority: int = 0
    binary_outputs: frozenset[str] = frozenset()


def type_name(value: Any) -> str:
    """How an error message names a JSON value's type: ``null``, ``a string``, ``a list``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _leaf_types(data: list[Any]) -> set[type]:
    """The types of the leaves of nested lists (a fast check before the exact scan)."""
    types = {type(item) for item in data}
    if list in types:
        types.discard(list)
        for item in data:
            if type(item) is list:
                types |= _leaf_types(item)
    return types


def _first_non_number(data: Any, path: str = "") -> tuple[str, Any] | None:
    """The first leaf of nested lists that is not a JSON number, with its index path."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            found = _first_non_number(item, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return None if _is_number(data) else (path, data)


def parse_json_object(body: bytes, max_bytes: int) -> dict[str, Any]:
    """A request body as a JSON object, or an ``InputError`` saying why it is not one."""
    if len(body) > max_bytes:
        raise InputError(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        document = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"request body is not UTF-8 text: {exc}") from exc
    except RecursionError:
        # the client's mistake (say, 100,000 nested arrays), not the server's: a 400
        raise InputError("request body is JSON nested too deeply") from None
    if not isinstance(document, dict):
        raise InputError(f"request body must be a JSON object, got {type_name(document)}")
    return document


def _flag(parameters: dict[str, Any], key: str, where: str = "parameters") -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise InputError(f"{where}.{key} must be true or false, got {json.dumps(value)}")
    return value


def _parse_parameters(
    parameters: Any, tiers: Sequence[str]
) -> tuple[float | None, str | None, bool, bool, int]:
    if parameters is None:
        return None, None, False, False, 0
    if not isinstance(parameters, dict):
        raise InputError(f"'parameters' must be an object, got {type_name(parameters)}")
    deadline = parameters.get("deadline_ms")
    if deadline is not None and not (
        _is_number(deadline) and math.isfinite(deadline) and deadline > 0
    ):
        raise InputError(
            f"parameters.deadline_ms must be a positive number, got {json.dumps(deadline)}"
        )
    max_tier = parameters.get("max_tier")
    if max_tier is not None and max_tier not in tiers:
        raise InputError(
            f"parameters.max_tier {json.dumps(max_tier)} is not a tier of this policy "
            f"(tiers: {', '.join(tiers)})"
        )
    trace = _flag(parameters, "trace")
    profile = _flag(parameters, "profile")
    priority = parameters.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InputError(
            "parameters.priority must be a whole number >= 0 (1: highest class, 0: default), "
            f"got {json.dumps(priority)}"
        )
    deadline_ms = None if deadline is None else float(deadline)
    return deadline_ms, max_tier, trace, profile, priority


def parse_outputs(
    outputs: Any, allowed: Sequence[str], *, binary: bool = False
) -> tuple[list[str], frozenset[str]]:
    """The outputs a request names (all of ``allowed`` when it names none), and those to send
    as binary data: ``binary`` (``parameters.binary_data_output``) unless an output's own
    ``parameters.binary_data`` says otherwise."""
    if outputs is None or outputs == []:
        return list(allowed), frozenset(allowed) if binary else frozenset()
    if not isinstance(outputs, list):
        raise InputError(f"'outputs' must be a list, got {type_name(outputs)}")
    names: list[str] = []
    raw: set[str] = set()
    for i, output in enumerate(outputs):
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str):
            raise InputError(f"outputs[{i}] must be an object with a string 'name'")
        if name not in allowed:
            raise InputError(f"unknown output '{name}' (allowed: {', '.join(allowed)})")
        parameters = output.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InputError(f"outputs[{i}].parameters must be an object")
        as_binary = binary
        if parameters and "binary_data" in parameters:
            as_binary = _flag(parameters, "binary_data", f"outputs[{i}].parameters")
        if parameters and "classification" in parameters:
            raise InputError(
                f"outputs[{i}].parameters.classification is not supported: ask for 'label' "
                "and 'probabilities'"
            )
        if name not in names:
            names.append(name)
            if as_binary:
                raw.add(name)
    return names, frozenset(raw)


def parse_input(
    inputs: Any,
    *,
    input_name: str,
    width: int,
    max_rows: int,
    body: bytes,
    binary: bytes | None = None,
    text: bool = False,
) -> np.ndarray:
    """The request's one input (``inputs`` of a v2 body) as validated rows: float32
    ``[n, width]`` (from JSON ``data`` or the binary extension's bytes), or with ``text`` a
    1-D array of texts. Every value is checked here, once per request."""
    if not isinstance(inputs, list) or not inputs:
        got = "none" if inputs is None or inputs == [] else type_name(inputs)
        raise InputError(f"'inputs' must list one input named '{input_name}', got {got}")
    if len(inputs) != 1:
        raise InputError(f"expected exactly one input ('{input_name}'), got {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InputError(f"inputs[0] must be an object, got {type_name(tensor)}")
    name = tensor.get("name")
    if name != input_name:
        if not isinstance(name, str):
            raise InputError(f"inputs[0] needs a string 'name' (expected '{input_name}')")
        raise InputError(f"unknown input '{name}' (expected '{input_name}')")
    where = f"input '{input_name}'"
    binary_size = _binary_size(tensor, where)
    if text:
        return _text_rows(tensor, input_name, max_rows=max_rows, binary=binary, size=binary_size)
    for key in ("shape", "datatype") if binary_size is not None else ("shape", "datatype", "data"):
        if key not in tensor:
            raise InputError(f"{where}: missing '{key}'")

    shape = tensor["shape"]
    expected = f"[batch, {width}]"
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InputError(f"{where}: 'shape' must be a list of integers, got {json.dumps(shape)}")
    if len(shape) != 2 or shape[1] != width or shape[0] < 0:
        raise InputError(f"{where}: shape {json.dumps(shape)} does not match {expected}")
    n_rows = int(shape[0])
    if n_rows == 0:
        raise InputError(f"{where}: 0 rows; send at least one row")
    if n_rows > max_rows:
        raise InputError(f"{where}: {n_rows} rows; the limit is {max_rows} per request")

    datatype = tensor["datatype"]
    if datatype not in _DATATYPES:
        raise InputError(
            f"{where}: datatype {json.dumps(datatype)} is not supported "
            f"(allowed: {_ALLOWED_DATATYPES})"
        )
    if binary_size is not None:
        return _binary_rows(
            binary, binary_size, datatype, shape=(n_rows, width), input_name=input_name
        )
    data = tensor["data"]
    if not isinstance(data, list):
        raise InputError(f"{where}: 'data' must be a list of numbers, got {type_name(data)}")
    return _to_rows(data, datatype, shape=(n_rows, width), input_name=input_name, body=body)


def _text_rows(
    tensor: dict[str, Any],
    input_name: str,
    *,
    max_rows: int,
    binary: bytes | None = None,
    size: int | None = None,
) -> np.ndarray:
    """A ``BYTES`` input of texts, shape ``[n]`` or ``[n, 1]``, as a 1-D object array: from
    JSON ``data`` or, with ``size`` (``binary_data_size``), from the binary extension's
    length-prefixed elements."""
    where = f"input '{input_name}'"
    for key in ("shape", "datatype") if size is not None else ("shape", "datatype", "data"):
        if key not in tensor:
            raise InputError(f"{where}: missing '{key}'")
    if tensor["datatype"] != "BYTES":
        raise InputError(
            f"{where}: this model takes texts: datatype must be BYTES, got "
            f"{json.dumps(tensor['datatype'])}"
        )
    shape = tensor["shape"]
    if not (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and (len(shape) == 1 or shape[1] == 1)
    ):
        raise InputError(f"{where}: shape {json.dumps(shape)} does not match [batch] or [batch, 1]")
    n_rows = shape[0]
    if n_rows < 1:
        raise InputError(f"{where}: 0 rows; send at least one text")
    if n_rows > max_rows:
        raise InputError(f"{where}: {n_rows} rows; the limit is {max_rows} per request")
    if size is not None:
        flat: list[Any] = _binary_texts(binary, size, where)
    else:
        data = tensor["data"]
        if not isinstance(data, list):
            raise InputError(f"{where}: 'data' must be a list of strings, got {type_name(data)}")
        flat = [d[0] if isinstance(d, list) and len(d) == 1 else d for d in data]
    if len(flat) != n_rows:
        raise InputError(
            f"{where}: data has {len(flat)} texts; shape {json.dumps(shape)} needs {n_rows}"
        )
    return validate_texts(flat, InputSpec(name=input_name, width=None, dtype="string"))


def _binary_texts(binary: bytes | None, size: int, where: str) -> list[str]:
    """``BYTES`` elements of the binary extension: each a 4-byte little-endian length, then
    that many bytes (UTF-8 text here)."""
    if binary is None:
        raise InputError(
            f"{where}: parameters.binary_data_size needs the binary data after the JSON "
            "header, and the Inference-Header-Content-Length header saying where it starts"
        )
    if len(binary) != size:
        raise InputError(
            f"{where}: binary_data_size says {size} bytes and {len(binary)} follow the JSON header"
        )
    texts: list[str] = []
    at = 0
    while at < size:
        if at + 4 > size:
            raise InputError(
                f"{where}: BYTES element {len(texts)} is cut short: each element is a 4-byte "
                "little-endian length, then that many bytes"
            )
        (length,) = struct.unpack_from("<I", binary, at)
        at += 4
        if at + length > size:
            raise InputError(
                f"{where}: BYTES element {len(texts)} says {length} bytes; {size - at} remain"
            )
        try:
            texts.append(binary[at : at + length].decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(f"{where}: BYTES element {len(texts)} is not UTF-8: {exc}") from None
        at += length
    return texts


def _binary_size(tensor: dict[str, Any], where: str) -> int | None:
    """``parameters.binary_data_size`` of an input (binary tensor data extension), if any."""
    parameters = tensor.get("parameters")
    if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InputError(
            f"{where}: parameters.binary_data_size must be a byte count, got {json.dumps(size)}"
        )
    if "data" in tensor:
        raise InputError(f"{where}: give either 'data' or parameters.binary_data_size, not both")
    return size


def _binary_rows(
    binary: bytes | None, size: int, datatype: str, *, shape: tuple[int, int], input_name: str
) -> np.ndarray:
    where = f"input '{input_name}'"
    if binary is None:
        raise InputError(
            f"{where}: parameters.binary_data_size needs the binary data after the JSON "
            "header, and the Inference-Header-Content-Length header saying where it starts"
        )
    dtype = np.dtype(_DATATYPES[datatype]).newbyteorder("<")  # the extension is little-endian
    expected = shape[0] * shape[1] * dtype.itemsize
    if size != expected or len(binary) != size:
        raise InputError(
            f"{where}: shape {list(shape)} of {datatype} needs {expected} bytes; "
            f"binary_data_size says {size} and {len(binary)} follow the JSON header"
        )
    array = np.frombuffer(binary, dtype=dtype).reshape(shape)
    return validate_batch(array, InputSpec(name=input_name, width=shape[1]))


def _to_rows(
    data: list[Any], datatype: str, *, shape: tuple[int, int], input_name: str, body: bytes
) -> np.ndarray:
    where = f"input '{input_name}'"
    try:
        array = np.asarray(data)
    except ValueError as exc:  # ragged nested lists
        raise InputError(
            f"{where}: nested 'data' is ragged; rows must all have one length"
        ) from exc
    # numpy folds booleans into numbers when they are mixed; JSON booleans can only be there
    # when the body spells true/false somewhere, so the exact scan runs only then
    suspicious = array.dtype.kind not in "iuf" or b"true" in body or b"false" in body
    if suspicious and not _leaf_types(data) <= {int, float}:
        found = _first_non_number(data)
        if found is not None:
            path, value = found
            raise InputError(
                f"{where}: data{path} is {type_name(value)}, not a number ({json.dumps(value)})"
            )
    if array.dtype.kind not in "iuf":  # all numbers, but integers too large for int64
        raise InputError(f"{where}: data holds integers beyond the 64-bit range")
    expected_size = shape[0] * shape[1]
    if array.size != expected_size:
        raise InputError(
            f"{where}: data has {array.size} values; shape {list(shape)} needs {expected_size}"
        )
    if array.ndim > 1 and array.shape != shape:
        raise InputError(
            f"{where}: nested data has shape {list(array.shape)}; 'shape' says {list(shape)}"
        )
    dtype = np.dtype(_DATATYPES[datatype])
    if dtype.kind in "iu":
        if array.dtype.kind == "f":
            raise InputError(f"{where}: datatype {datatype} needs integers, got fractional data")
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InputError(f"{where}: values outside {datatype}'s range [{info.min}, {info.max}]")
    return validate_batch(array.reshape(shape), InputSpec(name=input_name, width=shape[1]))


CONTENT_ENCODINGS = ("gzip", "deflate", "identity")
"""The ``Content-Encoding``s a request body may come in."""


def decode_body(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """A request body with its ``Content-Encoding`` undone, never larger than ``max_bytes``
    once decoded (a small compressed body may not expand past the limit).

    Example::

        decode_body(gzip.compress(b"{}"), "gzip", 1024)   # b"{}"
    """
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in CONTENT_ENCODINGS:
        raise InputError(
            f"Content-Encoding {encoding!r} is not supported (supported: "
            f"{', '.join(CONTENT_ENCODINGS)})"
        )
    # gzip, or zlib's deflate stream (what HTTP calls deflate); wbits 47 reads both headers
    decoder = zlib.decompressobj(wbits=31 if name == "gzip" else 47)
    try:
        decoded = decoder.decompress(body, max_bytes + 1)
        if len(decoded) <= max_bytes and not decoder.unconsumed_tail:
            decoded += decoder.flush()
    except zlib.error as exc:
        raise InputError(f"request body is not valid {name} data: {exc}") from None
    if len(decoded) > max_bytes or decoder.unconsumed_tail:
        raise InputError(f"request body is more than {max_bytes} bytes once decompressed")
    if not decoder.eof:
        raise InputError(f"request body is cut short: its {name} stream does not end")
    return decoded


def split_binary(
    body: bytes, header_length: int | None, max_bytes: int
) -> tuple[bytes, bytes | None]:
    """The JSON header and the raw tensor bytes of a binary tensor data extension body
    (``header_length``: its ``Inference-Header-Content-Length``); plain JSON: ``(body, None)``."""
    if header_length is None:
        return body, None
    if len(body) > max_bytes:
        raise InputError(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not 0 < header_length <= len(body):
        raise InputError(
            f"Inference-Header-Content-Length is {header_length}, but the body has "
            f"{len(body)} bytes"
        )
    return body[:header_length], body[header_length:]


def parse_infer_request(
    body: bytes,
    *,
    input_name: str,
    width: int,
    tiers: Sequence[str],
    max_rows: int = 4096,
    max_bytes: int = 8 * 2**20,
    header_length: int | None = None,
    text: bool = False,
) -> InferRequest:
    """Parse and validate a v2 ``POST /v2/models/{name}/infer`` body.

    Raises ``InputError`` for every client mistake. ``data`` may be flat (row-major) or
    nested; any real datatype is cast to float32. With ``header_length`` (the request's
    ``Inference-Header-Content-Length``) the body is the binary tensor data extension: that
    many bytes of JSON, then the input's raw little-endian values, announced by its
    ``parameters.binary_data_size``, in place of ``data``. ``tiers`` are the policy's tier names,
    which ``parameters.max_tier`` must be one of. With ``text`` the input is ``BYTES``: texts,
    shape ``[n]`` or ``[n, 1]``, returned as a 1-D object array. ``parameters.profile``
    (``true``/``false``) asks for the request's latency profile in the response;
    ``parameters.priority`` (a whole number, 1 highest, 0 default) is its priority class.

    Example::

        body = b'{"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",'
        body += b' "data": [0.5, 1.5]}], "parameters": {"deadline_ms": 20}}'
        request = parse_infer_request(body, input_name="input", width=2, tiers=["tiny"])
        request.rows        # array([[0.5, 1.5]], dtype=float32)
        request.deadline_ms  # 20.0
    """
    body, binary = split_binary(body, header_length, max_bytes)
    document = parse_json_object(body, max_bytes)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"'id' must be a string, got {type_name(request_id)}")
    deadline_ms, max_tier, trace, profile, priority = _parse_parameters(
        document.get("parameters"), tiers
    )
    parameters = document.get("parameters")
    binary_all = _flag(parameters, "binary_data_output") if parameters is not None else False
    output_names, binary_outputs = parse_outputs(
        document.get("outputs"), OUTPUT_NAMES, binary=binary_all
    )
    rows = parse_input(
        document.get("inputs"),
        input_name=input_name,
        width=width,
        max_rows=max_rows,
        body=body,
        binary=binary,
        text=text,
    )
    return InferRequest(
        id=request_id,
        rows=rows,
        deadline_ms=deadline_ms,
        max_tier=max_tier,
        trace=trace,
        output_names=output_names,
        profile=profile,
        priority=priority,
        binary_outputs=binary_outputs,
    )


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars become Python ones; non-finite floats become null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_RAW = "\u0000raw"  # where a binary output's bytes wait in a response document until encoded


def scalar_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` as the protocol carries them: strings, numbers and booleans. A list or
    an object becomes its JSON text (KServe's models and gRPC's ``InferParameter`` hold
    scalars only); ``None`` and non-finite numbers are left out.

    Example::

        scalar_parameters({"gear": "normal", "tiers": ["tiny", "large"], "x": None})
        # {"gear": "normal", "tiers": '["tiny", "large"]'}
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        value = _jsonable(value)
        if value is None:
            continue
        out[key] = json.dumps(value) if isinstance(value, list | dict) else value
    return out


def bytes_elements(values: Sequence[str | bytes]) -> bytes:
    """``BYTES`` elements as the binary extension sends them: each a 4-byte little-endian
    length, then its bytes (texts in UTF-8)."""
    parts = []
    for value in values:
        raw = value.encode() if isinstance(value, str) else bytes(value)
        parts += [struct.pack("<I", len(raw)), raw]
    return b"".join(parts)


_OUTPUT_DTYPES: dict[str, Any] = {
    **_DATATYPES,
    "BOOL": np.bool_,
}


def output_tensor(name: str, datatype: str, values: Any, *, binary: bool) -> dict[str, Any]:
    """One output of a response document: ``values`` (a numpy array, or a list of strings
    for ``BYTES``) as JSON ``data``, or with ``binary`` as raw bytes that
    :func:`encode_response` puts after the JSON header."""
    if datatype == "BYTES":
        items = [str(v) for v in values]
        shape = [len(items)]
        raw = bytes_elements(items) if binary else b""
        data: Any = items
    else:
        array = np.asarray(values, dtype=_OUTPUT_DTYPES[datatype])
        shape = list(array.shape)
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes() if binary else b""
        data = None if binary else array.ravel().tolist()
    tensor: dict[str, Any] = {"name": name, "shape": shape, "datatype": datatype}
    if binary:
        tensor["parameters"] = {"binary_data_size": len(raw)}
        tensor[_RAW] = raw
    else:
        tensor["data"] = data
    return tensor


def encode_response(document: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """A response document as body bytes and headers: plain JSON, or, when an output is
    binary, the binary tensor data extension (JSON header, then each binary output's bytes
    in order; ``Inference-Header-Content-Length`` says where the header ends).

    Example::

        body, headers = encode_response(build_infer_response(..., binary_outputs={"label"}))
    """
    raws = [o.pop(_RAW) for o in document.get("outputs", ()) if _RAW in o]
    header = json.dumps(document, allow_nan=False).encode()
    if not raws:
        return header, {"content-type": "application/json"}
    return header + b"".join(raws), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def build_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str] | None,
    output_names: Sequence[str],
    answered_by: Sequence[str] | None = None,
    degraded: Sequence[bool] | None = None,
    trace: Sequence[dict[str, Any]] | None = None,
    parameters: dict[str, Any] | None = None,
    binary_outputs: Collection[str] = (),
) -> dict[str, Any]:
    """Build the v2 response document (:func:`encode_response` makes it bytes).

    Labels are class names (``BYTES``) when ``classes`` are given, else indices
    (``INT64``). ``answered_by`` and ``degraded`` (per row) are the outputs of those names;
    ``trace`` (``Decision.to_dict()`` per row, when the request asked for it) rides as a JSON
    string in ``parameters.trace``; ``parameters`` (e.g. the ``gear``) ride as they are, lists
    and objects as JSON text (:func:`scalar_parameters`). Outputs named in ``binary_outputs``
    are sent as raw bytes.

    Example::

        document = build_infer_response(
            model_name="digits", model_version="3f9a0c1d2e4b5a67", request_id=request.id,
            probabilities=result.probabilities, labels=result.labels, classes=None,
            output_names=request.output_names, answered_by=["tiny"], degraded=[False],
        )
    """
    probs = np.asarray(probabilities, dtype=np.float32)
    label_array = np.asarray(labels)
    n = probs.shape[0] if probs.ndim == 2 else -1
    if probs.ndim != 2 or label_array.shape != (n,):
        raise ValueError(
            f"expected probabilities [n, n_classes] and labels [n], got "
            f"{list(probs.shape)} and {list(label_array.shape)}"
        )
    if not np.isfinite(probs).all():
        raise ValueError("probabilities hold non-finite values")
    unknown = [name for name in output_names if name not in OUTPUT_NAMES]
    if unknown:
        raise ValueError(f"unknown outputs {unknown} (allowed: {', '.join(OUTPUT_NAMES)})")
    for name, per_row in (("answered_by", answered_by), ("degraded", degraded)):
        if name in output_names and (per_row is None or len(per_row) != n):
            raise ValueError(f"output '{name}' needs one value per row ({n})")
    outputs = []
    for name in output_names:
        binary = name in binary_outputs
        if name == "probabilities":
            outputs.append(output_tensor(name, "FP32", probs, binary=binary))
        elif name == "label" and classes is not None:
            indices = label_array.astype(np.int64)
            if n and not 0 <= indices.min() <= indices.max() < len(classes):
                raise ValueError(
                    f"labels {indices.tolist()} do not index the {len(classes)} classes"
                )
            names = [str(classes[i]) for i in indices]
            outputs.append(output_tensor(name, "BYTES", names, binary=binary))
        elif name == "label":
            outputs.append(output_tensor(name, "INT64", label_array, binary=binary))
        elif name == "answered_by":
            outputs.append(output_tensor(name, "BYTES", list(answered_by or ()), binary=binary))
        else:
            outputs.append(output_tensor(name, "BOOL", list(degraded or ()), binary=binary))
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = outputs
    values = dict(parameters or {})
    if trace is not None:
        values["trace"] = list(trace)
    if values:
        body["parameters"] = scalar_parameters(values)
    return body


def model_metadata(
    *,
    name: str,
    version: str,
    input_name: str,
    width: int,
    n_classes: int,
    classes: Sequence[str] | None,
    policy_hash: str,
    extra: dict[str, Any] | None = None,
    text: bool = False,
) -> dict[str, Any]:
    """The v2 model metadata body (``GET /v2/models/{name}``); ``text``: a BYTES input.
    Its ``parameters`` are scalars: ``classes`` and any list in ``extra`` as JSON text.

    Example::

        model_metadata(name="digits", version="1", input_name="input", width=64,
                       n_classes=10, classes=None, policy_hash=policy_hash(policy))
    """
    return {
        "name": name,
        "versions": [version],
        "platform": "cascade",
        "inputs": [
            {"name": input_name, "datatype": "BYTES", "shape": [-1]}
            if text
            else {"name": input_name, "datatype": "FP32", "shape": [-1, width]}
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, n_classes]},
            {
                "name": "label",
                "datatype": "BYTES" if classes is not None else "INT64",
                "shape": [-1],
            },
            {"name": "answered_by", "datatype": "BYTES", "shape": [-1]},
            {"name": "degraded", "datatype": "BOOL", "shape": [-1]},
        ],
        "parameters": scalar_parameters(
            {
                "policy_hash": policy_hash,
                "classes": None if classes is None else [str(c) for c in classes],
                **(extra or {}),
            }
        ),
    }


def policy_hash(policy: Policy) -> str:
    """The first 16 hex digits of the sha256 of the policy's canonical JSON.

    Example::

        policy_hash(policy)   # "3f9a0c1d2e4b5a67"
    """
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:16]


def error_body(message: str) -> dict[str, str]:
    """The body of every error response.

    Example::

        error_body("unknown input 'x' (expected 'input')")   # {"error": "..."}
    """
    return {"error": message}
