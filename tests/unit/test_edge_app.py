"""The edge runtime's ASGI layer, metrics and settings, in process (no Ray, no network)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cascade.catalog import ModelCard
from cascade.edge import EdgeApp, EdgeSettings, PrometheusMetrics, build_edge_app
from cascade.zoo import read_dataset

ROOT = Path(__file__).resolve().parents[2]


def _policy(models: Path, folder: Path, *, threshold: float = 0.9) -> Path:
    path = folder / "digits.yaml"
    path.write_text(
        f"name: digits\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}}}\n"
        f"  large: {{model: {models / 'large.onnx'}, placement: deployment}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        f"    - {{tier: tiny, threshold: {threshold}}}\n    - {{tier: large}}\n"
    )
    return path


@pytest.fixture
def app(digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path) -> EdgeApp:
    settings = EdgeSettings(
        policies=[str(_policy(digits_zoo[0], tmp_path))], max_body_bytes=4096, max_rows=8
    )
    return build_edge_app(settings)


def _body(rows: np.ndarray, **parameters: Any) -> dict[str, Any]:
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
              "data": rows.ravel().tolist()}  # fmt: skip
    return {"inputs": [tensor], "parameters": parameters}


def _requests(app: EdgeApp, *calls: tuple[str, str, Any]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return [await client.request(m, url, json=body) for m, url, body in calls]

    return asyncio.run(run())


def test_the_routes_are_the_services_and_metrics_are_prometheus_text(app: EdgeApp) -> None:
    rows = read_dataset("digits").test.X[:4]
    live, meta, infer, missing, wrong, metrics = _requests(
        app,
        ("GET", "/v2/health/live", None),
        ("GET", "/v2/models/digits", None),
        ("POST", "/v2/models/digits/infer", _body(rows)),
        ("GET", "/v2/models/nope", None),
        ("POST", "/v2/health/live", {}),
        ("GET", "/metrics", None),
    )
    assert live.json() == {"live": True}
    assert json.loads(meta.json()["parameters"]["tiers"]) == ["tiny", "large"]
    assert infer.status_code == 200 and len(infer.json()["outputs"][2]["data"]) == 4
    assert missing.status_code == 404 and missing.json() == {
        "error": "unknown model 'nope' (models: digits)"
    }
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'ray_cascade_requests_total{model="digits"} 1\n' in text
    assert 'ray_cascade_request_rows_bucket{model="digits",le="4"} 1\n' in text
    assert 'ray_cascade_request_rows_count{model="digits"} 1\n' in text
    answered = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_cascade_answers_total{")
    )
    assert answered == 4


def _raw(app: EdgeApp, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> Any:
    """Call the ASGI app directly; count how much of the body it read."""
    sent: list[dict[str, Any]] = []
    read = [0]

    async def receive() -> dict[str, Any]:
        read[0] += 1
        chunk = chunks[read[0] - 1]
        return {"type": "http.request", "body": chunk, "more_body": read[0] < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v2/models/digits/infer",
             "headers": headers, "root_path": ""}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"]), read[0]


def test_oversized_bodies_are_refused_without_reading_them(app: EdgeApp) -> None:
    status, body, read = _raw(app, [(b"content-length", b"100000")], [b"x" * 100_000])
    assert (status, read) == (413, 0)
    assert body == {"error": "request body is 100000 bytes; the limit is 4096"}
    # no length declared (chunked): reading stops at the first chunk past the limit
    status, body, read = _raw(app, [], [b"x" * 3000] * 10)
    assert (status, read) == (413, 2)
    assert "the limit is 4096" in body["error"]


def test_bad_input_is_a_400_as_on_ray(app: EdgeApp) -> None:
    (bad,) = _requests(app, ("POST", "/v2/models/digits/infer", _body(np.zeros((2, 63)))))
    assert bad.status_code == 400 and "does not match [batch, 64]" in bad.json()["error"]
    (many,) = _requests(app, ("POST", "/v2/models/digits/infer", _body(np.zeros((9, 64)))))
    assert many.status_code == 400 and "the limit is 8 per request" in many.json()["error"]


def test_requests_past_the_bound_are_shed_with_retry_after(app: EdgeApp) -> None:
    app.max_requests, app.retry_after_s = 0, 3
    (shed,) = _requests(app, ("POST", "/v2/models/digits/infer", _body(np.zeros((1, 64)))))
    assert shed.status_code == 503 and shed.headers["retry-after"] == "3"
    assert app.metrics is not None
    assert 'ray_cascade_shed_total{model="digits",why="backpressure"} 1' in app.metrics.render()


def test_lifespan_closes_remote_connections(app: EdgeApp) -> None:
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []
    started: list[bool] = []
    app.on_startup = lambda: started.append(True)

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"] and started


def test_prometheus_text_of_histograms_gauges_and_escaped_labels() -> None:
    from cascade.routing import Decision
    from cascade.routing._decision import Step

    metrics = PrometheusMetrics()
    step = Step(tier="tiny", confidence=0.5, threshold=0.9, accepted=False, latency_ms=0.3,
                cost=0.01)  # fmt: skip
    big = Step(tier="large", confidence=None, threshold=None, accepted=True, latency_ms=3.0,
               cost=1.0, error='boom "x"')  # fmt: skip
    decision = Decision(steps=(step, big), answered_by="large", reason="last_tier", cost=1.01,
                        latency_ms=3.3, deadline_ms=None, degraded=True)  # fmt: skip
    metrics.record('we"ird', [decision, decision], 4.0)
    metrics.gear("m", 2)
    metrics.cache("m", {"exact_hit": 1, "similar_hit": 0, "miss": 2}, 0.25)
    text = metrics.render()
    assert 'ray_cascade_escalations_total{model="we\\"ird"} 2\n' in text
    assert 'ray_cascade_degraded_total{model="we\\"ird"} 2\n' in text
    buckets = [line for line in text.splitlines()
               if line.startswith("ray_cascade_request_latency_ms_bucket")]  # fmt: skip
    assert buckets[4].endswith('le="2"} 0') and buckets[5].endswith('le="5"} 1')
    assert buckets[-1].endswith('le="+Inf"} 1')
    assert "# TYPE ray_cascade_tier_latency_ms histogram" in text
    assert 'ray_cascade_gear{model="m"} 2\n' in text
    assert 'ray_cascade_cache_rows_total{model="m",outcome="miss"} 2\n' in text
    assert 'ray_cascade_cache_rows_total{model="m",outcome="similar_hit"}' not in text
    assert 'ray_cascade_cache_false_hit_rate{model="m"} 0.25\n' in text


def test_settings_mirror_the_ray_runtime() -> None:
    settings = EdgeSettings(policies=["p.yaml"])
    assert settings.max_requests == 512 + 256
    assert EdgeSettings(policies=["p.yaml"], max_queued_requests=-1).max_requests > 10**6
    with pytest.raises(ValueError, match="at least 1 item"):
        EdgeSettings(policies=[])


def test_the_edge_path_never_imports_ray(digits_zoo: tuple[Path, list[ModelCard]],
                                         tmp_path: Path) -> None:  # fmt: skip
    policy = _policy(digits_zoo[0], tmp_path)
    code = f"""
import asyncio, sys
import httpx
from cascade.cli import build_parser
from cascade.edge import EdgeSettings, build_edge_app
args = build_parser().parse_args(["serve", "--runtime", "edge", {str(policy)!r}])
assert args.runtime == "edge"
app = build_edge_app(EdgeSettings(policies=[{str(policy)!r}]))
async def one():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as c:
        body = {{"inputs": [{{"name": "input", "shape": [1, 64], "datatype": "FP32",
                              "data": [0.0] * 64}}]}}
        return (await c.post("/v2/models/digits/infer", json=body)).status_code
assert asyncio.run(one()) == 200
print(sorted(m for m in sys.modules if m == "ray" or m.startswith("ray.")))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_with_a_token_a_caller_without_it_gets_a_401_before_the_bound_and_the_body(
    app: EdgeApp,
) -> None:
    from cascade.serving import BearerAuth

    app.service.auth = BearerAuth("edge-token")
    status, body, read = _raw(app, [(b"content-length", b"100000")], [b"x" * 100_000])
    assert (status, read) == (401, 0)  # not a 413: the body of a stranger is never read
    assert body == {"error": "authentication required: send the header Authorization: Bearer "
                    "<token>"}  # fmt: skip
    app.max_requests = 0
    shed, metrics, live = _requests(
        app, ("POST", "/v2/models/digits/infer", {}), ("GET", "/metrics", None),
        ("GET", "/v2/health/live", None),
    )  # fmt: skip
    assert (shed.status_code, metrics.status_code) == (401, 401)  # not a 503: nothing told
    assert live.status_code == 503  # open, so past the bound like any request
