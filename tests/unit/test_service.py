"""The framework-free HTTP service: routes, errors, reloads, remote tiers, OpenAPI. No Ray."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from openapi_spec_validator import validate

from cascade.backends import FakeModel, InputSpec, OnnxModel
from cascade.catalog import ModelCard
from cascade.errors import BackendError
from cascade.serving import HttpReply, InferenceService, PolicyText
from cascade.zoo import read_dataset


def _policy_text(models: Path, *, threshold: float = 0.9, name: str = "digits") -> str:
    return (
        f"name: {name}\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}}}\n"
        f"  large: {{model: {models / 'large.onnx'}, placement: deployment}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        f"    - {{tier: tiny, threshold: {threshold}}}\n    - {{tier: large}}\n"
    )


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def record(self, model: str, decisions: Any, elapsed_ms: float) -> None:
        self.events.append(("record", model, str(len(decisions))))

    def shed(self, model: str, why: str) -> None:
        self.events.append(("shed", model, why))

    def gear(self, model: str, index: int) -> None:
        self.events.append(("gear", model, str(index)))

    def record_ranking(self, model: str, ranking: Any, elapsed_ms: float) -> None:
        self.events.append(("ranking", model))

    def cache(self, model: str, outcomes: dict[str, int], false_hit_rate: float | None) -> None:
        self.events.append(("cache", model, json.dumps(outcomes, sort_keys=True)))


def _remote(failing: bool = False) -> Any:
    """The `large` tier as a remote backend: a fake that answers class 3, or fails."""

    def factory(spec: InputSpec) -> FakeModel:
        error = BackendError("large is down") if failing else None
        answer = np.eye(10, dtype=np.float32)[[3]]
        return FakeModel(
            lambda rows: np.repeat(answer, len(rows), axis=0),
            width=spec.width,
            name="large",
            fail_with=error,
        )

    return lambda policy: {"large": factory}


@pytest.fixture
def service(digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path) -> InferenceService:
    models, _ = digits_zoo
    path = tmp_path / "digits.yaml"
    path.write_text(_policy_text(models))
    svc = InferenceService(max_rows=8, max_body_bytes=4096, metrics=_Recorder())
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=_remote())
    return svc


def _call(
    svc: InferenceService,
    method: str,
    path: str,
    body: bytes | dict[str, Any] = b"",
    headers: dict[str, str] | None = None,
) -> tuple[HttpReply, Any]:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body

    async def read() -> bytes:
        return raw

    reply = asyncio.run(svc.handle(method, path, headers or {}, read))
    return reply, json.loads(reply.body)


def _output(body: dict[str, Any], name: str) -> Any:
    return next(o for o in body["outputs"] if o["name"] == name)["data"]


def _infer_body(rows: np.ndarray, **parameters: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
              "data": rows.ravel().tolist()}  # fmt: skip
    return {"inputs": [tensor], "parameters": parameters}


def test_bad_rows_are_refused_before_they_can_spoil_a_batch(service: InferenceService) -> None:
    """Rows are validated once, where the request is parsed: a request holding NaN gets its
    400 there, and the request it would have shared a coalesced batch with is answered."""
    rows = read_dataset("digits").test.X[:2].astype(np.float32)
    bad = rows.copy()
    bad[0, 1] = np.nan

    async def both() -> list[HttpReply]:
        async def call(body: dict[str, Any]) -> HttpReply:
            async def read() -> bytes:
                return json.dumps(body).encode()

            return await service.handle("POST", "/v2/models/digits/infer", {}, read)

        return list(await asyncio.gather(call(_infer_body(rows)), call(_infer_body(bad))))

    good, refused = asyncio.run(both())
    assert refused.status == 400
    assert "non-finite" in json.loads(refused.body)["error"]
    assert good.status == 200
    assert json.loads(good.body)["outputs"][0]["shape"] == [2, 10]


def test_health_metadata_and_ready(service: InferenceService) -> None:
    assert _call(service, "GET", "/v2/health/live")[1] == {"live": True}
    assert _call(service, "GET", "/v2/health/ready")[1] == {"ready": True}
    assert _call(service, "GET", "/v2/models/digits/ready")[1] == {"name": "digits", "ready": True}
    reply, meta = _call(service, "GET", "/v2/models/digits/")
    assert reply.status == 200
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    # metadata parameters are scalars (KServe's models, gRPC): lists and objects as JSON text
    assert json.loads(meta["parameters"]["tiers"]) == ["tiny", "large"]
    load = {"gear": "normal", "in_flight": 0, "breakers": {"tiny": "closed", "large": "closed"}}
    assert json.loads(meta["parameters"]["load"]) == load
    assert meta["versions"] == [service.models["digits"].version]
    # the same as plain JSON, with the policy, in the model configuration
    reply, config = _call(service, "GET", "/v2/models/digits/config")
    assert reply.status == 200 and config["load"] == load and config["tiers"] == ["tiny", "large"]
    assert config["max_batch_size"] == 8 and config["policy"]["name"] == "digits"
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]


def test_versioned_routes_answer_for_the_version_served_only(service: InferenceService) -> None:
    version = service.models["digits"].version
    rows = np.asarray(read_dataset("digits").test.X[:1], dtype=np.float32)
    for path in ("", "/ready", "/config"):
        assert _call(service, "GET", f"/v2/models/digits/versions/{version}{path}")[0].status == 200
    reply, body = _call(
        service, "POST", f"/v2/models/digits/versions/{version}/infer", _infer_body(rows)
    )
    assert reply.status == 200 and body["model_version"] == version
    reply, body = _call(service, "POST", "/v2/models/digits/versions/1/infer", _infer_body(rows))
    assert reply.status == 404
    assert body["error"] == (
        f"model 'digits' has no version '1': it serves version '{version}' (its policy's hash; "
        "GET /v2/models/digits lists it)"
    )
    assert _call(service, "GET", "/v2/models/digits/versions/1/ready")[0].status == 404


def test_outputs_binary_and_compressed_bodies(service: InferenceService) -> None:
    rows = np.asarray(read_dataset("digits").test.X[:3], dtype=np.float32)
    _, plain = _call(service, "POST", "/v2/models/digits/infer", _infer_body(rows))
    assert [o["name"] for o in plain["outputs"]] == [
        "probabilities", "label", "answered_by", "degraded"
    ]  # fmt: skip
    assert set(plain["parameters"]) == {"gear"}  # no trace unless asked for
    raw = rows.astype("<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip

    async def read() -> bytes:
        return gzip.compress(header + raw)

    headers = {"inference-header-content-length": str(len(header)), "content-encoding": "gzip"}
    reply = asyncio.run(service.handle("POST", "/v2/models/digits/infer", headers, read))
    assert reply.status == 200 and reply.headers["content-type"] == "application/octet-stream"
    length = int(reply.headers["inference-header-content-length"])
    document = json.loads(reply.body[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in document["outputs"]]
    assert sum(sizes) == len(reply.body) - length
    probabilities = np.frombuffer(reply.body[length : length + sizes[0]], "<f4").reshape(3, 10)
    expected = np.asarray(plain["outputs"][0]["data"], np.float32).reshape(3, 10)
    np.testing.assert_array_equal(probabilities, expected)
    reply, error = _call(
        service, "POST", "/v2/models/digits/infer", b"{}", {"content-encoding": "br"}
    )
    assert reply.status == 415 and "'br' is not supported" in error["error"]
    reply, error = _call(service, "POST", "/v2/models/digits/infer", gzip.compress(b"[" * 9000),
                         {"content-encoding": "gzip"})  # fmt: skip
    assert reply.status == 400 and "once decompressed" in error["error"]


def test_infer_escalates_uncertain_rows_to_the_remote_tier(
    service: InferenceService, digits_zoo: tuple[Path, list[ModelCard]]
) -> None:
    # which rows tiny is unsure of (max probability below the fixture's 0.9), from tiny itself
    test = np.asarray(read_dataset("digits").test.X[:60], dtype=np.float32)
    sure = OnnxModel(digits_zoo[0] / "tiny.onnx").predict_sync(test).max(axis=1) >= 0.9
    unsure_idx, sure_idx = np.flatnonzero(~sure)[:3], np.flatnonzero(sure)[:5]
    assert len(unsure_idx) == 3 and len(sure_idx) == 5, "the first 60 rows lack a mix"
    chosen = np.sort(np.concatenate([unsure_idx, sure_idx]))  # 8: the request limit
    rows, escalates = test[chosen], ~sure[chosen]
    reply, body = _call(service, "POST", "/v2/models/digits/infer", _infer_body(rows, trace=True))
    assert reply.status == 200, body
    expected = ["large" if e else "tiny" for e in escalates]
    assert _output(body, "answered_by") == expected
    labels = _output(body, "label")
    # the fake large tier always says 3
    assert [label for label, e in zip(labels, escalates, strict=True) if e] == ["3"] * 3
    decisions = json.loads(body["parameters"]["trace"])
    assert [(d["answered_by"], d["reason"]) for d in decisions] == [
        ("large", "last_tier") if e else ("tiny", "confident") for e in escalates
    ]
    for d, e in zip(decisions, escalates, strict=True):
        tiers = [(s["tier"], s["accepted"]) for s in d["steps"]]
        assert tiers == ([("tiny", False), ("large", True)] if e else [("tiny", True)])
        assert not d["degraded"]
    assert ("record", "digits", "8") in service.metrics.events  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "match"),
    [
        ("POST", "/v2/models/nope/infer", b"{}", 404, "unknown model 'nope' (models: digits)"),
        ("POST", "/v2/models/digits/infer", b"{not json", 400, "not valid JSON"),
        ("POST", "/v2/models/digits/infer", b"[1]", 400, "must be a JSON object"),
        ("POST", "/v2/models/digits/infer", b"x" * 5000, 400, "the limit is 4096"),
        ("GET", "/v2/models/digits/infer", b"", 405, "allowed: POST"),
        ("GET", "/v3/anything", b"", 404, "no route /v3/anything"),
    ],
)
def test_errors_are_json_with_the_right_status(
    service: InferenceService, method: str, path: str, body: bytes, status: int, match: str
) -> None:
    reply, document = _call(service, method, path, body)
    assert reply.status == status
    assert match in document["error"]


def test_too_many_rows_nan_and_bad_max_tier_are_400(service: InferenceService) -> None:
    rows = np.zeros((9, 64), np.float32)
    assert "the limit is 8" in _call(service, "POST", "/v2/models/digits/infer",
                                     _infer_body(rows))[1]["error"]  # fmt: skip
    rows = np.zeros((1, 64), np.float32)
    rows[0, 3] = np.nan
    reply, document = _call(service, "POST", "/v2/models/digits/infer", _infer_body(rows))
    assert reply.status == 400 and "NaN" in document["error"]
    reply, document = _call(
        service, "POST", "/v2/models/digits/infer", _infer_body(rows[:, :] * 0, max_tier="huge")
    )
    assert reply.status == 400 and "huge" in document["error"]


def test_a_failing_remote_tier_degrades_and_never_500s(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    models, _ = digits_zoo
    path = tmp_path / "digits.yaml"
    path.write_text(_policy_text(models, threshold=1.0))  # every row escalates
    svc = InferenceService()
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=_remote(failing=True))
    rows = np.asarray(read_dataset("digits").test.X[:4], dtype=np.float32)
    reply, body = _call(svc, "POST", "/v2/models/digits/infer", _infer_body(rows))
    assert reply.status == 200
    assert _output(body, "answered_by") == ["tiny"] * 4
    assert _output(body, "degraded") == [True] * 4


def test_an_unreadable_body_is_a_503_not_a_500(service: InferenceService) -> None:
    async def broken() -> bytes:
        raise ConnectionResetError("client went away")

    reply = asyncio.run(service.handle("POST", "/v2/models/digits/infer", {}, broken))
    assert reply.status == 503 and reply.headers["retry-after"] == "1"
    assert ("shed", "digits", "body") in service.metrics.events  # type: ignore[attr-defined]


def test_reload_swaps_thresholds_and_refuses_a_bad_policy(
    service: InferenceService,
    digits_zoo: tuple[Path, list[ModelCard]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    models, _ = digits_zoo
    served = service.models["digits"]
    engine = served.engine
    before = served.version
    path = tmp_path / "digits.yaml"
    path.write_text(_policy_text(models, threshold=0.5))
    service.apply_policies([PolicyText(str(path), path.read_text())], remote=_remote())
    assert service.models["digits"] is served and served.engine is engine  # no rebuild
    assert served.version != before
    with caplog.at_level("INFO", logger="cascade.serving"):
        service.apply_policies(
            [PolicyText(str(path), "name: digits\ntiers: {}\n")], remote=_remote()
        )
    (refused,) = [r.getMessage() for r in caplog.records]
    assert refused.startswith(f"policy refused file={path} (the one serving stays): ")
    assert served.version != before and service.models["digits"] is served
    meta = _call(service, "GET", "/v2/models/digits")[1]
    errors = json.loads(meta["parameters"]["reload_errors"])
    assert errors and "tiers" in errors[0]


def test_openapi_lists_exactly_the_routes_served(service: InferenceService) -> None:
    reply, document = _call(service, "GET", "/openapi.json")
    assert reply.status == 200 and document["info"]["title"] == "cascade"
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert documented == set(service.routes)
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["parameters"][0]["schema"]["enum"] == ["digits"]
    assert set(infer["responses"]) == {"200", "400", "404", "413", "415", "503"}
    validate(document)  # a valid OpenAPI 3.1 document (openapi-spec-validator)


def test_every_body_the_service_answers_matches_the_openapi_schemas(
    service: InferenceService,
) -> None:
    """The documented schemas hold what the server takes and what it answers: bodies it
    accepts validate against InferRequest, its answers against their response schemas."""
    _, document = _call(service, "GET", "/openapi.json")
    schemas = document["components"]["schemas"]

    def check(instance: Any, name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}}
        jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)

    rows = np.asarray(read_dataset("digits").test.X[:2], dtype=np.float32)
    traced = _infer_body(rows, trace=True, profile=True, deadline_ms=5000, priority=1)
    texts = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
    for body in (_infer_body(rows), traced, texts | {"id": None, "outputs": []}):
        check(body, "InferRequest")
    for body in (_infer_body(rows), traced):
        reply, answer = _call(service, "POST", "/v2/models/digits/infer", body)
        assert reply.status == 200
        check(answer, "InferResponse")
    routes = [("/v2", "ServerMetadata"), ("/v2/health/live", "Live"),
              ("/v2/health/ready", "Ready"), ("/v2/models/digits", "ModelMetadata"),
              ("/v2/models/digits/ready", "ModelReady"), ("/v2/models/x", "Error")]  # fmt: skip
    for path, name in routes:
        check(_call(service, "GET", path)[1], name)


def _cached_service(models: Path, folder: Path, *, remote_fails: bool = False) -> InferenceService:
    path = folder / "cached.yaml"
    path.write_text(
        _policy_text(models, threshold=1.0, name="cached")  # every row goes to large
        + "cache: {exact_max_entries: 100, similarity: {threshold: 0.999}}\n"
    )
    svc = InferenceService(metrics=_Recorder())
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=_remote(remote_fails))
    return svc


def _decisions(svc: InferenceService, rows: np.ndarray) -> list[dict[str, Any]]:
    reply, body = _call(svc, "POST", "/v2/models/cached/infer", _infer_body(rows, trace=True))
    assert reply.status == 200, body
    decisions: list[dict[str, Any]] = json.loads(body["parameters"]["trace"])
    return decisions


def test_repeated_rows_come_from_the_exact_cache_and_near_ones_from_the_similar(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    models, _ = digits_zoo
    svc = _cached_service(models, tmp_path)
    rows = np.asarray(read_dataset("digits").test.X[:3], dtype=np.float32)
    first = _decisions(svc, rows)
    assert [d["cache_hit"] for d in first] == [False] * 3
    assert {d["answered_by"] for d in first} == {"large"}
    again = _decisions(svc, rows)
    assert [(d["reason"], d["cache"], d["answered_by"]) for d in again] == [
        ("cache", "exact", "large")
    ] * 3
    near = rows.copy()
    near[:, 0] += 1e-3  # not the same bytes, nearly the same direction
    similar = _decisions(svc, near)
    assert [d["cache"] for d in similar] == ["similar"] * 3
    assert all(d["similarity"] >= 0.999 for d in similar)
    stats = svc.models["cached"].load()["cache"]
    assert (stats["exact_hit"], stats["similar_hit"], stats["miss"]) == (3, 3, 3)
    events = [e for e in svc.metrics.events if e[0] == "cache"]  # type: ignore[attr-defined]
    assert [json.loads(e[2]) for e in events] == [
        {"exact_hit": 0, "miss": 3, "similar_hit": 0},
        {"exact_hit": 3, "miss": 0, "similar_hit": 0},
        {"exact_hit": 0, "miss": 0, "similar_hit": 3},
    ]


def test_a_reload_never_serves_the_old_policys_answers(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    models, _ = digits_zoo
    svc = _cached_service(models, tmp_path)
    rows = np.asarray(read_dataset("digits").test.X[:2], dtype=np.float32)
    _decisions(svc, rows)
    path = tmp_path / "cached.yaml"
    path.write_text(path.read_text().replace("threshold: 1.0", "threshold: 0.99"))
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=_remote())
    assert [d["cache_hit"] for d in _decisions(svc, rows)] == [False, False]


def test_degraded_answers_are_not_cached(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    models, _ = digits_zoo
    svc = _cached_service(models, tmp_path, remote_fails=True)
    rows = np.asarray(read_dataset("digits").test.X[:2], dtype=np.float32)
    assert [d["degraded"] for d in _decisions(svc, rows)] == [True, True]
    assert [d["cache_hit"] for d in _decisions(svc, rows)] == [False, False]


def test_a_deadline_already_passed_on_arrival_is_a_fast_503(service: InferenceService) -> None:
    rows = np.asarray(read_dataset("digits").test.X[:2], dtype=np.float32)
    # an absolute deadline a second ago: it went stale before it reached the service
    stale = {"x-cascade-deadline": str(service.wall_clock() - 1.0)}
    reply, body = _call(service, "POST", "/v2/models/digits/infer", _infer_body(rows), stale)
    assert reply.status == 503 and reply.headers["retry-after"] == "1"
    assert "deadline passed before the request reached the queue" in body["error"]
    assert ("shed", "digits", "admission") in service.metrics.events  # type: ignore[attr-defined]
    # a budget that is left: answered
    fresh = {"grpc-timeout": "30S"}
    reply, body = _call(service, "POST", "/v2/models/digits/infer", _infer_body(rows), fresh)
    assert reply.status == 200, body


@pytest.mark.parametrize(
    ("headers", "parameters", "message"),
    [
        ({"grpc-timeout": "soon"}, {}, "grpc-timeout must be up to 8 digits"),
        ({"x-cascade-deadline": "never"}, {}, "x-cascade-deadline must be epoch seconds"),
        ({}, {"priority": -1}, "parameters.priority must be a whole number >= 0"),
        ({}, {"priority": "high"}, "parameters.priority must be a whole number >= 0"),
        ({}, {"priority": True}, "parameters.priority must be a whole number >= 0"),
    ],
)
def test_a_bad_deadline_header_or_priority_is_a_400(
    service: InferenceService, headers: dict[str, str], parameters: dict[str, Any], message: str
) -> None:
    rows = np.asarray(read_dataset("digits").test.X[:1], dtype=np.float32)
    body = _infer_body(rows, **parameters)
    reply, answer = _call(service, "POST", "/v2/models/digits/infer", body, headers)
    assert reply.status == 400 and message in answer["error"]


def test_a_cascade_without_gears_degrades_by_itself_and_recovers_with_hysteresis(
    digits_zoo: tuple[Path, list[ModelCard]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from cascade.load import StandingDelay
    from cascade.policy import read_policy
    from cascade.serving import ServedModel

    models, _ = digits_zoo
    path = tmp_path / "digits.yaml"
    path.write_text(
        _policy_text(models)
        .replace("  large:", f"  small: {{model: {models / 'small.onnx'}}}\n  large:")
        .replace("    - {tier: large}", "    - {tier: small, threshold: 0.9}\n    - {tier: large}")
        + "gear_hold_s: 2.0\ngear_hysteresis: 0.2\n"
    )  # fmt: skip
    now = [100.0]
    served = ServedModel(read_policy(path), remote=_remote()("digits"), clock=lambda: now[0])
    assert served.automatic
    assert [(g.name, g.above, g.max_tier) for g in served.shifter.gears] == [
        ("normal", 0.0, None), ("auto-small", 0.3, "small"), ("auto-tiny", 0.6, "tiny")
    ]  # fmt: skip
    ahead = [0.0]
    monkeypatch.setattr(served.coalescer, "ahead_ms", lambda rows: (ahead[0], 1.0))

    def gear_after(ahead_ms: float, *, at: float, deadline_ms: float | None = 100.0) -> str:
        ahead[0], now[0] = ahead_ms, at
        served.admit(deadline_ms, rows=1)
        return served.shifter.gear.name

    assert gear_after(10.0, at=100.0) == "normal"
    with caplog.at_level("WARNING", logger="cascade.serving"):
        assert gear_after(35.0, at=100.1) == "auto-small"  # the queue holds 35 % of the budget
    assert [r.getMessage() for r in caplog.records] == [
        "gear shifted model=digits from=normal to=auto-small load=0.35 (automatic)"
    ]
    assert gear_after(70.0, at=100.2) == "auto-tiny"  # 70 %: only the cheapest tier
    assert gear_after(55.0, at=100.3) == "auto-tiny"  # below 0.6 but not by the margin
    assert gear_after(40.0, at=100.4) == "auto-tiny"  # calm since now...
    assert gear_after(40.0, at=102.0) == "auto-tiny"  # ...not for hold_s yet
    assert gear_after(40.0, at=102.5) == "auto-small"  # one step down after 2 s calm
    assert gear_after(0.0, at=103.0) == "auto-small"
    assert gear_after(0.0, at=104.6) == "auto-small"  # calm since 103.0 only
    assert gear_after(0.0, at=105.1) == "normal"
    # a request without a deadline has nothing to threaten: it does not move the gear
    assert gear_after(80.0, at=106.0, deadline_ms=None) == "normal"

    # behind HAProxy's bounded queue (20 ms) a standing delay before our code is the load:
    # the backlog waits there, and ours stays short
    fronted = ServedModel(read_policy(path), remote=_remote()("digits"), clock=lambda: now[0],
                          front_queue_ms=20.0)  # fmt: skip
    monkeypatch.setattr(fronted.coalescer, "ahead_ms", lambda rows: (0.0, 1.0))
    fronted.arrivals = StandingDelay(clock=lambda: now[0])
    now[0] = 200.0
    for t in (200.0, 200.05, 200.11):  # every request of an interval waited >= 8 ms
        now[0] = t
        fronted.admit(100.0, rows=1, delay_ms=8.0 + t - 200.0)
    assert fronted.arrivals.standing_ms == 8.0
    now[0] = 200.12
    fronted.admit(100.0, rows=1, delay_ms=9.0)
    assert fronted.shifter.gear.name == "auto-small"  # 8 / 20 = 0.4 of the queue's bound

    # hand-written gears take precedence: no automatic ones then
    path.write_text(
        path.read_text() + "gears:\n  - {name: busy, queue_depth_at_least: 4, max_tier: small}\n"
    )
    geared = ServedModel(read_policy(path), remote=_remote()("digits"))
    assert not geared.automatic
    assert [g.name for g in geared.shifter.gears] == ["normal", "busy"]
    path.write_text(
        path.read_text().replace(
            "gears:\n  - {name: busy, queue_depth_at_least: 4, max_tier: small}\n",
            "overload: {auto_degrade: false}\n",
        )
    )
    assert not ServedModel(read_policy(path), remote=_remote()("digits")).automatic


def test_an_automatic_gear_caps_the_route_and_flags_answers_degraded(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    from cascade.load import Gear

    models, _ = digits_zoo
    path = tmp_path / "digits.yaml"
    path.write_text(_policy_text(models, threshold=0.999))  # most rows would escalate
    svc = InferenceService(metrics=_Recorder())
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=_remote())
    served = svc.models["digits"]
    rows = np.asarray(read_dataset("digits").test.X[:20], dtype=np.float32)
    engine = served.engine  # type: ignore[union-attr]
    full = asyncio.run(engine.run(rows))
    capped = asyncio.run(engine.run(rows, gear=Gear("auto-tiny", 0.3, "tiny")))
    assert {d.answered_by for d in full.decisions} == {"tiny", "large"}
    assert {d.answered_by for d in capped.decisions} == {"tiny"}
    escalated = [d.answered_by == "large" for d in full.decisions]
    assert [d.degraded for d in capped.decisions] == escalated
    assert {d.gear for d in capped.decisions} == {"auto-tiny"}


def test_json_nested_past_any_depth_is_a_400_not_a_500(service: InferenceService) -> None:
    for depth in (2_000, 1_500):  # the fixture takes bodies up to 4096 bytes
        body = b"[" * depth + b"]" * depth
        reply, answer = _call(service, "POST", "/v2/models/digits/infer", body)
        assert reply.status == 400 and "nested too deeply" in answer["error"]
        inner = b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": '
        reply, answer = _call(service, "POST", "/v2/models/digits/infer",
                              inner + b"[" * depth + b"1" + b"]" * depth + b"}]}")  # fmt: skip
        assert reply.status == 400 and "nested too deeply" in answer["error"]
    rows = np.asarray(read_dataset("digits").test.X[:1], dtype=np.float32)
    reply, _ = _call(service, "POST", "/v2/models/digits/infer", _infer_body(rows))
    assert reply.status == 200  # and it goes on serving


def test_readiness_is_in_the_status_code_as_probes_and_clients_read_it() -> None:
    empty = InferenceService()
    reply, body = _call(empty, "GET", "/v2/health/ready")
    assert (reply.status, body) == (400, {"ready": False})
    reply, body = _call(empty, "GET", "/v2/health/live")
    assert (reply.status, body) == (200, {"live": True})


def test_server_metadata_names_the_server_and_its_extensions(service: InferenceService) -> None:
    from cascade import __version__

    reply, body = _call(service, "GET", "/v2")
    assert reply.status == 200
    assert body == {"name": "cascade", "version": __version__,
                    "extensions": ["binary_tensor_data"]}  # fmt: skip


def test_sheds_are_logged_at_most_once_a_second_per_model_and_cause(
    service: InferenceService, caplog: pytest.LogCaptureFixture
) -> None:
    from cascade.serving._service import _ShedLog

    now = [100.0]
    log = _ShedLog(lambda: now[0], every_s=1.0)
    with caplog.at_level("WARNING", logger="cascade.serving"):
        for _ in range(5):
            log("digits", "admission", "busy")
        log("digits", "queue", "late in the queue")  # another cause: its own line
        now[0] += 1.0
        log("digits", "admission", "still busy")
    assert [r.getMessage() for r in caplog.records] == [
        "shed model=digits why=admission count=1 (since the last line) reason=busy",
        "shed model=digits why=queue count=1 (since the last line) reason=late in the queue",
        "shed model=digits why=admission count=5 (since the last line) reason=still busy",
    ]
    caplog.clear()
    rows = np.asarray(read_dataset("digits").test.X[:1], dtype=np.float32)
    stale = {"x-cascade-deadline": str(service.wall_clock() - 1.0)}
    with caplog.at_level("WARNING", logger="cascade.serving"):
        for _ in range(3):
            assert _call(service, "POST", "/v2/models/digits/infer", _infer_body(rows), stale)[
                0].status == 503  # fmt: skip
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("shed model=digits why=admission count=1 ")
