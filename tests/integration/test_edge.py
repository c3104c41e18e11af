"""Split inference on the edge runtime against a real remote that goes slow, wrong or away.

The remote is a real v2 endpoint (digits' large tier served by another edge app) behind a
switch, on 127.0.0.1; the edge under test serves tiny locally and reaches that large tier
over HTTP. Whatever the remote does, clients get 200s with degraded local answers, and the
breaker closes again once the remote is back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cli_server import CliServer

from cascade.edge import EdgeSettings, build_edge_app
from cascade.edge.testing import FlakyEndpoint, Mode, ThreadedServer
from cascade.zoo import read_dataset

pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "policies" / "models" / "digits"
ROWS = read_dataset("digits").test.X[:30]


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlakyEndpoint]:
    from cascade.evaluate import ensure_models
    from cascade.policy import read_policy

    ensure_models(read_policy(ROOT / "policies" / "digits.yaml"), progress=False)
    path = tmp_path_factory.mktemp("remote") / "digits.yaml"
    path.write_text(
        "name: digits\nallow_outside_paths: true\n"
        f"tiers:\n  large: {{model: {MODELS / 'large.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: large}\n"
    )
    endpoint = FlakyEndpoint(build_edge_app(EdgeSettings(policies=[str(path)])))
    with endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def edge(remote: FlakyEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("edge") / "split.yaml"
    path.write_text(
        "name: split\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {MODELS / 'tiny.onnx'}}}\n"
        f"  large:\n    model: {remote.url}/v2/models/digits\n    cost: 1.0\n"
        "    timeout_ms: 300\n    breaker: {failure_threshold: 2, reset_after_s: 1}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        "    - {tier: tiny, threshold: 0.99}\n    - {tier: large}\n"
    )
    with ThreadedServer(build_edge_app(EdgeSettings(policies=[str(path)]))) as server:
        yield server.url


def _infer(client: httpx.Client) -> list[dict[str, Any]]:
    body = {"inputs": [{"name": "input", "shape": [30, 64], "datatype": "FP32",
                        "data": ROWS.ravel().tolist()}], "parameters": {"trace": True}}  # fmt: skip
    response = client.post("/v2/models/split/infer", json=body)
    assert response.status_code == 200, response.text  # never a 5xx, whatever the remote does
    decisions: list[dict[str, Any]] = json.loads(response.json()["parameters"]["trace"])
    return decisions


def _breaker(client: httpx.Client) -> str:
    state: str = client.get("/v2/models/split/config").json()["load"]["breakers"]["large"]
    return state


def _until_healthy(client: httpx.Client) -> list[dict[str, Any]]:
    """Requests until the remote answers again (the breaker lets a probe through)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        decisions = _infer(client)
        if any(d["answered_by"] == "large" and not d["degraded"] for d in decisions):
            return decisions
        time.sleep(0.1)
    raise AssertionError("the remote tier never answered again")


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("down", "cannot connect"),
        ("slow", "no answer within 300 ms"),
        ("error", "HTTP 500"),
        ("malformed", "malformed JSON"),
    ],
)
def test_remote_failures_degrade_to_local_answers_and_recovery_closes_the_breaker(
    remote: FlakyEndpoint, edge: str, mode: Mode, error: str
) -> None:
    with httpx.Client(base_url=edge, timeout=30) as client:
        remote.set("ok")
        healthy = _until_healthy(client)
        escalated = [i for i, d in enumerate(healthy) if d["answered_by"] == "large"]
        assert _breaker(client) == "closed"

        remote.set(mode, delay_ms=2000)
        failed = [_infer(client) for _ in range(4)]
        for decisions in failed:
            for i in escalated:  # the rows the remote answered before: the local answer now
                d = decisions[i]
                assert (d["answered_by"], d["reason"], d["degraded"]) == ("tiny", "fallback", True)
        errors = [decisions[escalated[0]]["steps"][-1]["error"] for decisions in failed]
        assert error in errors[0], errors
        assert any("circuit open" in e for e in errors[2:]), errors  # refused, not called
        assert _breaker(client) in ("open", "half_open")

        remote.set("ok")
        _until_healthy(client)
        assert _breaker(client) == "closed"


def test_the_edge_answers_prometheus_metrics_of_degraded_rows(edge: str) -> None:
    text = httpx.get(f"{edge}/metrics", timeout=10).text
    assert 'cascade_degraded_total{model="split"}' in text
    assert 'cascade_answers_total{model="split",tier="large"}' in text


def test_footprint_of_the_covertype_edge_policy_fits_the_budget() -> None:
    cli = Path(sys.executable).with_name("cascade")
    result = subprocess.run(
        [str(cli), "footprint", "policies/covertype-edge.yaml", "--budget-mb", "400", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    tiers = {t["tier"]: t for t in found["tiers"]}
    assert tiers["large"]["remote"] and tiers["large"]["session_mb"] is None
    assert tiers["small"]["model"].endswith("student.int8.onnx")
    assert 0 < tiers["small"]["file_mb"] < 1  # the INT8 student: tens of kB
    assert found["within_budget"] is True and 0 < found["process_mb"] <= 400
    np.testing.assert_allclose(
        found["disk_mb"], sum(t["file_mb"] for t in found["tiers"] if t["file_mb"]), rtol=1e-9
    )


def test_sighup_reloads_the_policy_files_of_the_edge_cli(tmp_path: Path) -> None:
    import signal

    from cascade.edge.testing import free_port

    path = tmp_path / "mine.yaml"

    def write(threshold: float) -> None:
        path.write_text(
            "name: mine\nallow_outside_paths: true\ntiers:\n"
            f"  tiny: {{model: {MODELS / 'tiny.onnx'}}}\n"
            f"  large: {{model: {MODELS / 'large.onnx'}}}\n"
            "routing:\n  kind: confidence\n  chain:\n"
            f"    - {{tier: tiny, threshold: {threshold}}}\n    - {{tier: large}}\n"
        )

    write(0.0)
    port = free_port()
    cli = Path(sys.executable).with_name("cascade")
    server = CliServer(
        [str(cli), "serve", "--runtime", "edge", str(path), "--port", str(port)],
        cwd=ROOT,
        ready_timeout_s=120,
        stop_timeout_s=60,
    )
    with server, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

        def answered_by() -> set[str]:
            decisions = _infer_mine(client)
            return {d["answered_by"] for d in decisions}

        assert answered_by() == {"tiny"}
        write(1.0)
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while answered_by() != {"large"} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answered_by() == {"large"}
        write(1.5)  # invalid: refused, reported, the last good policy keeps serving
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        errors: list[str] = []
        while not errors and time.monotonic() < deadline:
            meta = client.get("/v2/models/mine").json()
            errors = json.loads(meta["parameters"]["reload_errors"])
            time.sleep(0.1)
        assert "must be <= 1, got 1.5" in errors[0]
        assert answered_by() == {"large"}
    assert server.returncode == 0, server.output
    assert server.output.rstrip().endswith("stopped")


def _infer_mine(client: httpx.Client) -> list[dict[str, Any]]:
    body = {"inputs": [{"name": "input", "shape": [5, 64], "datatype": "FP32",
                        "data": ROWS[:5].ravel().tolist()}],
            "parameters": {"trace": True}}  # fmt: skip
    response = client.post("/v2/models/mine/infer", json=body)
    assert response.status_code == 200, response.text
    decisions: list[dict[str, Any]] = json.loads(response.json()["parameters"]["trace"])
    return decisions
