"""The OpenAPI 3.1 document of the HTTP service (served at ``/openapi.json``).

The bodies' schemas are generated from the pydantic models below, which state the protocol
as this server speaks it: what it accepts (no narrower, so a client generated from the
document can send all that the server takes: unknown keys are allowed, as the server ignores
them) and what it answers. Requests are parsed by the hand-written parser of
:mod:`cascade.serving._protocol` (numbers go straight into numpy there, never through a
model per value); the unit tests hold the two to each other, and the conformance suite
fuzzes the server against this document (schemathesis). The paths are held to the routes
:class:`InferenceService` dispatches by a unit test.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

__all__ = ["ShadowRequest", "openapi_document", "secure_document"]

Datatype = Literal[
    "BOOL", "FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64",
    "UINT8", "UINT16", "UINT32", "UINT64", "BYTES",
]  # fmt: skip
Scalar = str | int | float | bool


class _Open(BaseModel):
    """Unknown keys are allowed, as the server ignores them."""

    model_config = ConfigDict(extra="allow")


class TensorParameters(_Open):
    binary_data_size: int | None = Field(
        None, ge=0, description="bytes of this input after the JSON header (binary extension)"
    )


class RequestInput(_Open):
    """One input tensor: ``data`` row-major (flat or nested), or ``binary_data_size`` bytes
    after the JSON header. Texts: ``BYTES``, shape ``[n]`` or ``[n, 1]``."""

    name: str = Field(description="the model's input name (see its metadata)")
    shape: list[int] = Field(description="[rows, width], or [rows] for texts")
    datatype: Datatype
    data: list[Any] | None = Field(None, description="absent with binary data")
    parameters: TensorParameters | None = None


class OutputParameters(_Open):
    binary_data: bool | None = Field(None, description="send this output as binary data")


class RequestedOutput(_Open):
    name: str = Field(
        description="probabilities, label, answered_by or degraded (ranking: all outputs always)"
    )
    parameters: OutputParameters | None = None


class InferParameters(_Open):
    deadline_ms: float | None = Field(
        None, gt=0, description="answer within this many ms or get a 503 (headers work too)"
    )
    max_tier: str | None = Field(None, description="the most expensive tier allowed")
    trace: bool = Field(False, description="the per-row decision trace, as a JSON string "
                        "in the response's parameters.trace")  # fmt: skip
    profile: bool = Field(False, description="the latency profile, as a JSON string in the "
                          "response's parameters.profile")  # fmt: skip
    priority: int = Field(0, ge=0, description="priority class, Triton's convention: 1 "
                          "highest, 0 default (2); lower classes are refused first under "
                          "overload")  # fmt: skip
    binary_data_output: bool = Field(False, description="every output as binary data")
    k: int | None = Field(None, ge=1, description="ranking: how many to return")
    n: int | None = Field(None, ge=1, description="ranking: how many the coarse stage keeps")


class InferRequest(_Open):
    id: str | None = None
    inputs: list[RequestInput] = Field(
        min_length=1, max_length=2, description="one input ('ids' beside it for ranking)"
    )
    outputs: list[RequestedOutput] | None = None
    parameters: InferParameters | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    data: list[Any] | None = Field(None, description="absent when sent as binary data")
    parameters: dict[str, Scalar] | None = Field(
        None, description="binary_data_size: its bytes after the JSON header"
    )


class InferResponse(BaseModel):
    model_name: str
    model_version: str = Field(description="the policy's hash")
    id: str | None = None
    outputs: list[ResponseOutput]
    parameters: dict[str, Scalar] | None = Field(
        None,
        description="gear; trace and profile (JSON strings) when asked for; ranking: relative_cost",
    )


class FeedbackRequest(_Open):
    """True labels for an earlier request's rows, by its id (Seldon Core's feedback)."""

    id: str = Field(description="the id of the inference request these rows belong to")
    labels: list[Annotated[int, Field(ge=0)] | str | None] = Field(
        min_length=1,
        description="one per row of that request: a class index, a class name, or null",
    )


class FeedbackResponse(BaseModel):
    id: str
    labels: int = Field(description="labels written to the answer log")
    matched: bool = Field(
        description="whether this replica logged that request lately (its row count was "
        "checked); false: logged by another replica, long ago, or not sampled"
    )


class MetadataTensor(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]
    optional: bool | None = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the version served: its policy's hash")
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Scalar] = Field(
        description="policy_hash, routing; lists and objects (classes, tiers, load, "
        "reload_errors) as JSON text: GET .../config has them as JSON"
    )


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class Error(BaseModel):
    error: str = Field(description="what is wrong")


class ShadowRequest(BaseModel):
    """A candidate policy to run beside the serving one (``PUT .../shadow``); the server
    parses the body with this model itself."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(
        min_length=1,
        description="the candidate policy file's text (YAML): same name, tiers among the "
        "serving policy's with the same model files; relative paths from the serving "
        "policy's folder",
    )
    sample_rate: float = Field(0.1, gt=0, le=1, description="share of requests shadowed")
    max_queued: int = Field(
        64, ge=1, le=100_000, description="sampled requests waiting; more are dropped"
    )


class TopAgreement(BaseModel):
    rows: int = Field(description="rows the other policy answered with the top tier")
    agreement: float | None = Field(description="share of them this policy answered the same")
    of: str


class Percentiles(BaseModel):
    p50: float | None
    p99: float | None


class ShadowSide(BaseModel):
    relative_cost: float | None = Field(description="cost per row over the top tier's")
    escalation_rate: float | None = Field(description="share of rows past their entry tier")
    top_agreement: TopAgreement
    latency_ms: Percentiles = Field(description="engine time per row")


class CandidatePolicy(BaseModel):
    version: str = Field(description="the candidate's policy hash")
    file: str | None = Field(description="its file (a shadow: section's), or none (HTTP)")
    origin: Literal["policy", "http"]
    text: str = Field(description="its policy text (YAML)")


class ShadowReport(BaseModel):
    model: str
    serving_version: str
    candidate_policy: CandidatePolicy
    sample_rate: float
    since: str = Field(description="when the comparison started, ISO 8601")
    top_tier: str
    rows: int = Field(description="rows both policies answered")
    requests: int
    agreement: float | None = Field(description="share of rows answered the same")
    serving: ShadowSide
    candidate: ShadowSide
    dropped: int = Field(description="sampled rows dropped: the queue was full")
    skipped: int = Field(description="sampled rows skipped: a gear, or shedding lately")
    failed: int = Field(description="sampled rows the candidate failed on")
    last_error: str | None
    queued: int
    note: str | None = None


class Promoted(BaseModel):
    model: str
    previous_version: str
    version: str = Field(description="the policy hash served now")
    file: str = Field(description="the file a restart reads for this model")
    policy: str = Field(description="the policy text now served: copy it into file")
    restart: str


_MODELS: list[type[BaseModel]] = [
    InferRequest, InferResponse, ModelMetadata, ServerMetadata, Live, Ready, ModelReady, Error,
    FeedbackRequest, FeedbackResponse,
    ShadowRequest, ShadowReport, Promoted,
]  # fmt: skip
_REQUESTS = (InferRequest, FeedbackRequest, ShadowRequest)


def _schemas() -> dict[str, Any]:
    """Every model's JSON schema, refs pointing into ``components.schemas``."""
    _, document = models_json_schema(
        [(m, "validation" if m in _REQUESTS else "serialization") for m in _MODELS],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = document["$defs"]
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _header(name: str, description: str, pattern: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string", "pattern": pattern}}  # fmt: skip


_BINARY = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
_EPOCH = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"
# the deadline a client may send in a header instead of (or besides) parameters.deadline_ms;
# the tightest counts (cascade.serving._deadline)
_INFER_HEADERS = [
    _header("grpc-timeout", "relative budget, gRPC's format: 250m is 250 ms",
            r"^[0-9]{1,8}[HMSmun]$"),
    _header("x-envoy-expected-rq-timeout-ms", "relative budget in ms (Envoy, Istio)",
            r"^[0-9]{1,9}(\.[0-9]{1,6})?$"),
    _header("x-cascade-deadline", "absolute deadline, epoch seconds", _EPOCH),
    _header("x-cascade-sent-at", "when the client sent the request, epoch seconds: relative "
            "budgets count from it", _EPOCH),
    _header("inference-header-content-length", "binary tensor data extension: the bytes of "
            "JSON before the binary data", r"^[0-9]{1,12}$"),
    _header("content-encoding", "gzip or deflate: the body is compressed",
            r"^(gzip|deflate|identity)$"),
]  # fmt: skip


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_parameter(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def openapi_document(models: list[str], versions: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI document; ``models`` are listed as the values ``{name}`` takes, and
    ``versions`` (their policies' hashes) as those ``{version}`` takes.

    Example::

        openapi_document(["digits"])["paths"]["/v2/models/{name}/infer"]
    """
    bad = _json(_ref("Error"), "the request is malformed; the message says what is wrong")
    unknown = _json(_ref("Error"), "no such model, or not at that version")
    busy = _json(_ref("Error"), "overloaded, a deadline out of reach, or a failed tier; "
                 "see Retry-After")  # fmt: skip
    name = _path_parameter(
        "name", {"type": "string", "enum": models} if models else {"type": "string"}
    )
    version = _path_parameter(
        "version", {"type": "string", "enum": versions} if versions else {"type": "string"}
    )
    answers = {
        "description": "the answer: JSON, or with binary outputs the binary extension "
        "(Inference-Header-Content-Length bytes of JSON, then the outputs' bytes)",
        "content": {"application/json": {"schema": _ref("InferResponse")},
                    "application/octet-stream": _BINARY},
    }  # fmt: skip
    refused = {
        "400": bad,
        "404": unknown,
        "413": _json(_ref("Error"), "the body is larger than the limit"),
        "415": _json(_ref("Error"), "a Content-Encoding the server cannot read"),
        "503": busy,
    }
    infer = {
        "summary": "inference through the cascade",
        "requestBody": {
            "required": True,
            # octet-stream: the binary tensor data extension, a JSON header of
            # Inference-Header-Content-Length bytes, then the inputs' bytes
            "content": {
                "application/json": {"schema": _ref("InferRequest")},
                "application/octet-stream": _BINARY,
            },
        },
        "responses": {"200": answers, **refused},
    }
    model_operations: dict[str, dict[str, Any]] = {
        "": {"get": {"summary": "model metadata: inputs, outputs, policy hash",
                     "responses": {"200": _json(_ref("ModelMetadata"), "metadata"),
                                   "404": unknown}}},
        "/ready": {"get": {"summary": "model readiness",
                           "responses": {"200": _json(_ref("ModelReady"), "ready"),
                                         "404": unknown}}},
        "/config": {"get": {"summary": "the model's configuration: the policy, tiers, classes, "
                            "load, reload errors, and Triton's fields",
                            "responses": {"200": _json({"type": "object"}, "configuration"),
                                          "404": unknown}}},
        "/infer": {"post": infer},
        "/feedback": {"post": {
            "summary": "true labels for an earlier request's rows, into the answer log",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref("FeedbackRequest")}}},
            "responses": {
                "200": _json(_ref("FeedbackResponse"), "written to the answer log"),
                "400": bad, "404": unknown,
                "409": _json(_ref("Error"), "the model keeps no answer log (no `log` section)"),
                "413": _json(_ref("Error"), "the body is larger than the limit"),
                "503": busy,
            },
        }},
    }  # fmt: skip
    paths: dict[str, Any] = {
        "/v2": {"get": {"summary": "server metadata: name, version, extensions",
                        "responses": {"200": _json(_ref("ServerMetadata"), "server metadata")}}},
        "/v2/health/live": {"get": {"summary": "liveness",
                                    "responses": {"200": _json(_ref("Live"), "live")}}},
        "/v2/health/ready": {"get": {"summary": "readiness: a model is served",
                                     "responses": {"200": _json(_ref("Ready"), "ready"),
                                                   "400": _json(_ref("Ready"), "not ready: no "
                                                                "model is served")}}},
        "/v2/models": {"get": {"summary": "the models served: name, version (the policy's hash) "
                               "and kind (classification or ranking)",
                               "responses": {"200": _json({"type": "object"}, "models")}}},
    }  # fmt: skip
    for prefix, parameters in (
        ("/v2/models/{name}", [name]),
        ("/v2/models/{name}/versions/{version}", [name, version]),
    ):
        for suffix, operations in model_operations.items():
            paths[prefix + suffix] = {
                method: operation
                | {"parameters": parameters + (_INFER_HEADERS if suffix == "/infer" else [])}
                for method, operation in operations.items()
            }
    none = _json(_ref("Error"), "no such model, or it has no shadow policy")
    report = _json(_ref("ShadowReport"), "the side-by-side report")
    paths["/v2/models/{name}/shadow"] = {
        "put": {
            "summary": "run a candidate policy beside the serving one on a sample of requests",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("ShadowRequest")}}},
            "responses": {"200": report, "400": _json(_ref("Error"), "the candidate is "
                          "invalid or does not fit the serving policy's tiers"),
                          "404": unknown},
        },
        "get": {"summary": "the shadow policy's side-by-side report",
                "responses": {"200": report, "404": none}},
        "delete": {"summary": "stop the shadow policy (its report up to now)",
                   "responses": {"200": report, "404": none}},
    }  # fmt: skip
    paths["/v2/models/{name}/shadow/promote"] = {
        "post": {
            "summary": "make the candidate the serving policy (a hot reload)",
            "responses": {"200": _json(_ref("Promoted"), "promoted"), "404": none,
                          "409": _json(_ref("Error"), "not applied: the candidate was "
                                       "refused, or the runtime promotes by `cascade "
                                       "promote` (Ray Serve)")},
        }
    }  # fmt: skip
    for operations in (
        paths["/v2/models/{name}/shadow"],
        paths["/v2/models/{name}/shadow/promote"],
    ):
        for operation in operations.values():
            operation["parameters"] = [name]
    paths["/openapi.json"] = {
        "get": {"summary": "this document", "responses": {"200": _json({"type": "object"},
                                                                       "OpenAPI 3.1")}}
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cascade",
            "description": "Open Inference Protocol v2 over a cascade",
            "version": "2",
        },
        "paths": paths,
        "components": {"schemas": _schemas()},
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
