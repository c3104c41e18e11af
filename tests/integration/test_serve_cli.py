"""`cascade serve` as a user runs it: a subprocess that serves, answers, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cli_server import CliServer

from cascade.edge.testing import free_port

pytest.importorskip("ray.serve")

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _readme_block(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```\n<!-- /{marker} -->", README, re.S)
    assert match, f"README.md has no {marker} block"
    return match.group(1)


def _policy(path: Path, threshold: float) -> Path:
    models = ROOT / "policies" / "models" / "digits"
    path.write_text(
        "name: mine\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}}}\n"
        f"  large: {{model: {models / 'large.onnx'}, placement: deployment}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        f"    - {{tier: tiny, threshold: {threshold}}}\n    - {{tier: large}}\n"
    )
    return path


def test_the_readme_main_command_serves_answers_reloads_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    """The README's `cascade serve policies/digits.yaml` (plus a second policy and a free
    port), its request example, then a reload and SIGTERM, as a user would."""
    port = free_port()
    cli = Path(sys.executable).with_name("cascade")
    (step,) = [s.strip() for s in _readme_block("main-command").split("&&") if "cascade " in s]
    argv = shlex.split(step)
    digits = argv[2]
    mine = str(_policy(tmp_path / "mine.yaml", 0.0))
    flags = ["--port", str(port), "--num-cpus", "2", "--no-progress", "--max-rows", "40"]
    server = CliServer(
        [str(cli), *argv[1:], mine, *flags],
        cwd=ROOT,
        ready_timeout_s=180,
        stop_timeout_s=90,
    )
    url = f"http://127.0.0.1:{port}"
    with server:
        assert httpx.get(f"{url}/v2/models/digits/ready", timeout=10).status_code == 200
        curl = shlex.split(_readme_block("request-example"))
        readme_url = curl[2].replace("localhost:8000", url)
        example = httpx.post(readme_url, content=curl[curl.index("-d") + 1],
                             headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
        assert example.status_code == 200, example.text
        labels = {o["name"]: o for o in example.json()["outputs"]}["label"]["data"]
        assert labels == ["0"]  # what the README says the example answers
        printed = next(line for line in server.lines if line.startswith("infer:"))
        pasted = shlex.split(printed.removeprefix("infer:"))  # the curl cascade serve prints
        assert pasted[2] == f"{url}/v2/models/digits/infer"
        assert json.loads(pasted[pasted.index("-d") + 1])["inputs"][0]["shape"] == [1, 64]
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                            "data": [0.0] * 64}]}  # fmt: skip
        response = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert httpx.get(f"{url}/openapi.json", timeout=10).json()["info"]["title"] == "cascade"

        def answered_by() -> set[str]:
            reply = httpx.post(f"{url}/v2/models/mine/infer", json=body, timeout=30).json()
            return set(reply["outputs"][2]["data"])  # per row: the tier that answered

        assert answered_by() == {"tiny"}

        def rows_over_the_limit() -> httpx.Response:
            many = {"inputs": [{"name": "input", "shape": [41, 64], "datatype": "FP32",
                                "data": [0.0] * 41 * 64}]}  # fmt: skip
            return httpx.post(f"{url}/v2/models/digits/infer", json=many, timeout=30)

        assert "41 rows; the limit is 40" in rows_over_the_limit().json()["error"]
        for runtime in ("ray", "edge"):  # a second server on this port: refused, never started
            second = subprocess.run(
                [str(cli), "serve", digits, "--runtime", runtime, "--port", str(port)],
                capture_output=True, text=True, timeout=120, cwd=ROOT,
            )  # fmt: skip
            assert second.returncode == 1, second.stdout + second.stderr
            assert f"127.0.0.1:{port} is already in use" in second.stderr
            assert "serving" not in second.stdout
        _policy(tmp_path / "mine.yaml", 1.0)
        reload = subprocess.run(
            [str(cli), "reload", digits, mine], capture_output=True, text=True, timeout=180
        )
        assert reload.returncode == 0, reload.stdout + reload.stderr
        assert "reloaded 2 policies" in reload.stdout
        assert answered_by() == {"large"}
        # the reload rebuilt the app with the flags `cascade serve` was given, not defaults
        assert "41 rows; the limit is 40" in rows_over_the_limit().json()["error"]
    output = server.output
    assert server.returncode == 0, output
    assert f"serving digits, mine at {url}/v2/models/<name>/infer" in output
    assert "request path: HAProxy -> the ingress replica" in output  # the default
    assert output.rstrip().endswith("stopped")


def test_haproxy_refuses_what_waited_too_long_for_a_replica() -> None:
    """`--haproxy-maxconn 1 --haproxy-queue-ms 5`: one request at a time in the ingress
    replica; of 64 sent at once, those that waited in HAProxy's queue more than 5 ms are
    refused there (503, JSON error naming the bound, Retry-After) without reaching the
    replica; the others are answered, and the server goes on serving."""
    port = free_port()
    cli = Path(sys.executable).with_name("cascade")
    flags = ["--port", str(port), "--num-cpus", "2", "--no-progress",
             "--haproxy-maxconn", "1", "--haproxy-queue-ms", "5"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    rows = {"inputs": [{"name": "input", "shape": [40, 64], "datatype": "FP32",
                        "data": [1.0] * 40 * 64}]}  # fmt: skip

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(client.post(f"{url}/v2/models/digits/infer", json=rows) for _ in range(64))
            )

    server = CliServer([str(cli), "serve", "policies/digits.yaml", *flags], cwd=ROOT)
    with server:
        replies = asyncio.run(burst())
        assert {r.status_code for r in replies} == {200, 503}, {r.status_code for r in replies}
        refused = [r for r in replies if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" for r in refused)
        errors = [r.json()["error"] for r in refused]
        assert any("no model server could take the request within 5 ms" in e for e in errors)
        again = httpx.post(f"{url}/v2/models/digits/infer", json=rows, timeout=30)
        assert again.status_code == 200, again.text
    assert server.returncode == 0, server.output
    assert "at most 1 requests in the ingress replica" in server.output
