"""What only the Ray runtime does: reloads through Serve, Serve's backpressure, a killed
replica restarted. The HTTP contract both runtimes share is in test_http_contract.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_http_contract import _body, _resilient_policy

from cascade.edge.testing import free_port
from cascade.zoo import read_dataset

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "policies" / "digits.yaml"
SERVED = [str(DIGITS)]


@pytest.fixture(scope="module")
def base_url(digits_policy_models: Path) -> Iterator[str]:
    from deployments.app import build_app

    port = free_port()
    # 4 logical CPUs (2 real): two apps of 0.5-CPU replicas fit side by side
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"policies": SERVED}), name="cascade", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _reload_policy(directory: Path, threshold: float, *, extra: str = "") -> Path:
    """digits under another name, with the shipped model files and a chosen threshold."""
    models = ROOT / "policies" / "models" / "digits"
    path = directory / "reloadable.yaml"
    path.write_text(
        "name: reloadable\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}}}\n"
        f"  large: {{model: {models / 'large.onnx'}, placement: deployment}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        f"    - {{tier: tiny, threshold: {threshold}}}\n    - {{tier: large}}\n" + extra
    )
    return path


def test_reload_under_traffic_applies_new_thresholds_and_refuses_bad_ones(
    base_url: str, tmp_path: Path
) -> None:
    from deployments.app import build_app

    rows = read_dataset("digits").test.X[:20]
    policy = _reload_policy(tmp_path, 0.0)  # threshold 0: tiny answers everything
    serve.run(build_app({"policies": [*SERVED, str(policy)]}), name="cascade",
              route_prefix="/")  # fmt: skip
    url = "/v2/models/reloadable/infer"

    async def traffic(client: httpx.AsyncClient, stop: asyncio.Event) -> list[int]:
        codes = []
        while not stop.is_set():
            codes.append((await client.post(url, json=_body(rows[:2]))).status_code)
        return codes

    async def scenario() -> tuple[list[int], list[str], str]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            first = (await client.post(url, json=_body(rows))).json()
            before = {d["answered_by"] for d in json.loads(first["parameters"]["trace"])}
            version = (await client.get("/v2/models/reloadable")).json()["versions"][0]
            stop = asyncio.Event()
            load = asyncio.gather(*(traffic(client, stop) for _ in range(4)))
            _reload_policy(tmp_path, 1.0)  # threshold 1: every row escalates
            await asyncio.to_thread(
                serve.run, build_app({"policies": [*SERVED, str(policy)]}),
                name="cascade", route_prefix="/",
            )  # fmt: skip
            stop.set()
            codes = [c for batch in await load for c in batch]
            after = (await client.post(url, json=_body(rows))).json()
            new_version = (await client.get("/v2/models/reloadable")).json()["versions"][0]
            answered = [d["answered_by"] for d in json.loads(after["parameters"]["trace"])]
            assert before == {"tiny"} and new_version != version
            return codes, answered, new_version

    codes, answered, _ = asyncio.run(scenario())
    assert codes and set(codes) == {200}  # not one request failed during the reload
    assert set(answered) == {"large"}

    # An invalid policy is refused where it is checked first, and the old one keeps serving.
    policy.write_text(policy.read_text().replace("threshold: 1.0", "threshold: 1.5"))
    from cascade.errors import PolicyError

    with pytest.raises(PolicyError, match=r"routing\.chain\[0\]\.threshold: must be <= 1"):
        build_app({"policies": [*SERVED, str(policy)]})
    with httpx.Client(base_url=base_url, timeout=30) as client:
        response = client.post(url, json=_body(rows[:3]))
    assert response.status_code == 200
    assert {d["answered_by"] for d in json.loads(response.json()["parameters"]["trace"])} == {
        "large"
    }


def test_backpressure_is_a_503_with_retry_after_and_serving_goes_on(
    base_url: str, tmp_path: Path
) -> None:
    from deployments.app import build_app

    models = ROOT / "policies" / "models" / "digits"
    slow = tmp_path / "slow.yaml"  # the large model inline: a big request holds the replica
    slow.write_text(
        "name: slow\nallow_outside_paths: true\n"
        f"tiers:\n  large: {{model: {models / 'large.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: large}\n"
    )
    args = {"policies": [str(slow)], "max_ongoing_requests": 1, "max_queued_requests": 1,
            "retry_after_s": 2}  # fmt: skip
    serve.run(build_app(args), name="pressure", route_prefix="/pressure")
    rows = np.tile(read_dataset("digits").test.X, (12, 1))[:4096]
    url = "/pressure/v2/models/slow/infer"

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            return await asyncio.gather(*(client.post(url, json=_body(rows, trace=False))
                                          for _ in range(8)))  # fmt: skip

    try:
        responses = asyncio.run(burst())
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 503 in codes, codes  # one runs, one waits, the rest are shed
        assert set(codes) == {200, 503}
        for response in responses:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "2"
        with httpx.Client(base_url=base_url, timeout=60) as client:
            assert client.post(url, json=_body(rows[:3])).status_code == 200
    finally:
        serve.delete("pressure")


def test_a_killed_tier_degrades_answers_until_serve_restarts_it(
    base_url: str, tmp_path: Path
) -> None:
    from deployments.app import build_app

    serve.run(build_app({"policies": [str(_resilient_policy(tmp_path))]}), name="resilient",
              route_prefix="/resilient")  # fmt: skip
    url = "/resilient/v2/models/resilient/infer"
    rows = read_dataset("digits").test.X[:30]  # threshold 0.99: several rows escalate

    def replica() -> Any:
        names = ray.util.list_named_actors(all_namespaces=True)
        (found,) = [a for a in names if "resilient-large" in a["name"]]
        return ray.get_actor(found["name"], namespace=found["namespace"])

    async def scenario() -> tuple[list[int], list[list[dict[str, Any]]], int]:
        codes: list[int] = []
        answers: list[list[dict[str, Any]]] = []
        killed_at = -1
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:

            async def one() -> None:
                response = await client.post(url, json=_body(rows))
                codes.append(response.status_code)
                if response.status_code == 200:
                    answers.append(json.loads(response.json()["parameters"]["trace"]))

            await asyncio.gather(*(one() for _ in range(4)))
            ray.kill(replica(), no_restart=True)
            killed_at = len(answers)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until Serve has a new replica answering
                await asyncio.gather(*(one() for _ in range(4)))
                last = answers[-1] if answers else []
                if len(answers) > killed_at + 8 and any(
                    d["answered_by"] == "large" and not d["degraded"] for d in last
                ):
                    break
                await asyncio.sleep(0.2)
        return codes, answers, killed_at

    try:
        codes, answers, killed_at = asyncio.run(scenario())
        assert set(codes) <= {200, 503}, codes  # never a 500, whatever the tier does
        before, after = answers[:killed_at], answers[killed_at:]
        assert any(d["answered_by"] == "large" for batch in before for d in batch)
        fell_back = [d for batch in after for d in batch if d["reason"] == "fallback"]
        assert fell_back and all(d["degraded"] and d["answered_by"] == "tiny" for d in fell_back)
        assert any(d["answered_by"] == "large" and not d["degraded"] for d in after[-1])
    finally:
        serve.delete("resilient")
