"""HttpModel, a remote v2 endpoint as a tier: the wire format, checks and failure mapping.

The endpoint is an ``httpx.MockTransport`` that parses requests with the server's own
parser and answers with its own response builder; no network.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from cascade.backends import CALL_DEADLINE, FakeModel, InputSpec
from cascade.backends.remote import HttpModel
from cascade.errors import BackendError, ModelTimeout, ModelUnavailable, PolicyError
from cascade.policy import parse_policy
from cascade.routing import Engine
from cascade.serving import (
    build_infer_response,
    encode_response,
    model_metadata,
    parse_infer_request,
)

URL = "http://remote.test/v2/models/large"
CLASSES = ["a", "b", "c"]
SPEC = InputSpec("input", 4)


def _answer(rows: np.ndarray) -> np.ndarray:
    """The remote's model: class ``argmax`` of the first three features, one-hot."""
    return np.eye(3, dtype=np.float32)[np.argmax(rows[:, :3], axis=1)]


class Remote:
    """A v2 endpoint over MockTransport; ``fail`` may replace any answer."""

    def __init__(self, *, classes: list[str] | None = CLASSES, width: int = 4) -> None:
        self.classes = classes
        self.width = width
        self.calls: list[httpx.Request] = []
        self.fail: Callable[[httpx.Request], httpx.Response] | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if self.fail is not None:
            return self.fail(request)
        if request.method == "GET":
            return httpx.Response(200, json=model_metadata(
                name="large", version="1", input_name="input", width=self.width, n_classes=3,
                classes=self.classes, policy_hash="h",
            ))  # fmt: skip
        header = request.headers.get("inference-header-content-length")
        parsed = parse_infer_request(
            request.content, header_length=None if header is None else int(header),
            input_name="input", width=self.width, tiers=["large"],
        )  # fmt: skip
        probabilities = _answer(parsed.rows)
        body, headers = encode_response(build_infer_response(
            model_name="large", model_version="1", request_id=None,
            probabilities=probabilities, labels=probabilities.argmax(axis=1),
            classes=self.classes, output_names=parsed.output_names,
            binary_outputs=parsed.binary_outputs,
        ))  # fmt: skip
        return httpx.Response(200, content=body, headers=headers)

    def model(self, **options: Any) -> HttpModel:
        transport = httpx.MockTransport(self.handler)
        return HttpModel(URL, input_spec=SPEC, classes=CLASSES, transport=transport, **options)


def _rows(n: int = 5) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)


def _predict(model: HttpModel, rows: np.ndarray, *, budget_s: float | None = None) -> np.ndarray:
    async def run() -> np.ndarray:
        token = CALL_DEADLINE.set(None if budget_s is None else time.monotonic() + budget_s)
        try:
            return await model.predict(rows)
        finally:
            CALL_DEADLINE.reset(token)
            await model.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("binary", [True, False])
def test_answers_match_the_remote_and_metadata_is_read_once(binary: bool) -> None:
    remote = Remote()
    model = remote.model(binary=binary)
    rows = _rows()

    async def three() -> list[np.ndarray]:
        try:
            return [await model.predict(rows) for _ in range(3)]
        finally:
            await model.aclose()

    for probabilities in asyncio.run(three()):
        np.testing.assert_array_equal(probabilities, _answer(rows))
    assert [r.method for r in remote.calls] == ["GET", "POST", "POST", "POST"]
    infer = remote.calls[1]
    sent = json.loads(infer.content[: int(infer.headers["inference-header-content-length"])]
                      if binary else infer.content)  # fmt: skip
    # binary rows ask for binary probabilities back (the remote parses either)
    assert sent["outputs"] == [{"name": "probabilities", "parameters": {"binary_data": binary}}]
    assert sent["parameters"] == {"trace": False}
    assert ("binary_data_size" in sent["inputs"][0]["parameters"]) if binary else (
        sent["inputs"][0]["data"] == rows.ravel().tolist()
    )  # fmt: skip


def test_texts_travel_as_bytes() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"inputs": [{"name": "text", "shape": [-1]}],
                                             "parameters": {"classes": ["x", "y"]}})  # fmt: skip
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"outputs": [
            {"name": "probabilities", "shape": [2, 2], "datatype": "FP32", "data": [1, 0, 0, 1]}
        ]})  # fmt: skip

    model = HttpModel("http://r.test/v2/models/t", input_spec=InputSpec("text", None, "string"),
                      classes=["x", "y"], transport=httpx.MockTransport(handler))  # fmt: skip
    out = _predict(model, np.array(["hi", "there"], dtype=object))
    assert out.tolist() == [[1, 0], [0, 1]]
    assert seen[0]["inputs"][0] == {"name": "text", "shape": [2], "datatype": "BYTES",
                                    "data": ["hi", "there"]}  # fmt: skip


def test_a_remote_with_other_classes_or_width_is_refused_clearly() -> None:
    with pytest.raises(BackendError, match=r"classes \['x', 'y', 'z'\] differ from the local"):
        _predict(Remote(classes=["x", "y", "z"]).model(), _rows())
    with pytest.raises(BackendError, match="takes 5 features per row; the local tiers take 4"):
        _predict(Remote(width=5).model(), _rows())


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        (httpx.Response(500, json={"error": "boom"}), BackendError, 'HTTP 500: {"error":"boom"}'),
        (httpx.Response(503, json={"error": "busy"}), ModelUnavailable, "HTTP 503"),
        (httpx.Response(200, content=b'{"outputs": [{"na'), BackendError, "malformed JSON"),
        (httpx.Response(200, json=[1, 2]), BackendError, "not a JSON object"),
        (httpx.Response(200, json={"outputs": []}), BackendError, "no 'probabilities' output"),
        (httpx.Response(200, json={"outputs": [{"name": "probabilities", "shape": [5, 2],
                                                "data": [0.5] * 10}]}),
         BackendError, r"expected probabilities of shape \[5, 3\], got \[5, 2\]"),
        (httpx.Response(200, json={"outputs": [{"name": "probabilities", "shape": [5, 3],
                                                "data": [0.5] * 7}]}),
         BackendError, "malformed 'probabilities'"),
    ],
)  # fmt: skip
def test_bad_answers_are_backend_errors(
    response: httpx.Response, error: type[Exception], message: str
) -> None:
    remote = Remote()
    model = remote.model()
    remote.fail = lambda request: response if request.method == "POST" else remote_meta()
    with pytest.raises(error, match=message):
        _predict(model, _rows())


def remote_meta() -> httpx.Response:
    return httpx.Response(200, json=model_metadata(
        name="large", version="1", input_name="input", width=4, n_classes=3, classes=CLASSES,
        policy_hash="h",
    ))  # fmt: skip


def test_a_refused_connection_is_retried_once_when_the_budget_allows() -> None:
    remote = Remote()
    refusals = [True]

    def flaky(request: httpx.Request) -> httpx.Response:
        if refusals and request.method == "POST":
            refusals.pop()
            raise httpx.ConnectError("connection refused", request=request)
        remote.fail = None
        answer = remote.handler(request)
        remote.fail = flaky
        return answer

    remote.fail = flaky
    model = remote.model()
    np.testing.assert_array_equal(_predict(model, _rows(), budget_s=5.0), _answer(_rows()))
    assert model.retried == 1


def test_no_retry_without_budget_nor_after_the_request_was_sent() -> None:
    remote = Remote()
    model = remote.model(min_retry_ms=10_000)  # more than any budget given below

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    remote.fail = refused
    with pytest.raises(ModelUnavailable, match="cannot connect: connection refused"):
        _predict(model, _rows(), budget_s=1.0)
    assert len(remote.calls) == 1 and model.retried == 0

    remote, model = Remote(), Remote().model()
    sent: list[str] = []

    def reset(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        if request.method == "POST":  # it reached the server: trying again is not ours to do
            raise httpx.ReadError("connection reset by peer", request=request)
        return remote_meta()

    model = HttpModel(URL, input_spec=SPEC, classes=CLASSES, transport=httpx.MockTransport(reset))
    with pytest.raises(ModelUnavailable, match="ReadError: connection reset by peer"):
        _predict(model, _rows(), budget_s=5.0)
    assert sent == ["GET", "POST"] and model.retried == 0


def test_the_network_timeout_is_what_is_left_of_the_call_budget() -> None:
    remote = Remote()
    model = remote.model(timeout_s=30.0)
    _predict(model, _rows(), budget_s=0.5)
    timeouts = [r.extensions["timeout"]["read"] for r in remote.calls]
    assert all(0 < t <= 0.5 for t in timeouts), timeouts

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    remote.fail = slow
    with pytest.raises(ModelTimeout, match="no answer within") as caught:
        _predict(remote.model(), _rows(), budget_s=0.5)
    assert isinstance(caught.value, TimeoutError)  # the engine tells deadline from slowness
    with pytest.raises(ModelTimeout, match="no time left"):
        _predict(Remote().model(), _rows(), budget_s=-1.0)


def test_urls_are_checked() -> None:
    for bad in ("ftp://x/v2/models/a", "http:///v2/models/a", "http://x/models/a", "http://x/"):
        with pytest.raises(ValueError, match=r"expected http\(s\)://HOST"):
            HttpModel(bad, input_spec=SPEC)


POLICY = """\
name: split
allow_outside_paths: true
tiers:
  tiny: {model: tiny.onnx, cost: 0.01}
  large:
    model: http://remote.test/v2/models/large
    cost: 1.0
    timeout_ms: 200
    breaker: {failure_threshold: 2, reset_after_s: 30}
routing:
  kind: confidence
  chain:
    - {tier: tiny, threshold: 0.99}
    - {tier: large}
"""


def test_in_the_engine_failures_degrade_to_the_local_answer_and_open_the_breaker() -> None:
    policy = parse_policy(POLICY, check_files=False).policy
    remote = Remote()
    large = remote.model()
    tiny = FakeModel(lambda rows: np.full((len(rows), 3), 1 / 3, np.float32), width=4)
    engine = Engine(policy, {"tiny": tiny, "large": large}, costs={"tiny": 0.01, "large": 1.0},
                    latency_ms={"tiny": 0.1, "large": 10.0})  # fmt: skip
    rows = _rows(3)

    async def scenario() -> list[Any]:
        results = [await engine.run(rows)]  # healthy: large answers
        remote.fail = lambda request: httpx.Response(500, json={"error": "down"})
        results += [await engine.run(rows) for _ in range(3)]
        await large.aclose()
        return results

    healthy, *failing = asyncio.run(scenario())
    assert {d.answered_by for d in healthy.decisions} == {"large"}
    timeouts = [r.extensions["timeout"]["read"] for r in remote.calls]
    assert all(t <= 0.2 for t in timeouts)  # the tier's timeout_ms reached the socket
    for result in failing:
        for d in result.decisions:
            assert (d.answered_by, d.reason, d.degraded) == ("tiny", "fallback", True)
    assert "HTTP 500" in (failing[0].decisions[0].steps[-1].error or "")
    assert "circuit" in (failing[2].decisions[0].steps[-1].error or "").lower()
    breaker = engine.breaker("large")
    assert breaker is not None and breaker.state == "open"
    posts = [r for r in remote.calls if r.method == "POST"]
    assert len(posts) == 3  # 1 healthy + 2 failures; the open breaker spared the third


def test_serving_needs_a_cost_for_a_remote_tier_and_evaluation_refuses_it(tmp_path: Any) -> None:
    from cascade.catalog import resolve_tiers
    from cascade.policy import read_policy

    (tmp_path / "tiny.onnx").write_bytes(b"")
    path = tmp_path / "p.yaml"
    path.write_text(POLICY.replace("    cost: 1.0\n", ""))
    loaded = read_policy(path, check_files=False)
    with pytest.raises(PolicyError, match=r"tiers\.large\.cost: a remote tier .* needs `cost:`"):
        resolve_tiers(loaded, remote=True)
    with pytest.raises(PolicyError, match="cannot be evaluated offline"):
        resolve_tiers(loaded)
    path.write_text(POLICY)
    tiers = resolve_tiers(read_policy(path, check_files=False), remote=True)
    assert (tiers["large"].cost, tiers["large"].latency_ms, tiers["large"].card) == (1.0, 10, None)


def test_the_token_goes_on_every_request_and_a_refusal_is_never_retried() -> None:
    remote = Remote()
    model = remote.model(token="tok-123")
    _predict(model, _rows())
    assert [r.headers["authorization"] for r in remote.calls] == ["Bearer tok-123"] * 2
    remote.calls.clear()
    refused = httpx.Response(401, json={"error": "the bearer token is not valid"})
    remote.fail = lambda request: refused
    with pytest.raises(BackendError, match="HTTP 401: the endpoint refused the token") as caught:
        _predict(remote.model(token="tok-123"), _rows())
    assert not isinstance(caught.value, ModelUnavailable)  # not a busy remote: no retry
    assert "tok-123" not in str(caught.value) and len(remote.calls) == 1
    with pytest.raises(BackendError, match="HTTP 401: the endpoint asks for a bearer token"):
        _predict(remote.model(), _rows())
    assert "authorization" not in remote.calls[-1].headers


def test_a_ca_bundle_that_cannot_be_read_is_refused_at_once(tmp_path: Any) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(ValueError, match=f"ca_bundle {path}: not a readable PEM file"):
            HttpModel(URL.replace("http:", "https:"), input_spec=SPEC, ca_bundle=path)


def test_remote_tier_credentials_are_checked_in_the_policy(tmp_path: Any) -> None:
    def tier(extra: str, url: str = "https://c.test/v2/models/large") -> str:
        return (
            "name: p\ntiers:\n  tiny: {model: tiny.onnx}\n"
            f"  large: {{model: {url}, cost: 1.0{extra}}}\n"
            "routing:\n  kind: confidence\n  chain:\n"
            "    - {tier: tiny, threshold: 0.9}\n    - {tier: large}\n"
        )

    def problem(text: str) -> str:
        with pytest.raises(PolicyError) as caught:
            parse_policy(text, source="p.yaml", base_dir=tmp_path, check_files=False)
        return str(caught.value)

    ok = parse_policy(tier(", token_env: CASCADE_TOKEN_LARGE, ca_bundle: ca.pem"),
                      source="p.yaml", base_dir=tmp_path, check_files=False)  # fmt: skip
    assert ok.tier_file("large", "ca_bundle") == tmp_path.resolve() / "ca.pem"
    assert "token_env: must be a match of ^CASCADE_" in problem(tier(", token_env: AWS_SECRET"))
    assert "exclude each other" in problem(tier(", token_env: CASCADE_T, token_file: t"))
    assert "the URL must be https://" in problem(
        tier(", ca_bundle: ca.pem", url="http://c.test/v2/models/large")
    )
    leaves = parse_policy(tier(", token_file: /etc/token"), source="p.yaml", base_dir=tmp_path,
                          check_files=False)  # fmt: skip
    with pytest.raises(PolicyError, match=r"tiers\.large\.token_file: path leaves the policy"):
        leaves.tier_file("large", "token_file")
