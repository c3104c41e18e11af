"""HTTP JSON, HTTP binary and gRPC side by side, on the edge runtime and on Ray, one run.

    python benchmarks/protocols.py [--rounds 3] [--requests 300] [--seconds 4] [--rows 1]

The digits policy (policies/digits.yaml) served by `cascade serve --grpc-port` pinned to
core 0 (edge, then Ray through its default HAProxy ingress), this client pinned to core 1.
Requests of ``--rows`` rows (1: single rows) from the digits test split, trace off, over
loopback:

- ``http-json``: ``POST /v2/models/digits/infer``, the input as JSON ``data`` (aiohttp);
- ``http-binary``: the same route with the binary tensor data extension (raw float32 after a
  JSON header; the outputs still JSON);
- ``grpc``: ``ModelInfer`` with ``raw_input_contents`` (Triton's default) on one grpc.aio
  channel (HTTP/2: the 16 concurrent calls share it).

p50/p99 at concurrency 1 (the protocols take turns request by request) and throughput at
concurrency 16 (one-second slices taking turns), over ``--rounds``; a throughput figure is
the median over rounds. The client's own CPU counts: it is one core, as the server is.
Writes ``benchmarks/results/protocols.json`` (``protocols-{rows}rows.json`` for more rows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
from _serve import ROOT, Server

from cascade._table import table
from cascade.edge.testing import free_port
from cascade.evaluate import ensure_models
from cascade.policy import read_policy
from cascade.serving._oip import grpc_service_pb2 as pb
from cascade.serving._oip.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from cascade.zoo import read_dataset

POLICY = ROOT / "policies" / "digits.yaml"
PROTOCOLS = ("http-json", "http-binary", "grpc")
CONCURRENCY = 16
Call = Callable[[np.ndarray], Awaitable[bool]]


def _json_body(row: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": list(row.shape), "datatype": "FP32",
                                   "data": row.ravel().tolist()}],
                       "parameters": {"trace": False}}).encode()  # fmt: skip


def _binary_body(row: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = row.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": list(row.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"trace": False}}).encode()  # fmt: skip
    headers = {"content-type": "application/octet-stream",
               "inference-header-content-length": str(len(header))}  # fmt: skip
    return header + raw, headers


def _grpc_request(row: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name="digits", raw_input_contents=[row.astype("<f4").tobytes()]
    )
    request.inputs.add(name="input", datatype="FP32", shape=list(row.shape))
    request.parameters["trace"].bool_param = False
    return request


class Clients:
    """One client per protocol, each able to hold ``CONCURRENCY`` requests at once.

    HTTP goes through aiohttp, not httpx (which the other benchmarks use): at about 3 ms of
    client CPU a request, httpx alone capped the HTTP rows near 300 req/s on the client's one
    core, measuring the client rather than the server.
    """

    def __init__(self, url: str, grpc_target: str) -> None:
        self.http = {
            p: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))
            for p in PROTOCOLS[:2]
        }
        self.channel = grpc.aio.insecure_channel(grpc_target)
        self.stub = GRPCInferenceServiceStub(self.channel)
        self.infer = f"{url}/v2/models/digits/infer"

    async def _post(self, protocol: str, body: bytes, headers: dict[str, str]) -> bool:
        async with self.http[protocol].post(self.infer, data=body, headers=headers) as response:
            await response.read()
            return response.status == 200

    async def http_json(self, row: np.ndarray) -> bool:
        return await self._post("http-json", _json_body(row), {"content-type": "application/json"})

    async def http_binary(self, row: np.ndarray) -> bool:
        return await self._post("http-binary", *_binary_body(row))

    async def grpc(self, row: np.ndarray) -> bool:
        try:
            await self.stub.ModelInfer(_grpc_request(row), timeout=30)
        except grpc.aio.AioRpcError:
            return False
        return True

    def calls(self) -> dict[str, Call]:
        return {"http-json": self.http_json, "http-binary": self.http_binary, "grpc": self.grpc}

    async def aclose(self) -> None:
        for client in self.http.values():
            await client.close()
        await self.channel.close()


async def _latency(calls: dict[str, Call], rows: np.ndarray, n: int) -> dict[str, list[float]]:
    """Milliseconds of ``n`` sequential requests per protocol, taking turns (after a warm-up)."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        for row in rows[:20]:
            assert await calls[name](row), f"{name}: warm-up request failed"
    for i in range(n):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            began = time.perf_counter()
            ok = await calls[name](rows[i % len(rows)])
            times[name].append((time.perf_counter() - began) * 1000)
            assert ok, f"{name}: request failed"
    return times


async def _throughput(
    calls: dict[str, Call],
    rows: np.ndarray,
    seconds: float,
    cpu_s: Callable[[], float],
    slice_s: float = 1.0,
) -> tuple[dict[str, float], dict[str, float]]:
    """Requests per second of each protocol at ``CONCURRENCY``, in slices taking turns, and
    the server's CPU ms per answered request (``cpu_s``: its process tree's CPU seconds)."""
    names = list(calls)
    done, failed = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    busy_s, server_s = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)

    async def worker(name: str, k: int, stop: float) -> None:
        i = k
        while time.perf_counter() < stop:
            if await calls[name](rows[i % len(rows)]):
                done[name] += 1
            else:
                failed[name] += 1
            i += CONCURRENCY

    for turn in range(max(1, round(seconds / slice_s))):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            began, cpu_began = time.perf_counter(), cpu_s()
            await asyncio.gather(*(worker(name, k, began + slice_s) for k in range(CONCURRENCY)))
            busy_s[name] += time.perf_counter() - began
            server_s[name] += cpu_s() - cpu_began
    for name in names:
        if failed[name]:
            print(f"  {name}: {failed[name]} requests failed", file=sys.stderr)
    rates = {name: done[name] / busy_s[name] for name in names}
    return rates, {name: server_s[name] * 1000 / max(1, done[name]) for name in names}


async def _measure(server: Server, grpc_port: int, rows: np.ndarray, args: Any) -> dict[str, Any]:
    clients = Clients(server.url, f"127.0.0.1:{grpc_port}")
    samples: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    rps: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    cpu_ms: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    try:
        for r in range(args.rounds):
            times = await _latency(clients.calls(), rows, args.requests)
            rates, costs = await _throughput(clients.calls(), rows, args.seconds, server.cpu_s)
            for p in PROTOCOLS:
                samples[p].extend(times[p])
                rps[p].append(rates[p])
                cpu_ms[p].append(costs[p])
                print(f"round {r + 1}/{args.rounds} {p}: p50 {statistics.median(times[p]):.2f} "
                      f"ms, {rates[p]:.0f} req/s", file=sys.stderr)  # fmt: skip
    finally:
        await clients.aclose()
    return {
        p: {
            "p50_ms": statistics.median(samples[p]),
            "p99_ms": float(np.percentile(samples[p], 99)),
            "rps": statistics.median(rps[p]),
            "rps_rounds": rps[p],
            "server_cpu_ms_per_request": statistics.median(cpu_ms[p]),
        }
        for p in PROTOCOLS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=300, help="requests at concurrency 1")
    parser.add_argument("--seconds", type=float, default=4.0, help="per throughput run")
    parser.add_argument("--runtimes", default="edge,ray")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()

    ensure_models(read_policy(POLICY), progress=True)
    test = np.asarray(read_dataset("digits").test.X, dtype=np.float32)
    # each "row" below is one request's block of --rows rows, shape [rows, 64]
    rows = np.stack([np.take(test, range(i, i + args.rows), axis=0, mode="wrap")
                     for i in range(0, len(test), args.rows)])  # fmt: skip
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the client on core 1; the server gets core 0
    results: dict[str, Any] = {}
    for runtime in args.runtimes.split(","):
        grpc_port = free_port()
        print(f"starting {runtime}", file=sys.stderr)
        server = Server(runtime, [POLICY], port=free_port(), core=0,
                        extra=["--grpc-port", str(grpc_port)])  # fmt: skip
        try:
            results[runtime] = asyncio.run(_measure(server, grpc_port, rows, args))
        finally:
            server.stop()

    body = []
    for runtime, measured in results.items():
        base = measured["http-json"]
        for p, r in measured.items():
            r["rps_vs_http_json"] = r["rps"] / base["rps"]
            r["p50_vs_http_json"] = r["p50_ms"] / base["p50_ms"]
            r["cpu_vs_http_json"] = (
                r["server_cpu_ms_per_request"] / base["server_cpu_ms_per_request"]
            )
            body.append([runtime, p, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                         f"{r['rps']:.0f}", f"{r['server_cpu_ms_per_request']:.2f}",
                         f"{r['rps_vs_http_json']:.2f}", f"{r['p50_vs_http_json']:.2f}",
                         f"{r['cpu_vs_http_json']:.2f}"])  # fmt: skip
    headers = ["runtime", "protocol", "p50 ms (c=1)", "p99 ms (c=1)", f"req/s (c={CONCURRENCY})",
               "server CPU ms/req", "req/s ratio", "p50 ratio", "CPU ratio"]  # fmt: skip
    print(table(headers, body))
    print("ratios: vs http-json on the same runtime")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / ("protocols.json" if args.rows == 1 else f"protocols-{args.rows}rows.json")
    out.write_text(json.dumps({"results": results, "rounds": args.rounds, "rows": args.rows,
                               "concurrency": CONCURRENCY}, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
