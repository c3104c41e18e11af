"""`cascade serve` as a user runs it: a subprocess that serves, answers, and stops on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve")

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_cascade_serve_starts_answers_and_stops_cleanly() -> None:
    port = _free_port()
    cli = Path(sys.executable).with_name("cascade")
    process = subprocess.Popen(
        [str(cli), "serve", str(ROOT / "policies" / "digits.yaml"), "--port", str(port),
         "--num-cpus", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    announced = threading.Event()

    def read() -> None:  # the user waits for the "serving ..." line; so does the test
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("serving "):
                announced.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert announced.wait(timeout=180), "".join(lines)
        assert httpx.get(f"{url}/v2/models/digits/ready", timeout=10).status_code == 200
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                            "data": [0.0] * 64}]}  # fmt: skip
        response = httpx.post(f"{url}/v2/models/digits/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert httpx.get(f"{url}/openapi.json", timeout=10).json()["info"]["title"] == "cascade"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    output = "".join(lines)
    assert process.returncode == 0, output
    assert f"serving digits at {url}/v2/models/<name>/infer" in output
    assert output.rstrip().endswith("stopped")
