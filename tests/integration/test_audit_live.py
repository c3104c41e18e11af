"""The live audit on real servers: the edge runtime against its remote top tier (split
inference), real Ray Serve with the top tier a deployment, and `cascade status` reading an
edge. Real ONNX tiers (digits), real HTTP; the truth is computed offline on the same rows
with the top tier's own model file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cascade.backends import OnnxModel
from cascade.edge import EdgeSettings, build_edge_app
from cascade.edge.testing import ThreadedServer, free_port
from cascade.policy import read_policy
from cascade.zoo import read_dataset

pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "policies" / "digits.yaml"
MODELS = ROOT / "policies" / "models" / "digits"
ROWS = read_dataset("digits").test.X.astype(np.float32)
AUDIT = {"sample_rate": 1.0, "max_rows_per_s": 100_000, "drift_min_rows": 50}


def _audited_policy(directory: Path, name: str, large: dict[str, Any]) -> Path:
    """The shipped digits policy (thresholds, provenance and its drift reference) under
    ``name``, its large tier replaced by ``large``, auditing every row below it."""
    document = read_policy(DIGITS).policy.model_dump(mode="json", exclude_none=True)
    document |= {"name": name, "allow_outside_paths": True, "audit": AUDIT}
    document["tiers"] = {
        "tiny": {"model": str(MODELS / "tiny.onnx")},
        "large": large,
    }
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def _infer(client: httpx.Client, model: str, rows: np.ndarray) -> dict[str, Any]:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}  # fmt: skip
    response = client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


def _output(body: dict[str, Any], name: str) -> list[Any]:
    return list(next(o for o in body["outputs"] if o["name"] == name)["data"])


def _settled(client: httpx.Client, model: str, audited: int) -> dict[str, Any]:
    """The model's metadata once its audit has answered ``audited`` rows (polled)."""
    deadline = time.monotonic() + 120
    while True:
        metadata: dict[str, Any] = client.get(f"/v2/models/{model}").json()
        audit = json.loads(metadata["parameters"]["audit"])
        if audit["total"]["audited"] >= audited or time.monotonic() > deadline:
            return audit
        time.sleep(0.1)


def _traffic_and_truth(client: httpx.Client, model: str) -> tuple[dict[str, Any], float, int]:
    """Every digits test row in requests of 20; the audit once it has caught up; the true
    agreement with the top tier computed offline, and the rows answered below it."""
    answered_by: list[str] = []
    labels: list[int] = []
    for start in range(0, len(ROWS), 20):
        body = _infer(client, model, ROWS[start : start + 20])
        answered_by += _output(body, "answered_by")
        labels += [int(x) for x in _output(body, "label")]
    below = sum(t != "large" for t in answered_by)
    audit = _settled(client, model, below)
    large = OnnxModel(MODELS / "large.onnx").predict_sync(ROWS).argmax(axis=1)
    truth = float(np.mean(np.asarray(labels) == large))
    return audit, truth, below


def _check(audit: dict[str, Any], truth: float, below: int) -> None:
    window = audit["window"]
    assert audit["top_tier"] == "large"
    assert window["rows"] == len(ROWS)
    assert window["audited"] == below  # sample_rate 1.0: every row below the top tier
    # every row below the top tier was audited: the estimate is the truth itself
    assert window["relative_accuracy"]["estimate"] == pytest.approx(truth)
    assert window["relative_accuracy"]["lower"] <= window["relative_accuracy"]["estimate"]
    assert audit["target_relative_accuracy"] == 0.995
    assert audit["calibrated_relative_cost"] == pytest.approx(0.14072)
    assert audit["drift"]["tier"] == "tiny" and audit["drift"]["score"] is not None


@pytest.fixture(scope="module")
def remote(digits_policy_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("remote") / "digits.yaml"
    path.write_text(
        "name: digits\nallow_outside_paths: true\n"
        f"tiers:\n  large: {{model: {MODELS / 'large.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: large}\n"
    )
    with ThreadedServer(build_edge_app(EdgeSettings(policies=[str(path)]))) as server:
        yield server.url


@pytest.fixture(scope="module")
def edge(remote: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    large = {"model": f"{remote}/v2/models/digits", "cost": 1.0, "timeout_ms": 2000}
    path = _audited_policy(tmp_path_factory.mktemp("edge"), "split", large)
    with ThreadedServer(build_edge_app(EdgeSettings(policies=[str(path)]))) as server:
        yield server.url


def test_edge_audits_against_its_remote_top_tier(edge: str) -> None:
    """Split inference: the top tier is a remote endpoint; the audit calls it after the
    replies, and metadata, /config and /metrics report what it found."""
    with httpx.Client(base_url=edge, timeout=30) as client:
        audit, truth, below = _traffic_and_truth(client, "split")
        config = client.get("/v2/models/split/config").json()
        metrics = client.get("/metrics").text
    _check(audit, truth, below)
    assert config["audit"]["total"]["audited"] == below
    assert 'ray_cascade_live_relative_accuracy{model="split",bound="lower"}' in metrics
    assert 'ray_cascade_audit_rows_total{model="split",tier="tiny",outcome="agreed"}' in metrics
    assert 'ray_cascade_drift_score{model="split"}' in metrics


def test_cascade_status_prints_the_live_table_of_a_real_edge(edge: str) -> None:
    with httpx.Client(base_url=edge, timeout=30) as client:
        _traffic_and_truth(client, "split")
    env = {k: v for k, v in os.environ.items() if k != "CASCADE_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "cascade.cli", "status", edge],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode in (0, 3), done.stderr  # 3: an alarm is raised
    out = done.stdout
    assert out.startswith("model split (version ")
    assert "relative accuracy, lower bound (0.8)" in out and "target 0.995" in out
    assert "calibrated 0.14072" in out and "drift (PSI), tiny max_prob" in out
    assert "gear: normal" in out and "large=closed" in out, out
    missing = subprocess.run(
        [sys.executable, "-m", "cascade.cli", "status", edge, "--model", "nope"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert missing.returncode == 1 and "no model 'nope' (models: split)" in missing.stderr


def test_ray_serve_audits_against_its_top_tier_deployment(
    digits_policy_models: Path, tmp_path: Path
) -> None:
    """The ingress replica runs the audit; the top tier is a Serve deployment reached by
    its handle, from the replica's background task."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from deployments.app import build_app

    large = {"model": str(MODELS / "large.onnx"), "placement": "deployment"}
    path = _audited_policy(tmp_path, "audited", large)
    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"policies": [str(path)]}), name="cascade", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            audit, truth, below = _traffic_and_truth(client, "audited")
    finally:
        serve.shutdown()
        ray.shutdown()
    _check(audit, truth, below)
