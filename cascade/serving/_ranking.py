"""Open Inference Protocol bodies of a ranking policy: one query's candidates in, top-k out.

Request: input ``{input_name}`` holds the candidates' feature matrix ``[count, width]``
(JSON or binary, as for classification); an optional input ``ids`` (``BYTES`` or ``INT64``,
``[count]``) names them; ``parameters`` may carry ``k``, ``n`` and ``trace``. Response:
outputs ``indices`` (INT64, positions in the matrix), ``scores`` (FP32, the fine stage's)
and, when ids came, ``ids``; ``parameters`` carry ``relative_cost`` and, with
``parameters.trace: true``, ``trace``: the stages' trace as a JSON string.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cascade.errors import InputError
from cascade.serving._protocol import (
    parse_input,
    parse_json_object,
    scalar_parameters,
    split_binary,
    type_name,
)

__all__ = ["RankRequest", "build_rank_response", "parse_rank_request"]


@dataclass(frozen=True)
class RankRequest:
    """A parsed, validated ranking request."""

    id: str | None
    rows: np.ndarray
    ids: list[Any] | None
    k: int | None
    n: int | None
    trace: bool


def _count(parameters: dict[str, Any], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"parameters.{key} must be a positive integer, got {json.dumps(value)}")
    return value


def _parse_ids(tensor: Any, count: int) -> list[Any]:
    if not isinstance(tensor, dict):
        raise InputError(f"input 'ids' must be an object, got {type_name(tensor)}")
    datatype = tensor.get("datatype")
    if datatype not in ("BYTES", "INT64"):
        raise InputError(
            f"input 'ids': datatype must be BYTES or INT64, got {json.dumps(datatype)}"
        )
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InputError("input 'ids': 'data' must be a list (ids cannot come as binary data)")
    if tensor.get("shape") != [len(data)] or len(data) != count:
        raise InputError(
            f"input 'ids': needs shape [{count}] and {count} values, one per candidate; got "
            f"shape {json.dumps(tensor.get('shape'))} and {len(data)} values"
        )
    wanted = str if datatype == "BYTES" else int
    bad = next((v for v in data if type(v) is not wanted), None)
    if bad is not None:
        raise InputError(f"input 'ids': {datatype} ids must all be {wanted.__name__}s, got {bad!r}")
    return data


def parse_rank_request(
    body: bytes,
    *,
    input_name: str,
    width: int,
    max_rows: int = 4096,
    max_bytes: int = 8 * 2**20,
    header_length: int | None = None,
) -> RankRequest:
    """Parse and validate a ranking ``POST /v2/models/{name}/infer`` body.

    Example::

        body = b'{"inputs": [{"name": "input", "shape": [2, 1], "datatype": "FP32",'
        body += b' "data": [0.5, 1.5]}], "parameters": {"k": 1}}'
        parse_rank_request(body, input_name="input", width=1).k   # 1
    """
    body, binary = split_binary(body, header_length, max_bytes)
    document = parse_json_object(body, max_bytes)
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"'id' must be a string, got {type_name(request_id)}")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InputError(f"'parameters' must be an object, got {type_name(parameters)}")
    trace = parameters.get("trace", False)
    if not isinstance(trace, bool):
        raise InputError(f"parameters.trace must be true or false, got {json.dumps(trace)}")
    if parameters.get("profile", False) is not False:
        raise InputError(
            "parameters.profile: latency profiles cover classification policies; "
            "a ranking policy is not profiled"
        )
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError(f"'inputs' must list the candidates as input '{input_name}'")
    named = {t.get("name") if isinstance(t, dict) else None: t for t in inputs}
    unknown = [name for name in named if name not in (input_name, "ids")]
    if unknown or len(named) != len(inputs):
        raise InputError(
            f"inputs must be '{input_name}' (the candidates' features) and optionally 'ids', "
            f"each once; got {[t.get('name') if isinstance(t, dict) else t for t in inputs]}"
        )
    if input_name not in named:
        raise InputError(f"missing input '{input_name}' (the candidates' features)")
    rows = parse_input(
        [named[input_name]],
        input_name=input_name,
        width=width,
        max_rows=max_rows,
        body=body,
        binary=binary,
    )
    ids = _parse_ids(named["ids"], len(rows)) if "ids" in named else None
    return RankRequest(
        id=request_id,
        rows=rows,
        ids=ids,
        k=_count(parameters, "k"),
        n=_count(parameters, "n"),
        trace=trace,
    )


def build_rank_response(
    *,
    model_name: str,
    model_version: str,
    request: RankRequest,
    indices: np.ndarray,
    scores: np.ndarray,
    relative_cost: float,
    stages: list[dict[str, Any]],
) -> dict[str, Any]:
    """The v2 response body of one ranked query."""
    positions = [int(i) for i in indices]
    outputs: list[dict[str, Any]] = [
        {"name": "indices", "shape": [len(positions)], "datatype": "INT64", "data": positions},
        {
            "name": "scores",
            "shape": [len(positions)],
            "datatype": "FP32",
            "data": [float(s) if math.isfinite(s) else None for s in scores.tolist()],
        },
    ]
    if request.ids is not None:
        datatype = "BYTES" if request.ids and isinstance(request.ids[0], str) else "INT64"
        chosen = [request.ids[i] for i in positions]
        outputs.append(
            {"name": "ids", "shape": [len(chosen)], "datatype": datatype, "data": chosen}
        )
    body: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        body["id"] = request.id
    body["outputs"] = outputs
    parameters: dict[str, Any] = {"relative_cost": round(relative_cost, 6)}
    if request.trace:
        parameters["trace"] = stages
    body["parameters"] = scalar_parameters(parameters)
    return body
