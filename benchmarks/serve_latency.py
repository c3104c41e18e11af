"""Serving latency and throughput on a local Ray Serve, all configurations in one run.

    python benchmarks/serve_latency.py [--requests 300] [--seconds 8]

(a) a bare one-deployment Serve app answering from the tiny ONNX model: the floor;
(b) cascade answering inline from tiny (a one-tier chain);
(c) cascade escalating about 20 % of rows to a `large` deployment;
(d) the large model behind a deployment, with and without ``@serve.batch``, at concurrency 32.

Single-row requests from the digits test split, over loopback, bounded in count and time:
p50/p99 at concurrency 1 and throughput at concurrency 16 (32 for d). Same Serve settings for
every configuration (max_ongoing_requests 64). Writes ``benchmarks/results/serve_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ray
from ray import serve
from starlette.requests import Request

from cascade.backends import OnnxModel
from cascade.evaluate import ensure_models
from cascade.policy import load_policy
from cascade.zoo import load_dataset
from cascade.zoo.cards import table
from deployments.app import build_app

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "policies" / "models" / "digits"
ONGOING = 64


def _rows(body: dict[str, Any]) -> np.ndarray:
    (tensor,) = body["inputs"]
    return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


def _reply(probabilities: np.ndarray) -> dict[str, Any]:
    output = {"name": "probabilities", "shape": list(probabilities.shape), "datatype": "FP32",
              "data": probabilities.ravel().tolist()}  # fmt: skip
    return {"outputs": [output]}


@serve.deployment(max_ongoing_requests=ONGOING, ray_actor_options={"num_cpus": 0.5})
class Bare:
    """The floor: parse the v2 body, run one ONNX model, answer. Nothing else."""

    def __init__(self, path: str) -> None:
        self.model = OnnxModel(path)

    async def __call__(self, request: Request) -> dict[str, Any]:
        probabilities = self.model.predict_sync(_rows(await request.json()))
        return _reply(probabilities)


@serve.deployment(max_ongoing_requests=ONGOING, ray_actor_options={"num_cpus": 0.5})
class Batched:
    """The same model, but concurrent requests are merged by ``@serve.batch``."""

    def __init__(self, path: str) -> None:
        self.model = OnnxModel(path)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def run(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(b) for b in batches]
        out = self.model.predict_sync(np.concatenate(batches))
        return list(np.split(out, np.cumsum(sizes)[:-1]))

    async def __call__(self, request: Request) -> dict[str, Any]:
        probabilities = await self.run(_rows(await request.json()))
        return _reply(probabilities)


def _body(row: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32",
                        "data": row.tolist()}], "parameters": {"trace": False}}  # fmt: skip


async def _latency(url: str, rows: np.ndarray, n: int) -> tuple[float, float]:
    async with httpx.AsyncClient(timeout=30) as client:
        for row in rows[:20]:  # warm-up
            (await client.post(url, json=_body(row))).raise_for_status()
        times = []
        for i in range(n):
            start = time.perf_counter()
            response = await client.post(url, json=_body(rows[i % len(rows)]))
            times.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
    return statistics.median(times), float(np.percentile(times, 99))


async def _throughput(url: str, rows: np.ndarray, concurrency: int, seconds: float) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = 0
    failed = 0
    stop = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient, k: int) -> None:
        nonlocal done, failed
        i = k
        while time.perf_counter() < stop:
            response = await client.post(url, json=_body(rows[i % len(rows)]))
            if response.status_code == 200:
                done += 1
            else:
                failed += 1
            i += concurrency

    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    if failed:
        print(f"  {failed} requests failed at {url}", file=sys.stderr)
    return done / elapsed


def _policy(directory: Path, name: str, chain: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {MODELS / 'tiny.onnx'}}}\n"
        f"  large: {{model: {MODELS / 'large.onnx'}, placement: deployment, "
        "batching: {max_batch_size: 64, max_wait_ms: 2}}\n"
        f"routing:\n  kind: confidence\n  chain:\n{chain}"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests at concurrency 1")
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput run")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()

    ensure_models(load_policy(ROOT / "policies" / "digits.yaml"), progress=True)
    rows = np.asarray(load_dataset("digits").test.X)
    tiny = OnnxModel(MODELS / "tiny.onnx").predict_sync(rows).max(axis=1)
    threshold = float(np.quantile(tiny, 0.2))  # ~20 % of rows fall below it and escalate
    workdir = Path(tempfile.mkdtemp())
    inline = _policy(workdir, "inline", "    - {tier: tiny}\n")
    escalating = _policy(
        workdir, "escalating", f"    - {{tier: tiny, threshold: {threshold:.6f}}}\n"
        "    - {tier: large}\n"
    )  # fmt: skip

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, dict[str, float]] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        plans: list[tuple[str, Any, str, int]] = [
            ("a bare tiny", Bare.bind(str(MODELS / "tiny.onnx")), "/", 16),
            ("b cascade inline", build_app({"policies": [str(inline)]}),
             "/v2/models/inline/infer", 16),
            ("c cascade ~20% escalated", build_app({"policies": [str(escalating)]}),
             "/v2/models/escalating/infer", 16),
            ("d large unbatched", Bare.bind(str(MODELS / "large.onnx")), "/", 32),
            ("d large @serve.batch", Batched.bind(str(MODELS / "large.onnx")), "/", 32),
        ]  # fmt: skip
        for name, app, path, concurrency in plans:
            print(f"{name}: deploying", file=sys.stderr)
            serve.run(app, name="bench", route_prefix="/")
            url = base + path
            p50, p99 = asyncio.run(_latency(url, rows, args.requests))
            rps = asyncio.run(_throughput(url, rows, concurrency, args.seconds))
            results[name] = {"p50_ms": p50, "p99_ms": p99, "rps": rps, "concurrency": concurrency}
            print(f"{name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, {rps:.0f} req/s", file=sys.stderr)
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()

    body = [
        [name, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['rps']:.0f}", str(r["concurrency"])]
        for name, r in results.items()
    ]
    print(table(["configuration", "p50 ms (c=1)", "p99 ms (c=1)", "req/s", "at concurrency"], body))
    a, b = results["a bare tiny"], results["b cascade inline"]
    c = results["c cascade ~20% escalated"]
    d0, d1 = results["d large unbatched"], results["d large @serve.batch"]
    ratios = {
        "b/a p50 (target <= 1.15)": b["p50_ms"] / a["p50_ms"],
        "b/a throughput at 16 (target >= 0.95)": b["rps"] / a["rps"],
        "c/b throughput at 16 (target >= 0.8)": c["rps"] / b["rps"],
        "d batched/unbatched throughput at 32": d1["rps"] / d0["rps"],
    }
    print()
    for label, value in ratios.items():
        print(f"{label}: {value:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "serve_latency.json"
    out.write_text(json.dumps({"results": results, "ratios": ratios,
                               "escalation_threshold": threshold}, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
