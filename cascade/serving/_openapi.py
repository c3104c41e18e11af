"""The OpenAPI 3.1 document of the HTTP service (served at ``/openapi.json``).

Written out rather than derived from a web framework: the service has none on its request
path. A unit test holds these paths to the routes :class:`InferenceService` dispatches.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

__all__ = ["openapi_document", "secure_document"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what is wrong"}},
}

_TENSOR_IN = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "description": "the model's input name (see metadata)"},
        "shape": {"type": "array", "items": {"type": "integer"}, "description": "[rows, width]"},
        "datatype": {
            "type": "string",
            "enum": [
                "FP16",
                "FP32",
                "FP64",
                "INT8",
                "INT16",
                "INT32",
                "INT64",
                "UINT8",
                "UINT16",
                "UINT32",
                "UINT64",
            ],
        },
        "data": {
            "type": "array",
            "description": "row-major numbers, flat or nested; absent with binary data",
        },
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
    },
}

_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR_IN, "minItems": 1, "maxItems": 1},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": ["probabilities", "label"]}},
            },
        },
        "parameters": {
            "type": "object",
            "properties": {
                "deadline_ms": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "answer within this or get a 503",
                },
                "max_tier": {"type": "string", "description": "most expensive tier allowed"},
                "trace": {"type": "boolean", "description": "per-row decision trace"},
                "profile": {
                    "type": "boolean",
                    "description": "latency profile, as a JSON string in parameters.profile",
                },
                "priority": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "priority class, Triton's convention: 1 highest, 0 default "
                    "(2); lower classes are refused first under overload",
                },
            },
        },
    },
}

_INFER_RESPONSE = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"type": "object"}},
        "parameters": {
            "type": "object",
            "description": "answered_by, degraded and gear per request; decisions with "
            "trace; profile (a JSON string) with parameters.profile",
        },
    },
}


def _header(name: str, description: str, pattern: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string", "pattern": pattern}}  # fmt: skip


_EPOCH = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"
# the deadline a client may send in a header instead of (or besides) parameters.deadline_ms;
# the tightest counts (cascade.serving._deadline)
_DEADLINE_HEADERS = [
    _header("grpc-timeout", "relative budget, gRPC's format: 250m is 250 ms",
            r"^[0-9]{1,8}[HMSmun]$"),
    _header("x-envoy-expected-rq-timeout-ms", "relative budget in ms (Envoy, Istio)",
            r"^[0-9]{1,9}(\.[0-9]{1,6})?$"),
    _header("x-cascade-deadline", "absolute deadline, epoch seconds", _EPOCH),
    _header("x-cascade-sent-at", "when the client sent the request, epoch seconds: relative "
            "budgets count from it", _EPOCH),
]  # fmt: skip


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _name() -> list[dict[str, Any]]:
    return [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]


def openapi_document(models: list[str]) -> dict[str, Any]:
    """The OpenAPI document; ``models`` are listed as the values ``{name}`` takes.

    Example::

        openapi_document(["digits"])["paths"]["/v2/models/{name}/infer"]
    """
    error = {"$ref": "#/components/schemas/Error"}
    bad = _json(error, "the request is malformed; the message says what is wrong")
    unknown = _json(error, "no such model")
    busy = _json(error, "overloaded, a deadline out of reach, or a failed tier; see Retry-After")
    ok = {"type": "object"}
    name_param = _name()
    name_param[0]["schema"] = {"type": "string", "enum": models} if models else {"type": "string"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cascade",
            "description": "Open Inference Protocol v2 over a cascade",
            "version": "2",
        },
        "paths": {
            "/v2": {
                "get": {
                    "summary": "server metadata: name, version, extensions",
                    "responses": {"200": _json(ok, "server metadata")},
                }
            },
            "/v2/health/live": {
                "get": {"summary": "liveness", "responses": {"200": _json(ok, "live")}}
            },
            "/v2/health/ready": {
                "get": {
                    "summary": "readiness: a model is served",
                    "responses": {
                        "200": _json(ok, "ready"),
                        "400": _json(ok, "not ready: no model is served"),
                    },
                }
            },
            "/v2/models/{name}": {
                "get": {
                    "summary": "model metadata: inputs, outputs, policy hash, tiers, load",
                    "parameters": name_param,
                    "responses": {"200": _json(ok, "metadata"), "404": unknown},
                }
            },
            "/v2/models/{name}/ready": {
                "get": {
                    "summary": "model readiness",
                    "parameters": name_param,
                    "responses": {"200": _json(ok, "ready"), "404": unknown},
                }
            },
            "/v2/models/{name}/infer": {
                "post": {
                    "summary": "inference through the cascade",
                    "parameters": name_param + _DEADLINE_HEADERS,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/InferRequest"}
                            },
                            "application/octet-stream": {
                                "description": "binary tensor data extension: "
                                "a JSON header of Inference-Header-Content-Length bytes, "
                                "then the data"
                            },
                        },
                    },
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/InferResponse"}, "answers"),
                        "400": bad,
                        "404": unknown,
                        "503": busy,
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "this document", "responses": {"200": _json(ok, "OpenAPI 3.1")}}
            },
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "InferRequest": _INFER_REQUEST,
                "InferResponse": _INFER_RESPONSE,
            }
        },
    }


def secure_document(document: dict[str, Any], *, open_paths: Collection[str]) -> None:
    """Declare the bearer token in ``document`` (in place): the scheme, every operation's
    ``security`` requirement and its 401, and ``security: []`` on ``open_paths``.

    Example::

        secure_document(document, open_paths={"/v2/health/live", "/v2/health/ready"})
        document["components"]["securitySchemes"]["bearerAuth"]["scheme"]   # 'bearer'
    """
    components = document.setdefault("components", {})
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer <token>; the token the server was given",
        }
    }
    document["security"] = [{"bearerAuth": []}]
    refused = _json({"$ref": "#/components/schemas/Error"},
                    "no token, or not the one (see WWW-Authenticate)")  # fmt: skip
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            if path in open_paths:
                operation["security"] = []
            else:
                operation["security"] = [{"bearerAuth": []}]
                operation.setdefault("responses", {})["401"] = refused
