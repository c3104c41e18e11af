"""Shadow policies end to end, as an operator runs them: `cascade serve` (edge, then Ray
Serve), `cascade shadow` with a candidate, live traffic, the report, `cascade promote`.

The candidate is the digits policy with a lower threshold on tiny: it escalates fewer rows,
so it costs less and agrees with the serving policy on most rows, not all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_server import CliServer

from cascade.edge.testing import free_port
from cascade.zoo import read_dataset

pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "policies" / "models" / "digits"
ROWS = read_dataset("digits").test.X[:200]
CLI = Path(sys.executable).with_name("cascade")
SERVING, CANDIDATE = 0.999, 0.6


def _policy(threshold: float, extra: str = "") -> str:
    return (
        "name: mine\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {MODELS / 'tiny.onnx'}}}\n"
        f"  large: {{model: {MODELS / 'large.onnx'}, placement: deployment}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        f"    - {{tier: tiny, threshold: {threshold}}}\n    - {{tier: large}}\n{extra}"
    )


def _cascade(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout,
                         cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def _traffic(client: httpx.Client, requests: int = 20) -> list[dict[str, Any]]:
    """``requests`` requests of 10 rows; the decisions of the last one."""
    decisions: list[dict[str, Any]] = []
    for i in range(requests):
        rows = ROWS[(i * 10) % 200 : (i * 10) % 200 + 10]
        tensor = {"name": "input", "shape": [10, 64], "datatype": "FP32",
                  "data": rows.ravel().tolist()}  # fmt: skip
        body = {"inputs": [tensor], "parameters": {"trace": True}}
        response = client.post("/v2/models/mine/infer", json=body)
        assert response.status_code == 200, response.text
        decisions = json.loads(response.json()["parameters"]["trace"])
    return decisions


def _report(url: str, rows: int) -> dict[str, Any]:
    """The report once ``rows`` rows are compared (the candidate runs in the background)."""
    deadline = time.monotonic() + 60
    while True:
        report: dict[str, Any] = json.loads(_cascade("shadow", url, "--model", "mine",
                                                     "--json").stdout)  # fmt: skip
        done = report["rows"] + report["dropped"] + report["skipped"] + report["failed"]
        if done >= rows or time.monotonic() > deadline:
            return report
        time.sleep(0.2)


def _check_report(report: dict[str, Any]) -> None:
    assert report["rows"] > 0 and report["failed"] == 0, report
    serving, candidate = report["serving"], report["candidate"]
    # the lower threshold escalates a subset of the rows the serving policy escalates
    assert candidate["escalation_rate"] < serving["escalation_rate"]
    assert candidate["relative_cost"] < serving["relative_cost"]
    assert 0.0 < report["agreement"] <= 1.0
    # the rows the serving policy sent to large: the candidate's answers vs large's
    assert candidate["top_agreement"]["rows"] > 0
    assert serving["latency_ms"]["p50"] is not None and candidate["latency_ms"]["p99"] is not None


def test_shadow_and_promote_on_the_edge_runtime(tmp_path: Path) -> None:
    path, candidate = tmp_path / "mine.yaml", tmp_path / "candidate.yaml"
    path.write_text(_policy(SERVING))
    candidate.write_text(_policy(CANDIDATE))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = CliServer([str(CLI), "serve", "--runtime", "edge", str(path), "--port", str(port)],
                       cwd=ROOT, ready_timeout_s=120, stop_timeout_s=60)  # fmt: skip
    with server, httpx.Client(base_url=url, timeout=30) as client:
        before = client.get("/v2/models/mine").json()["versions"]
        started = _cascade("shadow", url, str(candidate), "--sample-rate", "1")
        assert "shadowing mine with" in started.stdout and "relative cost" in started.stdout
        _traffic(client)
        report = _report(url, 200)
        _check_report(report)
        assert report["rows"] + report["dropped"] == 200
        table = _cascade("shadow", url, "--model", "mine").stdout
        assert f"{report['rows']} rows compared" in table
        metrics = client.get("/metrics").text
        assert 'ray_cascade_shadow_rows_total{model="mine",outcome="compared"}' in metrics
        assert 'ray_cascade_shadow_relative_cost{model="mine",policy="candidate"}' in metrics
        assert client.get("/v2/models/mine/config").json()["shadow"]["rows"] >= report["rows"]

        written = tmp_path / "promoted.yaml"
        promoted = _cascade("promote", url, "--model", "mine", "--write", str(written))
        assert f"promoted mine: version {before[0]} -> " in promoted.stdout
        assert written.read_text() == candidate.read_text()
        after = client.get("/v2/models/mine").json()["versions"]
        assert after == [report["candidate_policy"]["version"]] != before
        decisions = _traffic(client, requests=1)
        assert {d["steps"][0]["threshold"] for d in decisions} == {CANDIDATE}
        assert client.get("/v2/models/mine/shadow").status_code == 404
    assert server.returncode == 0, server.output


def test_shadow_by_policy_field_and_promote_on_ray_serve(tmp_path: Path) -> None:
    """The policy field through `cascade reload` (every ingress replica takes it), then
    `cascade promote` on this machine, the cluster's head node: `cascade reload` with the
    candidate's file in the model's place."""
    path, candidate = tmp_path / "mine.yaml", tmp_path / "candidate.yaml"
    path.write_text(_policy(SERVING))
    candidate.write_text(_policy(CANDIDATE))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flags = ["--port", str(port), "--num-cpus", "2", "--no-progress", "--ray-proxy", "serve"]
    server = CliServer([str(CLI), "serve", str(path), *flags], cwd=ROOT, ready_timeout_s=240,
                       stop_timeout_s=90)  # fmt: skip
    with server, httpx.Client(base_url=url, timeout=30) as client:
        before = client.get("/v2/models/mine").json()["versions"]
        path.write_text(_policy(SERVING, "shadow: {policy: candidate.yaml, sample_rate: 1}\n"))
        _cascade("reload", str(path))
        _traffic(client)
        report = _report(url, 200)
        _check_report(report)
        assert report["candidate_policy"]["origin"] == "policy"
        assert report["candidate_policy"]["file"] == str(candidate)
        assert "one ingress replica" in report["note"]
        refused = client.post("/v2/models/mine/shadow/promote")
        assert refused.status_code == 409 and "cascade promote" in refused.json()["error"]

        promoted = _cascade("promote", url, "--model", "mine", timeout=300)
        assert f"promoted mine: every ingress replica serves {candidate}" in promoted.stdout
        after = client.get("/v2/models/mine").json()["versions"]
        assert after == [report["candidate_policy"]["version"]] != before
        decisions = _traffic(client, requests=1)
        assert {d["steps"][0]["threshold"] for d in decisions} == {CANDIDATE}
        assert client.get("/v2/models/mine/shadow").status_code == 404
    assert server.returncode == 0, server.output
