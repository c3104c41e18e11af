"""The HTTP contract, one suite for both runtimes: Ray Serve and the edge (no Ray).

The same policies are served by a real local Ray Serve and by `cascade serve --runtime edge`
(a subprocess, as a user runs it) on 127.0.0.1; every test below runs against each. Among
the policies, `split` has its large tier as an endpoint URL pointing back at the same
server's `digits`: split inference through `HttpModel` under both runtimes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cli_server import CliServer

from cascade.edge.testing import free_port
from cascade.evaluate import Evaluator
from cascade.policy import load_policy
from cascade.zoo import load_dataset

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "policies" / "digits.yaml"
COVERTYPE = ROOT / "policies" / "covertype.yaml"
LTR = ROOT / "policies" / "ltr.yaml"
CLINC150 = ROOT / "policies" / "clinc150.yaml"
DIGIT_MODELS = ROOT / "policies" / "models" / "digits"


def _remote_ltr(directory: Path) -> Path:
    """The LTR ranking policy with its fine scorer as a Serve deployment (one hop)."""
    models = ROOT / "policies" / "models" / "ltr"
    path = directory / "ltr-remote.yaml"
    path.write_text(
        "name: ltr-remote\nallow_outside_paths: true\ntiers:\n"
        f"  coarse: {{model: {models / 'coarse.onnx'}}}\n"
        f"  fine: {{model: {models / 'fine.onnx'}, placement: deployment, "
        "batching: {max_batch_size: 1024, max_wait_ms: 2}}\n"
        "stages:\n  - {name: coarse, tier: coarse, keep: 8, max_keep: 20}\n"
        "  - {name: fine, tier: fine, keep: 5, max_keep: 10}\n"
    )
    return path


def _resilient_policy(directory: Path, *, name: str = "resilient", extra: str = "") -> Path:
    """digits, tiny inline and large as a deployment, with a quick breaker on large."""
    path = directory / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {DIGIT_MODELS / 'tiny.onnx'}}}\n"
        f"  large: {{model: {DIGIT_MODELS / 'large.onnx'}, placement: deployment, "
        "timeout_ms: 2000,\n          breaker: {failure_threshold: 3, reset_after_s: 1}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        "    - {tier: tiny, threshold: 0.99}\n    - {tier: large}\n" + extra
    )
    return path


def _split_policy(directory: Path, remote_url: str) -> Path:
    """digits' tiny here, its large tier a remote v2 endpoint (split inference)."""
    path = directory / "split.yaml"
    path.write_text(
        "name: split\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {DIGIT_MODELS / 'tiny.onnx'}}}\n"
        f"  large: {{model: {remote_url}, cost: 1.0, timeout_ms: 5000}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        "    - {tier: tiny, threshold: 0.99}\n    - {tier: large}\n"
    )
    return path


def _body(rows: np.ndarray, **parameters: object) -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ],
        "parameters": parameters,
    }


@dataclass
class Server:
    """One runtime serving the contract's policies."""

    runtime: str
    url: str
    metrics: Callable[[list[str]], str]  # the Prometheus text, once it has these names


GEARS = "gears:\n  - {name: swamped, queue_depth_at_least: 4, max_tier: tiny}\n"


def _policies(directory: Path, port: int) -> list[str]:
    from cascade.evaluate import ensure_models

    for policy in (DIGITS, LTR):  # the policies below borrow their model files
        ensure_models(load_policy(policy), progress=False)
    geared = _resilient_policy(directory, name="geared", extra=GEARS)
    split = _split_policy(directory, f"http://127.0.0.1:{port}/v2/models/digits")
    return [str(p) for p in (DIGITS, COVERTYPE, LTR, CLINC150, _remote_ltr(directory), geared,
                             split)]  # fmt: skip


def _ray(served: list[str], port: int) -> Iterator[Server]:
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from deployments.app import build_app

    metrics_port = free_port()
    # 4 logical CPUs (2 real): the tier deployments' 0.5-CPU replicas fit
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=metrics_port)  # fmt: skip

    def metrics(names: list[str]) -> str:
        deadline = time.monotonic() + 60  # Ray's metrics agent reports every few seconds
        text = ""
        while time.monotonic() < deadline:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            if all(name in text for name in names):
                break
            time.sleep(2)
        return text

    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"policies": served}), name="cascade", route_prefix="/")
        yield Server("ray", f"http://127.0.0.1:{port}", metrics)
    finally:
        serve.shutdown()
        ray.shutdown()


def _edge(served: list[str], port: int) -> Iterator[Server]:
    pytest.importorskip("uvicorn")
    cli = Path(sys.executable).with_name("cascade")
    server = CliServer(
        [str(cli), "serve", "--runtime", "edge", *served, "--port", str(port), "--no-progress"],
        cwd=ROOT,
        ready_timeout_s=180,
        stop_timeout_s=60,
    )
    url = f"http://127.0.0.1:{port}"
    with server:
        yield Server("edge", url, lambda names: httpx.get(f"{url}/metrics", timeout=10).text)
    output = server.output
    assert server.returncode == 0, output
    assert "edge runtime, no Ray" in output and output.rstrip().endswith("stopped")


@pytest.fixture(scope="module", params=["ray", "edge"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    port = free_port()
    served = _policies(tmp_path_factory.mktemp("contract"), port)
    start = _ray if request.param == "ray" else _edge
    yield from start(served, port)


@pytest.fixture
def base_url(server: Server) -> str:
    return server.url


def test_health_and_metadata(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2/models/digits/ready").json()["ready"] is True
        meta = client.get("/v2/models/digits").json()
        assert meta["name"] == "digits"
        assert meta["inputs"][0]["shape"] == [-1, 64]
        assert meta["parameters"]["classes"] == [str(i) for i in range(10)]
        missing = client.get("/v2/models/nope")
        assert missing.status_code == 404
        assert missing.json() == {
            "error": "unknown model 'nope' (models: clinc150, covertype, digits, geared, ltr, "
            "ltr-remote, split)"
        }
        assert client.get("/openapi.json").json()["info"]["title"] == "cascade"


@pytest.mark.parametrize(("policy", "n_rows"), [(DIGITS, 40), (COVERTYPE, 200)])
def test_infer_matches_the_offline_engine(base_url: str, policy: Path, n_rows: int) -> None:
    offline = Evaluator(load_policy(policy))
    name = offline.loaded.policy.name
    rows = load_dataset(name).test.X[:n_rows]
    expected = offline.run(offline.loaded.policy, rows)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        response = client.post(f"/v2/models/{name}/infer", json=_body(rows))
        classes = client.get(f"/v2/models/{name}").json()["parameters"]["classes"]
    assert response.status_code == 200, response.text
    body = response.json()
    outputs = {o["name"]: o for o in body["outputs"]}
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(n_rows, -1)
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-6)
    assert outputs["label"]["data"] == [classes[i] for i in expected.labels]
    decisions = body["parameters"]["decisions"]
    assert [d["answered_by"] for d in decisions] == [d.answered_by for d in expected.decisions]
    assert "large" in {d["answered_by"] for d in decisions}  # some rows escalated over the hop


def test_split_inference_reaches_the_remote_tier(base_url: str) -> None:
    rows = load_dataset("digits").test.X[:40]
    with httpx.Client(base_url=base_url, timeout=30) as client:
        split = client.post("/v2/models/split/infer", json=_body(rows))
        direct = client.post("/v2/models/digits/infer", json=_body(rows))
    assert split.status_code == 200, split.text
    decisions = split.json()["parameters"]["decisions"]
    remote = [i for i, d in enumerate(decisions) if d["answered_by"] == "large"]
    assert remote, "threshold 0.99: some rows must escalate to the remote tier"
    assert not any(d["degraded"] or d["steps"][-1]["error"] for d in decisions)
    # a row the remote answered carries the remote's (digits') probabilities
    mine = np.asarray(split.json()["outputs"][0]["data"]).reshape(40, -1)[remote]
    theirs = np.asarray(direct.json()["outputs"][0]["data"]).reshape(40, -1)[remote]
    np.testing.assert_allclose(mine, theirs, atol=1e-6)


def test_max_tier_keeps_rows_off_the_large_tier(base_url: str) -> None:
    rows = load_dataset("digits").test.X[:40]
    with httpx.Client(base_url=base_url, timeout=30) as client:
        capped = client.post("/v2/models/digits/infer", json=_body(rows, max_tier="tiny"))
        assert capped.status_code == 200, capped.text
        decisions = capped.json()["parameters"]["decisions"]
        assert {d["answered_by"] for d in decisions} == {"tiny"}
        assert "max_tier" in {d["reason"] for d in decisions}  # some rows would have escalated
        unknown = client.post("/v2/models/digits/infer", json=_body(rows, max_tier="huge"))
    assert unknown.status_code == 400
    assert 'parameters.max_tier "huge" is not a tier of this policy' in unknown.json()["error"]


def test_concurrent_requests_are_all_answered(base_url: str) -> None:
    rows = load_dataset("digits").test.X[:64]

    async def fire() -> list[int]:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post("/v2/models/digits/infer", json=_body(rows[i : i + 1]))
                  for i in range(64))
            )  # fmt: skip
        return [r.status_code for r in responses]

    assert asyncio.run(fire()) == [200] * 64


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "request body is not valid JSON: Expecting property name"),
        (b'{"inputs": []}', "inputs"),
        (None, "does not match [batch, 64]"),
        ("nan", "non-finite"),
    ],
)
def test_bad_requests_get_400_and_the_service_keeps_serving(
    base_url: str, payload: object, message: str
) -> None:
    good = _body(load_dataset("digits").test.X[:2])
    with httpx.Client(base_url=base_url, timeout=30) as client:
        if payload is None:
            response = client.post("/v2/models/digits/infer", json=_body(np.zeros((2, 63))))
        elif payload == "nan":
            rows = np.zeros((2, 64))
            rows[1, 3] = np.nan
            response = client.post(
                "/v2/models/digits/infer",
                content=str(_body(rows)).replace("'", '"').replace("nan", "NaN"),
            )
        else:
            assert isinstance(payload, bytes)
            response = client.post("/v2/models/digits/infer", content=payload)
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]
        assert client.post("/v2/models/digits/infer", json=good).status_code == 200


def test_an_oversized_body_is_refused_and_serving_goes_on(server: Server) -> None:
    limit = 8 * 2**20
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post("/v2/models/digits/infer", content=b" " * (limit + 1))
        # the edge refuses it from Content-Length, unread (413); Serve reads it, then 400
        assert response.status_code == (413 if server.runtime == "edge" else 400)
        assert (
            f"request body is {limit + 1} bytes; the limit is {limit}" in response.json()["error"]
        )
        good = _body(load_dataset("digits").test.X[:2])
        assert client.post("/v2/models/digits/infer", json=good).status_code == 200


def test_metrics_are_exported(server: Server) -> None:
    rows = load_dataset("digits").test.X[:5]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/v2/models/digits/infer", json=_body(rows)).status_code == 200
    names = ["cascade_requests_total", "cascade_answers_total", "cascade_request_latency_ms"]
    text = server.metrics(names)
    for name in names:
        assert name in text, f"{name} not exported"
    assert 'tier="tiny"' in text


def test_deadlines_are_never_answered_late_and_gears_engage_under_load(base_url: str) -> None:
    url = "/v2/models/geared/infer"
    rows = load_dataset("digits").test.X[:30]
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for deadline in (0.001, 0.5, 5.0, 60_000.0):
            response = client.post(url, json=_body(rows, deadline_ms=deadline))
            if response.status_code == 200:  # an answer in time, or none at all
                decisions = response.json()["parameters"]["decisions"]
                assert all(d["latency_ms"] <= deadline for d in decisions)
            else:
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "1"
                assert "deadline_ms=" in response.json()["error"]
        impossible = client.post(url, json=_body(rows, deadline_ms=0.001))
        assert impossible.status_code == 503
        assert "cannot answer within deadline_ms=0.001" in impossible.json()["error"]

    async def burst() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            replies = await asyncio.gather(
                *(client.post(url, json=_body(rows[i % 30 : i % 30 + 1])) for i in range(60))
            )
        return [d for r in replies for d in r.json()["parameters"]["decisions"]]

    decisions = asyncio.run(burst())
    swamped = [d for d in decisions if d["gear"] == "swamped"]
    assert swamped, "60 requests at once never reached a queue depth of 4"
    assert all(d["answered_by"] == "tiny" for d in swamped)
    # what tiny was sure of is a full answer; what the gear kept from large is degraded
    for d in swamped:
        assert (d["reason"], d["degraded"]) in {("confident", False), ("max_tier", True)}


def test_binary_tensor_data_gets_the_same_answer_as_json(base_url: str) -> None:
    rows = np.asarray(load_dataset("digits").test.X[:8], dtype=np.float32)
    raw = rows.astype("<f4").tobytes()
    tensor = {"name": "input", "shape": [8, 64], "datatype": "FP32",
              "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()
    with httpx.Client(base_url=base_url, timeout=30) as client:
        binary = client.post(
            "/v2/models/digits/infer",
            content=header + raw,
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        plain = client.post("/v2/models/digits/infer", json=_body(rows))
        bad = client.post(
            "/v2/models/digits/infer",
            content=header + raw[:-4],
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
    assert binary.status_code == 200, binary.text
    assert binary.json()["outputs"] == plain.json()["outputs"]
    assert bad.status_code == 400 and "needs 2048 bytes" in bad.json()["error"]


def _rank_body(rows: np.ndarray, ids: list[str] | None = None, **parameters: object) -> bytes:
    inputs: list[dict[str, object]] = [
        {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
         "data": rows.ravel().tolist()}
    ]  # fmt: skip
    if ids is not None:
        inputs.append({"name": "ids", "shape": [len(ids)], "datatype": "BYTES", "data": ids})
    return json.dumps({"inputs": inputs, "parameters": parameters}).encode()


@pytest.mark.parametrize("model", ["ltr", "ltr-remote"])
def test_ranking_answers_match_the_offline_cascade(base_url: str, model: str) -> None:
    from cascade.evaluate._ranking import ranking_models
    from cascade.ranking import cascade_rank, ltr_queries

    loaded = load_policy(LTR)
    models = ranking_models(loaded)
    n, k = (12, 10) if model == "ltr" else (8, 5)
    queries = ltr_queries("test")[:6]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(
                client.post(f"{base_url}/v2/models/{model}/infer",
                            content=_rank_body(q.features, [f"d{i}" for i in q.ids]))
                for q in queries
            ))  # fmt: skip

    for query, response in zip(queries, asyncio.run(fire()), strict=True):
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        expected = cascade_rank(
            None, float("-inf"), models.coarse.score(query.features),
            models.fine.score(query.features), n=n, k=k,
        )  # fmt: skip
        assert outputs["indices"]["data"] == expected.tolist()
        assert outputs["ids"]["data"] == [f"d{query.ids[i]}" for i in expected]
        scores = outputs["scores"]["data"]
        assert scores == sorted(scores, reverse=True) and len(scores) == min(k, len(query.ids))
        stages = response.json()["parameters"]["stages"]
        assert [(s["stage"], s["in"]) for s in stages] == [
            ("coarse", len(query.ids)), ("fine", min(n, len(query.ids)))
        ]  # fmt: skip


def test_ranking_metadata_and_bad_requests(base_url: str) -> None:
    url = f"{base_url}/v2/models/ltr/infer"
    meta = httpx.get(f"{base_url}/v2/models/ltr", timeout=10).json()
    assert meta["parameters"]["routing"] == "ranking"
    assert [s["name"] for s in meta["parameters"]["stages"]] == ["coarse", "fine"]
    rows = np.zeros((4, 300), np.float32)
    cases = [
        (_rank_body(rows, k=51), "k=51 is outside this policy's limits [1, 50]"),
        (_rank_body(rows, k=20, n=15), "n=15 must be >= k=20"),
        (_rank_body(np.zeros((0, 300), np.float32)), "0 rows"),
        (_rank_body(rows[:, :10]), "does not match [batch, 300]"),
        (_rank_body(rows, ids=["a"]), "one per candidate"),
        (json.dumps({"inputs": [{"name": "input", "shape": [2, 300], "datatype": "FP32",
                                 "data": [[0.0] * 300, [0.0] * 299]}]}).encode(), "ragged"),
        (b'{"inputs": [{"name": "input", "shape": [1, 300], "datatype": "FP32", "data": ['
         + b"NaN, " * 299 + b"1]}]}", "NaN"),
    ]  # fmt: skip
    for body, message in cases:
        response = httpx.post(url, content=body, timeout=10)
        assert response.status_code == 400, (message, response.text)
        assert message in response.json()["error"]
    good = httpx.post(url, content=_rank_body(rows, k=3, trace=False), timeout=10)
    assert good.status_code == 200
    assert len(good.json()["outputs"][0]["data"]) == 3
    assert set(good.json()["parameters"]) == {"relative_cost"}


def test_texts_are_served_as_bytes_through_tiny_and_minilm(base_url: str) -> None:
    offline = Evaluator(load_policy(CLINC150))
    data = load_dataset("clinc150")
    texts = [str(t) for t in data.test.X[:40]]
    expected = offline.run(offline.loaded.policy, np.asarray(data.test.X[:40]))
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                        "data": texts}], "parameters": {"trace": False}}  # fmt: skip
    with httpx.Client(base_url=base_url, timeout=60) as client:
        meta = client.get("/v2/models/clinc150").json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        response = client.post("/v2/models/clinc150/infer", json=body)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        labels = [data.classes.index(label) for label in outputs["label"]["data"]]
        assert labels == expected.labels.tolist()
        answered = response.json()["parameters"]["answered_by"]
        assert answered == [d.answered_by for d in expected.decisions]
        assert "large" in answered and "tiny" in answered  # both tiers, over the hop
        for bad, message in [
            ({"name": "text", "shape": [2], "datatype": "BYTES", "data": ["ok", 3]},
             "row 1 is int, not a text"),
            ({"name": "text", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64},
             "datatype must be BYTES"),
            ({"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x" * 10_001]},
             "the limit is 10000"),
        ]:  # fmt: skip
            reply = client.post("/v2/models/clinc150/infer", json={"inputs": [bad]})
            assert reply.status_code == 400 and message in reply.json()["error"], reply.text
