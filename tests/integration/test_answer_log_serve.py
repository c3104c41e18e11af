"""The answer log on Ray Serve: the ingress replica writes it, feedback included."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_answer_log_edge import logged_digits_policy

from cascade.edge.testing import free_port
from cascade.zoo import read_dataset

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _lines(path: Path, want: int) -> list[dict[str, object]]:
    """The log's records once it holds ``want`` of them (the writer flushes as it drains)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= want:
                return [json.loads(line) for line in lines]
        time.sleep(0.1)
    raise AssertionError(f"{path}: fewer than {want} records after 60 s")


def test_the_ray_ingress_writes_the_answer_log(
    serve_url: str, digits_policy_models: Path, tmp_path: Path
) -> None:
    from deployments.app import build_app

    logs = tmp_path / "logs"
    policy = logged_digits_policy(
        tmp_path, digits_policy_models, f"{{path: {logs}}}", deployment=True
    )
    serve.run(build_app({"policies": [str(policy)]}), name="cascade", route_prefix="/")
    rows = read_dataset("digits").test.X[:12].astype(np.float32)
    body = {"id": "ray-1", "inputs": [{"name": "input", "shape": [12, 64], "datatype": "FP32",
                                       "data": rows.ravel().tolist()}]}  # fmt: skip
    with httpx.Client(base_url=serve_url, timeout=60) as client:
        answer = client.post("/v2/models/digits/infer", json=body)
        assert answer.status_code == 200, answer.text
        sent = client.post("/v2/models/digits/feedback", json={"id": "ray-1", "labels": [7] * 12})
        assert sent.json() == {"id": "ray-1", "labels": 12, "matched": True}
        records = _lines(logs / "digits.jsonl", 24)
        config = client.get("/v2/models/digits/config").json()
    answers = [r for r in records if r["kind"] == "answer"]
    assert [r["row"] for r in answers] == list(range(12))
    assert {r["id"] for r in records} == {"ray-1"}
    assert {r["answered_by"] for r in answers} <= {"tiny", "large"}
    assert config["policy"]["log"]["path"] == str(logs)
    assert config["load"]["log"]["file"] == str(logs / "digits.jsonl")
    serve.delete("cascade")
