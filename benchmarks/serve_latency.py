"""Serving latency and throughput on a local Ray Serve, all configurations in one run.

    python benchmarks/serve_latency.py [--rounds 3] [--requests 200] [--seconds 5]

(a) a bare one-deployment Serve app answering from the tiny ONNX model: the floor;
(b) cascade answering inline from tiny (a one-tier chain);
(c) cascade escalating about 20 % of rows to a `large` deployment;
(d) each digits tier (tiny, small, large), and two ONNX cost probes (random-weight MLPs
    costing about 0.3 and 2 ms a row alone), behind a deployment with and without ``@serve.batch``
    at concurrency 32: does per-tier batching pay, and from what model cost?

Single-row requests from the digits test split, over loopback, bounded in count and time:
p50/p99 at concurrency 1 and throughput at concurrency 16 (32 for d). Every app is deployed
at once; at concurrency 1 the configurations take turns request by request, and under load
in one-second slices, so slow spells of this shared machine fall on all of them alike. A
throughput figure is the median over rounds (latency percentiles over the pooled requests).
Same Serve settings for every configuration (max_ongoing_requests 64).
Writes ``benchmarks/results/serve_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

from cascade._table import table
from cascade.backends import OnnxModel
from cascade.evaluate import ensure_models
from cascade.policy import read_policy
from cascade.zoo import read_dataset
from deployments.app import build_app

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "policies" / "models" / "digits"
ONGOING = 64
TIERS = ("tiny", "small", "large")
PROBES = ((2048, 2), (2048, 4))  # (hidden width, hidden layers) of the cost probes


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


async def _latency(urls: dict[str, str], rows: np.ndarray, n: int) -> dict[str, list[float]]:
    """Milliseconds of ``n`` sequential requests to each url (after a warm-up).

    The configurations take turns request by request, in a rotating order, so a slow spell
    of this shared machine falls on all of them alike rather than on one block of requests.
    """
    names = list(urls)
    times: dict[str, list[float]] = {name: [] for name in names}
    async with httpx.AsyncClient(timeout=30) as client:
        for name in names:
            for row in rows[:20]:  # warm-up
                (await client.post(urls[name], json=_body(row))).raise_for_status()
        for i in range(n):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                response = await client.post(urls[name], json=_body(rows[i % len(rows)]))
                times[name].append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
    return times


async def _throughput(
    targets: dict[str, tuple[str, int]], rows: np.ndarray, seconds: float, slice_s: float = 1.0
) -> dict[str, float]:
    """Requests per second of each ``name: (url, concurrency)`` over ``seconds`` of load.

    The load comes in slices of ``slice_s`` that take turns across configurations, in a
    rotating order, so a slow spell of this shared machine falls on all of them alike.
    """
    names = list(targets)
    done = dict.fromkeys(names, 0)
    failed = dict.fromkeys(names, 0)
    busy_s = dict.fromkeys(names, 0.0)

    async def worker(client: httpx.AsyncClient, name: str, k: int, stop: float) -> None:
        url, concurrency = targets[name]
        i = k
        while time.perf_counter() < stop:
            response = await client.post(url, json=_body(rows[i % len(rows)]))
            if response.status_code == 200:
                done[name] += 1
            else:
                failed[name] += 1
            i += concurrency

    clients = {
        name: httpx.AsyncClient(
            timeout=30, limits=httpx.Limits(max_connections=c, max_keepalive_connections=c)
        )
        for name, (_, c) in targets.items()
    }
    try:
        for turn in range(max(1, round(seconds / slice_s))):
            shift = turn % len(names)
            for name in names[shift:] + names[:shift]:
                began = time.perf_counter()
                stop = began + slice_s
                concurrency = targets[name][1]
                await asyncio.gather(
                    *(worker(clients[name], name, k, stop) for k in range(concurrency))
                )
                busy_s[name] += time.perf_counter() - began
    finally:
        for client in clients.values():
            await client.aclose()
    for name in names:
        if failed[name]:
            print(f"  {failed[name]} requests failed at {targets[name][0]}", file=sys.stderr)
    return {name: done[name] / busy_s[name] for name in names}


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


def _cost_probe(path: Path, hidden: int, layers: int) -> Path:
    """An ONNX MLP of chosen size, 64 features in, 10 probabilities out: a dial for model cost.

    Its weights are random; it stands for an expensive tier only in what it costs to run,
    which is all the batching comparison needs. The digits tiers cost microseconds.
    """
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    sizes = [64, *[hidden] * layers, 10]
    nodes, weights, current = [], [], "input"
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{k}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{k}"], [f"h{k}"]))
        current = f"h{k}"
        if k < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{k}"]))
            current = f"r{k}"
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        f"cost_probe_{hidden}x{layers}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 10])],
        weights,
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _model_cost_us(path: Path, rows: np.ndarray) -> dict[str, float]:
    """In-process cost of one row, alone and within a batch of 32, in µs."""
    model = OnnxModel(path)
    out = {}
    for label, size, reps in (("batch 1", 1, 300), ("batch 32", 32, 30)):
        batch = rows[:size]
        model.predict_sync(batch)
        began = time.perf_counter()
        for _ in range(reps):
            model.predict_sync(batch)
        out[label] = (time.perf_counter() - began) / reps / size * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=200, help="requests at concurrency 1")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()

    ensure_models(read_policy(ROOT / "policies" / "digits.yaml"), progress=True)
    rows = np.asarray(read_dataset("digits").test.X)
    tiny = OnnxModel(MODELS / "tiny.onnx").predict_sync(rows).max(axis=1)
    threshold = float(np.quantile(tiny, 0.2))  # ~20 % of rows fall below it and escalate
    workdir = Path(tempfile.mkdtemp())
    tiers = {tier: MODELS / f"{tier}.onnx" for tier in TIERS}
    for hidden, layers in PROBES:
        tiers[f"probe {hidden}x{layers}"] = _cost_probe(
            workdir / f"probe_{hidden}x{layers}.onnx", hidden, layers
        )
    costs = {tier: _model_cost_us(path, rows) for tier, path in tiers.items()}
    inline = _policy(workdir, "inline", "    - {tier: tiny}\n")
    escalating = _policy(
        workdir, "escalating", f"    - {{tier: tiny, threshold: {threshold:.6f}}}\n"
        "    - {tier: large}\n"
    )  # fmt: skip

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    # Logical CPUs, so that every app fits at once; the machine has what it has.
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False)
    base = f"http://127.0.0.1:{port}"
    plans: list[tuple[str, Any, str, int]] = [
        ("a bare tiny", Bare.bind(str(MODELS / "tiny.onnx")), "/", 16),
        ("b cascade inline", build_app({"policies": [str(inline)]}),
         "/v2/models/inline/infer", 16),
        ("c cascade ~20% escalated", build_app({"policies": [str(escalating)]}),
         "/v2/models/escalating/infer", 16),
    ]  # fmt: skip
    for tier, tier_path in tiers.items():
        path = str(tier_path)
        plans.append((f"d {tier} unbatched", Bare.bind(path), "/", 32))
        plans.append((f"d {tier} @serve.batch", Batched.bind(path), "/", 32))
    samples: dict[str, list[float]] = {name: [] for name, *_ in plans}
    rps: dict[str, list[float]] = {name: [] for name, *_ in plans}
    urls: dict[str, str] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for k, (name, app, path, _) in enumerate(plans):
            print(f"deploying {name}", file=sys.stderr)
            serve.run(app, name=f"app{k}", route_prefix=f"/app{k}")
            urls[name] = f"{base}/app{k}{path}".rstrip("/")
        for r in range(args.rounds):
            times = asyncio.run(_latency(urls, rows, args.requests))
            targets = {name: (urls[name], concurrency) for name, _, _, concurrency in plans}
            rates = asyncio.run(_throughput(targets, rows, args.seconds))
            for name, _, _, _ in plans:
                samples[name].extend(times[name])
                rps[name].append(rates[name])
                print(f"round {r + 1}/{args.rounds} {name}: p50 "
                      f"{statistics.median(times[name]):.2f} ms, {rps[name][-1]:.0f} req/s",
                      file=sys.stderr)  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()

    results = {
        name: {
            "p50_ms": statistics.median(samples[name]),
            "p99_ms": float(np.percentile(samples[name], 99)),
            "rps": statistics.median(rps[name]),
            "rps_rounds": rps[name],
            "concurrency": concurrency,
        }
        for name, _, _, concurrency in plans
    }
    body = [
        [name, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['rps']:.0f}",
         " ".join(f"{x:.0f}" for x in r["rps_rounds"]), str(r["concurrency"])]
        for name, r in results.items()
    ]  # fmt: skip
    print(table(["configuration", "p50 ms (c=1)", "p99 ms (c=1)", "req/s (median)",
                 "req/s per round", "at concurrency"], body))  # fmt: skip
    print()
    cost_rows = [[t, f"{c['batch 1']:.1f}", f"{c['batch 32']:.1f}"] for t, c in costs.items()]
    print(table(["tier", "µs/row at batch 1", "µs/row at batch 32"], cost_rows))
    a, b = results["a bare tiny"], results["b cascade inline"]
    c = results["c cascade ~20% escalated"]
    ratios = {
        "b/a p50 (target <= 1.15)": b["p50_ms"] / a["p50_ms"],
        "b/a throughput at 16 (target >= 0.95)": b["rps"] / a["rps"],
        "c/b throughput at 16 (target >= 0.8)": c["rps"] / b["rps"],
    }
    for tier in tiers:
        batched, unbatched = results[f"d {tier} @serve.batch"], results[f"d {tier} unbatched"]
        ratios[f"d {tier} batched/unbatched throughput at 32"] = batched["rps"] / unbatched["rps"]
    print()
    for label, value in ratios.items():
        print(f"{label}: {value:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "serve_latency.json"
    out.write_text(json.dumps({"results": results, "ratios": ratios, "model_cost_us": costs,
                               "escalation_threshold": threshold, "rounds": args.rounds},
                              indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
