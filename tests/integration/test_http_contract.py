"""The HTTP contract, one suite for both runtimes: Ray Serve and the edge (no Ray).

The same policies are served by a real local Ray Serve and by `cascade serve --runtime edge`
(a subprocess, as a user runs it) on 127.0.0.1; every test below runs against each. Among
the policies, `split` has its large tier as an endpoint URL pointing back at the same
server's `digits`: split inference through `HttpModel` under both runtimes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
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
from grpc_contract import (  # noqa: F401  (the gRPC contract, run against these servers)
    test_an_unmodified_tritonclient_grpc_talks_to_it,
    test_grpc_errors_carry_the_services_message,
    test_grpc_health_and_metadata,
    test_grpc_infer_answers_what_http_answers,
)

from cascade.backends import OnnxModel
from cascade.edge.testing import free_port
from cascade.evaluate import Evaluator
from cascade.policy import read_policy
from cascade.zoo import read_dataset

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
    """digits' tiny here, its large tier a remote v2 endpoint (split inference); every
    request is sampled for the phase metric."""
    path = directory / "split.yaml"
    path.write_text(
        "name: split\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {DIGIT_MODELS / 'tiny.onnx'}}}\n"
        f"  large: {{model: {remote_url}, cost: 1.0, timeout_ms: 5000}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        "    - {tier: tiny, threshold: 0.99}\n    - {tier: large}\n"
        "profile: {sample_rate: 1.0}\n"
    )
    return path


TINY_MS, LARGE_MS = 0.0001, 30_000.0


def _timed_policy(directory: Path) -> Path:
    """digits with the engine's initial latency estimates fixed by the policy: tiny 0.1 µs
    (below any real call: it only rises once tiny has run), large 30 s (above any real call,
    and kept until large first runs)."""
    path = directory / "timed.yaml"
    path.write_text(
        "name: timed\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {DIGIT_MODELS / 'tiny.onnx'}, latency_ms: {TINY_MS}}}\n"
        f"  large: {{model: {DIGIT_MODELS / 'large.onnx'}, latency_ms: {LARGE_MS}, "
        f"timeout_ms: {LARGE_MS}}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        "    - {tier: tiny, threshold: 0.99}\n    - {tier: large}\n"
    )
    return path


CACHE = "cache: {exact_max_entries: 1000, similarity: {threshold: 0.999, audit_rate: 1.0}}\n"


def _cached_policy(directory: Path) -> Path:
    """digits with both answer caches; every similarity hit is audited."""
    path = directory / "cached.yaml"
    path.write_text(
        "name: cached\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {DIGIT_MODELS / 'tiny.onnx'}}}\n"
        f"  large: {{model: {DIGIT_MODELS / 'large.onnx'}, timeout_ms: 30000}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        "    - {tier: tiny, threshold: 0.99}\n    - {tier: large}\n" + CACHE
    )
    return path


def _trace(response: httpx.Response) -> list[dict[str, Any]]:
    """The decision trace of a traced answer (a JSON string: parameters are scalars)."""
    trace: list[dict[str, Any]] = json.loads(response.json()["parameters"]["trace"])
    return trace


def _output(response: httpx.Response, name: str) -> Any:
    return next(o for o in response.json()["outputs"] if o["name"] == name)["data"]


def _body(rows: np.ndarray, **parameters: object) -> dict[str, object]:
    """A JSON request for ``rows``; traced unless ``parameters`` say otherwise."""
    parameters.setdefault("trace", True)
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
    grpc: str = ""  # host:port of its gRPC service (grpc_contract.py)


GEARS = "gears:\n  - {name: swamped, queue_depth_at_least: 4, max_tier: tiny}\n"


def _policies(directory: Path, port: int) -> list[str]:
    from cascade.evaluate import ensure_models

    # as `cascade serve` does before it starts a host (hosts never build models); the
    # policies written below borrow the digits and LTR files
    for policy in (DIGITS, COVERTYPE, LTR, CLINC150):
        ensure_models(read_policy(policy), progress=False)
    geared = _resilient_policy(directory, name="geared", extra=GEARS)
    split = _split_policy(directory, f"http://127.0.0.1:{port}/v2/models/digits")
    written = [_remote_ltr(directory), geared, split, _timed_policy(directory),
               _cached_policy(directory)]  # fmt: skip
    return [str(p) for p in (DIGITS, COVERTYPE, LTR, CLINC150, *written)]


def _listener(port: int) -> str:
    """The name of the process that listens on ``port``."""
    import psutil

    pids = {c.pid for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}  # fmt: skip
    return ",".join(sorted(psutil.Process(pid).name() for pid in pids))


def _ray(served: list[str], port: int) -> Iterator[Server]:
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from cascade.cli.serve import grpc_options, ray_environment
    from deployments.app import build_app

    metrics_port = free_port()
    # the request path `cascade serve` runs by default (HAProxy, throughput-optimized): the
    # Ray processes read it from the environment they start with; later modules' Ray gets
    # the environment back as it was
    saved = dict(os.environ)
    assert ray_environment(None) == "haproxy"
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
        grpc_port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port},
                    grpc_options=grpc_options(grpc_port))  # fmt: skip
        serve.run(build_app({"policies": served}), name="cascade", route_prefix="/")
        assert _listener(port) == "haproxy"  # not Serve's Python proxy
        yield Server("ray", f"http://127.0.0.1:{port}", metrics, f"127.0.0.1:{grpc_port}")
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def _edge(served: list[str], port: int) -> Iterator[Server]:
    pytest.importorskip("uvicorn")
    cli = Path(sys.executable).with_name("cascade")
    grpc_port = free_port()
    server = CliServer(
        [str(cli), "serve", "--runtime", "edge", *served, "--port", str(port), "--no-progress",
         "--grpc-port", str(grpc_port)],
        cwd=ROOT,
        ready_timeout_s=180,
        stop_timeout_s=60,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with server:
        yield Server("edge", url, lambda names: httpx.get(f"{url}/metrics", timeout=10).text,
                     f"127.0.0.1:{grpc_port}")  # fmt: skip
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
        assert json.loads(meta["parameters"]["classes"]) == [str(i) for i in range(10)]
        missing = client.get("/v2/models/nope")
        assert missing.status_code == 404
        assert missing.json() == {
            "error": "unknown model 'nope' (models: cached, clinc150, covertype, digits, geared, "
            "ltr, ltr-remote, split, timed)"
        }
        assert client.get("/openapi.json").json()["info"]["title"] == "cascade"


@pytest.mark.parametrize(("policy", "n_rows"), [(DIGITS, 40), (COVERTYPE, 200)])
def test_infer_matches_the_offline_engine(base_url: str, policy: Path, n_rows: int) -> None:
    offline = Evaluator(read_policy(policy))
    name = offline.loaded.policy.name
    rows = read_dataset(name).test.X[:n_rows]
    expected = offline.replay(offline.loaded.policy, rows)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        response = client.post(f"/v2/models/{name}/infer", json=_body(rows))
        classes = json.loads(client.get(f"/v2/models/{name}").json()["parameters"]["classes"])
    assert response.status_code == 200, response.text
    body = response.json()
    outputs = {o["name"]: o for o in body["outputs"]}
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(n_rows, -1)
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-6)
    assert outputs["label"]["data"] == [classes[i] for i in expected.labels]
    decisions = _trace(response)
    assert [d["answered_by"] for d in decisions] == [d.answered_by for d in expected.decisions]
    assert "large" in {d["answered_by"] for d in decisions}  # some rows escalated over the hop


def test_split_inference_reaches_the_remote_tier(base_url: str) -> None:
    rows = read_dataset("digits").test.X[:40]
    with httpx.Client(base_url=base_url, timeout=30) as client:
        split = client.post("/v2/models/split/infer", json=_body(rows))
        direct = client.post("/v2/models/digits/infer", json=_body(rows))
    assert split.status_code == 200, split.text
    decisions = _trace(split)
    remote = [i for i, d in enumerate(decisions) if d["answered_by"] == "large"]
    assert remote, "threshold 0.99: some rows must escalate to the remote tier"
    assert not any(d["degraded"] or d["steps"][-1]["error"] for d in decisions)
    # a row the remote answered carries the remote's (digits') probabilities
    mine = np.asarray(split.json()["outputs"][0]["data"]).reshape(40, -1)[remote]
    theirs = np.asarray(direct.json()["outputs"][0]["data"]).reshape(40, -1)[remote]
    np.testing.assert_allclose(mine, theirs, atol=1e-6)


def test_max_tier_keeps_rows_off_the_large_tier(base_url: str) -> None:
    rows = read_dataset("digits").test.X[:40]
    with httpx.Client(base_url=base_url, timeout=30) as client:
        capped = client.post("/v2/models/digits/infer", json=_body(rows, max_tier="tiny"))
        assert capped.status_code == 200, capped.text
        decisions = _trace(capped)
        assert {d["answered_by"] for d in decisions} == {"tiny"}
        assert "max_tier" in {d["reason"] for d in decisions}  # some rows would have escalated
        unknown = client.post("/v2/models/digits/infer", json=_body(rows, max_tier="huge"))
    assert unknown.status_code == 400
    assert 'parameters.max_tier "huge" is not a tier of this policy' in unknown.json()["error"]


def test_concurrent_requests_are_all_answered(base_url: str) -> None:
    rows = read_dataset("digits").test.X[:64]

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
        (b"[" * 100_000 + b"]" * 100_000, "request body is JSON nested too deeply"),
        (None, "does not match [batch, 64]"),
        ("nan", "non-finite"),
    ],
)
def test_bad_requests_get_400_and_the_service_keeps_serving(
    base_url: str, payload: object, message: str
) -> None:
    good = _body(read_dataset("digits").test.X[:2])
    with httpx.Client(base_url=base_url, timeout=30) as client:
        if payload is None:
            response = client.post("/v2/models/digits/infer", json=_body(np.zeros((2, 63))))
        elif payload == "nan":
            rows = np.zeros((2, 64))
            rows[1, 3] = np.nan
            response = client.post(
                "/v2/models/digits/infer",
                content=json.dumps(_body(rows)),  # NaN: Python's JSON writes the literal
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
        good = _body(read_dataset("digits").test.X[:2])
        assert client.post("/v2/models/digits/infer", json=good).status_code == 200


def test_metrics_are_exported(server: Server) -> None:
    rows = read_dataset("digits").test.X[:5]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/v2/models/digits/infer", json=_body(rows)).status_code == 200
    names = ["cascade_requests_total", "cascade_answers_total", "cascade_request_latency_ms"]
    text = server.metrics(names)
    # the names exactly as a scraper reads them, the same on both runtimes: one dashboard
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}  # fmt: skip
    for name in ("ray_cascade_requests_total", "ray_cascade_answers_total",
                 "ray_cascade_request_latency_ms_bucket", "ray_cascade_request_latency_ms_sum",
                 "ray_cascade_request_latency_ms_count"):  # fmt: skip
        assert name in exposed, f"{name} not exported"
    assert "# TYPE ray_cascade_requests_total counter" in text
    assert 'tier="tiny"' in text


def test_deadlines_are_never_answered_late_and_gears_engage_under_load(base_url: str) -> None:
    """Each deadline's outcome follows from the design and `timed`'s fixed estimates (tiny
    0.1 µs, large 30 s), not from the machine's speed. The cases run in this order: only
    the first answered request finds tiny's estimate at 0.1 µs."""
    rows = np.asarray(read_dataset("digits").test.X[:30], dtype=np.float32)
    tiny = OnnxModel(DIGIT_MODELS / "tiny.onnx").predict_sync(rows)
    sure = tiny.max(axis=1) >= 0.99  # what tiny answers itself; the rest would escalate
    assert sure.any() and not sure.all()
    url = "/v2/models/timed/infer"
    with httpx.Client(base_url=base_url, timeout=60) as client:
        # on arrival: even tiny (>= 0.1 µs, its estimate only rises) cannot end within 0.01 µs
        shed = client.post(url, json=_body(rows, deadline_ms=0.00001))
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        assert shed.json()["error"].startswith(
            "cannot answer within the deadline: the queue needs about 0.0001 ms now, "
            "1e-05 ms are left"
        )
        # admitted (tiny's estimate, 0.1 µs, fits 0.1 µs: the highest priority class may use
        # all of its budget), but no request is answered in 0.1 µs: the answer is late, and
        # shed instead of returned
        late = client.post(url, json=_body(rows, deadline_ms=TINY_MS, priority=1))
        assert late.status_code == 503 and late.headers["retry-after"] == "1"
        assert late.json()["error"].startswith("the deadline passed: the answer took")
        # 20 s: tiny fits, large (estimated 30 s) does not: no escalation starts, the rows
        # tiny is unsure of are answered by it with reason "deadline", not degraded
        short = client.post(url, json=_body(rows, deadline_ms=20_000, trace=True))
        assert short.status_code == 200, short.text
        decisions = _trace(short)
        assert [(d["answered_by"], d["reason"], d["degraded"]) for d in decisions] == [
            ("tiny", "confident" if s else "deadline", False) for s in sure
        ]
        assert all([step["tier"] for step in d["steps"]] == ["tiny"] for d in decisions)
        assert all(d["latency_ms"] <= 20_000 for d in decisions)
        probabilities = np.asarray(short.json()["outputs"][0]["data"]).reshape(30, -1)
        np.testing.assert_allclose(probabilities, tiny, atol=1e-6)
        # 10 min: large fits its 30 s estimate; the unsure rows escalate and large answers
        generous = client.post(url, json=_body(rows, deadline_ms=600_000, trace=True))
        assert generous.status_code == 200, generous.text
        decisions = _trace(generous)
        assert [(d["answered_by"], d["reason"], d["degraded"]) for d in decisions] == [
            ("tiny", "confident", False) if s else ("large", "last_tier", False) for s in sure
        ]
        assert all(d["latency_ms"] <= 600_000 for d in decisions)
        probabilities = np.asarray(generous.json()["outputs"][0]["data"]).reshape(30, -1)
        large = OnnxModel(DIGIT_MODELS / "large.onnx").predict_sync(rows[~sure])
        np.testing.assert_allclose(probabilities[~sure], large, atol=1e-5)
    url = "/v2/models/geared/infer"

    async def burst() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            replies = await asyncio.gather(
                *(client.post(url, json=_body(rows[i % 30 : i % 30 + 1])) for i in range(60))
            )
        return [d for r in replies for d in _trace(r)]

    decisions = asyncio.run(burst())
    swamped = [d for d in decisions if d["gear"] == "swamped"]
    assert swamped, "60 requests at once never reached a queue depth of 4"
    assert all(d["answered_by"] == "tiny" for d in swamped)
    # what tiny was sure of is a full answer; what the gear kept from large is degraded
    for d in swamped:
        assert (d["reason"], d["degraded"]) in {("confident", False), ("max_tier", True)}


def _metric_sums(text: str, wanted: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """For each ``(metric, 'key="value"')`` of ``wanted``, the sum of the series of model
    `cached` with that label (0 when absent); names as scraped (both runtimes: ``ray_``)."""
    got = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, rest = line.split("{", 1)
        labels, value = rest.rsplit("}", 1)
        if 'model="cached"' not in labels:
            continue
        for metric, label in wanted:
            if name == f"ray_{metric}" and (not label or label in labels):
                got[(metric, label)] += float(value)
    return got


def test_repeated_rows_are_answered_from_the_caches(server: Server) -> None:
    """The same rows twice: the second answer is the exact cache's, the first's probabilities;
    near rows hit the similarity cache, whose audit (every hit) answers them by the cascade."""
    rows = np.asarray(read_dataset("digits").test.X[:20], dtype=np.float32)
    near = rows.copy()
    near[:, 0] += 1e-3  # other bytes (an exact miss), nearly the same direction
    url = "/v2/models/cached/infer"
    with httpx.Client(base_url=server.url, timeout=60) as client:
        first, second, third = (client.post(url, json=_body(r, trace=True))
                                for r in (rows, rows, near))  # fmt: skip
        for reply in (first, second, third):
            assert reply.status_code == 200, reply.text
        stats = client.get("/v2/models/cached/config").json()["load"]["cache"]
    one, two, three = (_trace(r) for r in (first, second, third))
    assert [d["cache_hit"] for d in one] == [False] * 20
    assert {d["reason"] for d in one} <= {"confident", "last_tier"}
    assert {d["answered_by"] for d in one} == {"tiny", "large"}  # both tiers' answers cached
    assert [(d["reason"], d["cache"], d["cache_hit"], d["steps"]) for d in two] == [
        ("cache", "exact", True, [])
    ] * 20
    assert [d["answered_by"] for d in two] == [d["answered_by"] for d in one]
    assert second.json()["outputs"] == first.json()["outputs"]  # probabilities and labels
    # every near row is a similarity hit (its own row is >= 0.999 away); all are audited
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosines = (near / np.linalg.norm(near, axis=1, keepdims=True)) @ unit.T
    assert (cosines.max(axis=1) >= 0.999).all()
    assert not any(d["cache_hit"] for d in three)
    labels = [next(o for o in r.json()["outputs"] if o["name"] == "label")["data"]
              for r in (first, third)]  # fmt: skip
    false_hits = sum(
        labels[1][i] != labels[0][j] for i, j in enumerate(cosines.argmax(axis=1).tolist())
    )
    assert (stats["exact_hit"], stats["similar_hit"], stats["miss"]) == (20, 0, 40)
    assert {k: stats["exact"][k] for k in ("hits", "misses", "size")} == {
        "hits": 20, "misses": 40, "size": 40
    }  # fmt: skip
    assert {k: stats["similar"][k] for k in ("hits", "misses", "audited", "false_hits")} == {
        "hits": 20, "misses": 20, "audited": 20, "false_hits": false_hits
    }  # fmt: skip
    assert stats["similar"]["false_hit_rate"] == false_hits / 20
    expected = {
        ("cascade_cache_rows_total", 'outcome="miss"'): 40.0,
        ("cascade_cache_rows_total", 'outcome="exact_hit"'): 20.0,
        ("cascade_cache_rows_total", 'outcome="similar_hit"'): 0.0,
        ("cascade_cache_hits_total", 'cache="exact"'): 20.0,
        ("cascade_answers_total", 'tier="cache"'): 20.0,
        ("cascade_cache_false_hit_rate", ""): false_hits / 20,
    }
    names = ["cascade_cache_rows_total", "cascade_cache_false_hit_rate"]
    got = _metric_sums(server.metrics(names), expected)
    for _ in range(30):  # Ray's metrics agent exports a snapshot every few seconds
        if got == expected:
            break
        time.sleep(2)
        got = _metric_sums(server.metrics(names), expected)
    assert got == expected


def test_binary_tensor_data_gets_the_same_answer_as_json(base_url: str) -> None:
    rows = np.asarray(read_dataset("digits").test.X[:8], dtype=np.float32)
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

    loaded = read_policy(LTR)
    models = ranking_models(loaded)
    n, k = (12, 10) if model == "ltr" else (8, 5)
    queries = ltr_queries("test")[:6]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(
                client.post(f"{base_url}/v2/models/{model}/infer",
                            content=_rank_body(q.features, [f"d{i}" for i in q.ids], trace=True))
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
        stages = _trace(response)
        assert [(s["stage"], s["in"]) for s in stages] == [
            ("coarse", len(query.ids)), ("fine", min(n, len(query.ids)))
        ]  # fmt: skip


def test_ranking_metadata_and_bad_requests(base_url: str) -> None:
    url = f"{base_url}/v2/models/ltr/infer"
    meta = httpx.get(f"{base_url}/v2/models/ltr", timeout=10).json()
    assert meta["parameters"]["routing"] == "ranking"
    assert [s["name"] for s in json.loads(meta["parameters"]["stages"])] == ["coarse", "fine"]
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
    offline = Evaluator(read_policy(CLINC150))
    data = read_dataset("clinc150")
    texts = [str(t) for t in data.test.X[:40]]
    expected = offline.replay(offline.loaded.policy, np.asarray(data.test.X[:40]))
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
        answered = _output(response, "answered_by")
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


def test_a_profiled_request_gets_its_phases_the_deployment_tiers_included(server: Server) -> None:
    """digits: tiny inline, large a deployment tier. On Ray its call splits into the hop and
    the replica's queue and model time; the edge runs it inline, one phase."""
    rows = read_dataset("digits").test.X[:40]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(
            "/v2/models/digits/infer",
            json=_body(rows, profile=True, trace=False),
            headers={"x-cascade-sent-at": repr(time.time())},
        )
        sampled = client.post("/v2/models/split/infer", json=_body(rows, trace=False))
    assert response.status_code == 200, response.text
    parameters = response.json()["parameters"]
    assert set(parameters) == {"gear", "profile"}
    assert "large" in _output(response, "answered_by")
    profile = json.loads(parameters["profile"])
    names = [name for name, _, _ in profile["phases"]]
    assert names[:5] == ["before", "read", "parse", "admission", "coalesce"]
    assert names[-3:] == ["wake", "metrics", "encode"]
    deployment = (
        ["tier.large.hop", "tier.large.queue", "tier.large.model", "tier.large.hop"]
        if server.runtime == "ray"
        else ["tier.large"]
    )
    assert [n for n in names if n.startswith("tier.")] == ["tier.tiny", *deployment]
    served = [(start, duration) for name, start, duration in profile["phases"] if name != "before"]
    assert all(duration >= 0 for _, duration in served)
    assert sum(d for _, d in served) == pytest.approx(profile["total_ms"], abs=0.02)
    assert profile["batch"]["rows"] >= 40
    # a sampled request: its response as ever, its phases in the histogram of both runtimes
    assert sampled.status_code == 200 and "profile" not in sampled.json()["parameters"]
    text = server.metrics(["cascade_phase_latency_ms"])
    phases = {line.split('phase="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("ray_cascade_phase_latency_ms_count")
              and 'model="split"' in line}  # fmt: skip
    assert {"parse", "admission", "tier.tiny", "tier.large", "encode"} <= phases


# --- conformance: the clients users bring, unmodified ---------------------------------------

_DIGIT_OUTPUTS = ("probabilities", "label", "answered_by", "degraded")


def _texts() -> np.ndarray:
    return np.array([str(t) for t in read_dataset("clinc150").test.X[:6]], dtype=object)


def test_tritonclient_http_reads_health_metadata_config_and_our_errors(base_url: str) -> None:
    triton = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(base_url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits") and not client.is_model_ready("nope")
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
        meta = client.get_model_metadata("digits")
        assert [o["name"] for o in meta["outputs"]] == list(_DIGIT_OUTPUTS)
        (version,) = meta["versions"]
        assert client.is_model_ready("digits", model_version=version)
        assert not client.is_model_ready("digits", model_version="1")
        config = client.get_model_config("digits")
        assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
        bad = triton.InferInput("input", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        with pytest.raises(InferenceServerException) as refused:
            client.infer("digits", [bad])
        assert refused.value.status() == "400"
        assert refused.value.message() == "input 'input': shape [1, 3] does not match [batch, 64]"
        rows = read_dataset("digits").test.X[:2].astype(np.float32)
        good = triton.InferInput("input", [2, 64], "FP32")
        good.set_data_from_numpy(rows)
        with pytest.raises(InferenceServerException, match="has no version '1'"):
            client.infer("digits", [good], model_version="1")
        assert client.infer("digits", [good], model_version=version).as_numpy("label") is not None
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_infers_numbers_and_texts_as_json_and_binary(
    base_url: str, binary: bool
) -> None:
    """Both ways: the inputs and the outputs as JSON or as binary data; the answers equal
    what a plain JSON request gets."""
    triton = pytest.importorskip("tritonclient.http")
    rows = read_dataset("digits").test.X[:40].astype(np.float32)
    expected = {o["name"]: o["data"] for o in
                httpx.post(f"{base_url}/v2/models/digits/infer", json=_body(rows),
                           timeout=30).json()["outputs"]}  # fmt: skip
    client = triton.InferenceServerClient(base_url.removeprefix("http://"))
    try:
        x = triton.InferInput("input", [40, 64], "FP32")
        x.set_data_from_numpy(rows, binary_data=binary)
        wanted = [triton.InferRequestedOutput(n, binary_data=binary) for n in _DIGIT_OUTPUTS]
        result = client.infer("digits", [x], outputs=wanted)
        np.testing.assert_array_equal(
            result.as_numpy("probabilities"),
            np.asarray(expected["probabilities"], np.float32).reshape(40, 10),
        )
        as_text = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
        assert as_text == expected["label"]
        assert result.as_numpy("degraded").tolist() == expected["degraded"]
        assert result.as_numpy("degraded").dtype == np.bool_
        texts = _texts()
        t = triton.InferInput("text", [len(texts)], "BYTES")
        t.set_data_from_numpy(texts, binary_data=binary)
        answer = client.infer("clinc150", [t], outputs=[
            triton.InferRequestedOutput("label", binary_data=binary)])  # fmt: skip
        plain = httpx.post(f"{base_url}/v2/models/clinc150/infer", timeout=60, json={
            "inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                        "data": texts.tolist()}]}).json()  # fmt: skip
        labels = [v.decode() if isinstance(v, bytes) else v for v in answer.as_numpy("label")]
        assert labels == next(o for o in plain["outputs"] if o["name"] == "label")["data"]
    finally:
        client.close()


def test_the_kserve_client_infers_json_and_binary_and_gets_our_errors(base_url: str) -> None:
    kserve = pytest.importorskip("kserve")
    from kserve.protocol.infer_type import RequestedOutput

    rows = read_dataset("digits").test.X[:8].astype(np.float32)
    texts = _texts()

    async def run() -> list[Any]:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0))
        try:
            assert await client.is_server_ready(base_url)
            assert await client.is_model_ready(base_url, "digits")
            answers = []
            for binary in (False, True):
                x = kserve.InferInput("input", [8, 64], "FP32")
                x.set_data_from_numpy(rows, binary_data=binary)
                t = kserve.InferInput("text", [len(texts)], "BYTES")
                t.set_data_from_numpy(texts, binary_data=binary)
                wanted = [RequestedOutput(n, parameters={"binary_data": binary})
                          for n in ("label", "probabilities")]  # fmt: skip
                for model, tensor in (("digits", x), ("clinc150", t)):
                    request = kserve.InferRequest(model, [tensor], request_outputs=wanted)
                    answers.append(await client.infer(base_url, request, model_name=model))
            bad = kserve.InferInput("input", [1, 3], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
            with pytest.raises(httpx.HTTPStatusError) as refused:
                await client.infer(base_url, kserve.InferRequest("digits", [bad]),
                                   model_name="digits")  # fmt: skip
            assert refused.value.response.status_code == 400
            assert "shape [1, 3] does not match [batch, 64]" in refused.value.response.text
            return answers
        finally:
            await client.close()

    digits_json, texts_json, digits_binary, texts_binary = asyncio.run(run())
    for plain, binary in ((digits_json, digits_binary), (texts_json, texts_binary)):
        assert plain.parameters == binary.parameters == {"gear": "normal"}
        for a, b in zip(plain.outputs, binary.outputs, strict=True):
            np.testing.assert_array_equal(a.as_numpy(), b.as_numpy())


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    server: Server, tmp_path: Path
) -> None:
    """Fuzzing from /openapi.json, bounded: every route, every documented input; zero 5xx,
    every answer as documented, and nothing the document refuses is accepted."""
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        pytest.skip("schemathesis is not installed")
    checks = ("not_a_server_error,status_code_conformance,content_type_conformance,"
              "response_schema_conformance,negative_data_rejection")  # fmt: skip
    run = subprocess.run(
        [str(st), "run", f"{server.url}/openapi.json", "--checks", checks, "--max-examples",
         "200", "--phases", "coverage,fuzzing", "--seed", "7", "--no-color",
         "--request-timeout", "30"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,  # its cache goes there
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " failed" not in run.stdout.split("SUMMARY")[-1], run.stdout[-6000:]
