"""The edge runtime beside Ray Serve, and split inference with the cluster reachable or not.

    python benchmarks/edge.py [--requests 400] [--seconds 5] [--rounds 2]

(a) The same policy (`policies/covertype.yaml`: a 20-tree forest inline, boosting for the
    unsure rows) served by `cascade serve` on a local Ray and by `cascade serve --runtime
    edge` (one process, uvicorn, no Ray), both as subprocesses, both up at once. At
    concurrency 1 the two take turns request by request (single-row JSON requests from the
    covertype test split): p50/p99 as the client sees it, and the server's CPU per request
    (user + system time of its whole process tree over the phase, divided by its requests:
    for Ray that is the driver, GCS, raylet, Serve controller, proxy and replicas, idle
    work included, because the box pays for it). Then each alone at concurrency 16
    (closed loop, ``--seconds`` per round, rounds alternating): requests per second, median
    over rounds. RSS: the edge process; for Ray the sum over its process tree (and the sum
    of PSS, which counts shared pages once).
(b) Split inference: `policies/covertype-edge.yaml` on the edge (tiny + INT8 student
    local) with its large tier the Ray cluster of (a), reached through a local proxy that
    can delay or drop the way: reachable, slow (400 ms injected, past the tier's 250 ms
    timeout) and down (the proxy stops listening). The same rows each time: accuracy,
    escalation (rows routed to the remote tier), rows the remote answered, degraded rows,
    p50/p99 at concurrency 1, and any 5xx. Beside them: the cluster alone on the same rows.

Writes ``benchmarks/results/edge.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import yaml

from cascade._table import table
from cascade.edge.testing import FlakyEndpoint, free_port, proxy_app
from cascade.evaluate import ensure_models
from cascade.policy import read_policy
from cascade.zoo import read_dataset

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "covertype.yaml"
EDGE_POLICY = ROOT / "policies" / "covertype-edge.yaml"
CLI = Path(sys.executable).with_name("cascade")
SLOW_MS = 400.0


class Served:
    """A `cascade serve` subprocess, up once it prints its "serving" line."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(CLI), "serve", *argv, "--port", str(port), "--no-progress"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(timeout=300):
            self.stop()
            raise RuntimeError("".join(self.lines[-40:]))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("serving "):
                self.ready.set()

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def cpu_s(self) -> float:
        total = 0.0
        for process in self.tree():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def memory_mb(self) -> dict[str, float]:
        rss = pss = 0.0
        processes = self.tree()
        for process in processes:
            try:
                info = process.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            except psutil.Error:
                pass
        return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "processes": len(processes)}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _body(row: np.ndarray) -> bytes:
    tensor = {"name": "input", "shape": [1, len(row)], "datatype": "FP32",
              "data": [float(v) for v in row]}  # fmt: skip
    return json.dumps({"inputs": [tensor], "parameters": {"trace": True}}).encode()


def _percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def runtimes_at_c1(servers: dict[str, Served], rows: np.ndarray) -> dict[str, dict[str, Any]]:
    """Both servers take turns request by request; client latency, server CPU per request."""
    clients = {name: httpx.Client(base_url=s.url, timeout=30) for name, s in servers.items()}
    headers = {"content-type": "application/json"}
    bodies = [_body(r) for r in rows]
    for client in clients.values():  # warm-up: connections, first sessions, caches
        for body in bodies[:20]:
            client.post("/v2/models/covertype/infer", content=body, headers=headers)
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    cpu0 = {name: s.cpu_s() for name, s in servers.items()}
    for body in bodies:
        for name, client in clients.items():
            began = time.perf_counter()
            response = client.post("/v2/models/covertype/infer", content=body, headers=headers)
            latencies[name].append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, response.text
    out = {}
    for name, server in servers.items():
        p50, p99 = _percentiles(latencies[name])
        cpu_ms = (server.cpu_s() - cpu0[name]) * 1000 / len(bodies)
        out[name] = {"p50_ms": p50, "p99_ms": p99, "cpu_ms_per_request": cpu_ms}
        clients[name].close()
    return out


async def _closed_loop(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> float:
    headers = {"content-type": "application/json"}
    done = 0
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        stop_at = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.perf_counter() < stop_at:
                r = await client.post("/v2/models/covertype/infer", content=bodies[i % len(bodies)],
                                      headers=headers)  # fmt: skip
                assert r.status_code == 200, r.text
                done += 1
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return done / (time.perf_counter() - began)


def throughput(servers: dict[str, Served], rows: np.ndarray, *, seconds: float,
               rounds: int) -> dict[str, float]:  # fmt: skip
    bodies = [_body(r) for r in rows]
    rates: dict[str, list[float]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, server in servers.items():
            rates[name].append(asyncio.run(_closed_loop(server.url, bodies, seconds, 16)))
    return {name: statistics.median(values) for name, values in rates.items()}


def _edge_policy(directory: Path, remote: str) -> Path:
    """covertype-edge with its remote tier at ``remote`` and absolute model paths."""
    document = yaml.safe_load(EDGE_POLICY.read_text())
    document["allow_outside_paths"] = True
    for tier in document["tiers"].values():
        if tier["model"].startswith("http"):
            tier["model"] = remote
        else:
            tier["model"] = str((EDGE_POLICY.parent / tier["model"]).resolve())
    path = directory / "covertype-edge.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def split_run(url: str, model: str, rows: np.ndarray, labels: np.ndarray,
              classes: list[str]) -> dict[str, Any]:  # fmt: skip
    """Single-row requests at concurrency 1: accuracy, escalation, degraded, latency."""
    headers = {"content-type": "application/json"}
    latencies, answers, escalated, remote, degraded, errors = [], [], 0, 0, 0, 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for row in rows:
            began = time.perf_counter()
            response = client.post(f"/v2/models/{model}/infer", content=_body(row),
                                   headers=headers)  # fmt: skip
            latencies.append((time.perf_counter() - began) * 1000)
            if response.status_code >= 500:
                errors += 1
                answers.append(None)
                continue
            body = response.json()
            label = {o["name"]: o for o in body["outputs"]}["label"]["data"][0]
            answers.append(classes.index(label))
            (decision,) = json.loads(body["parameters"]["trace"])
            escalated += any(s["tier"] == "large" for s in decision["steps"])
            remote += decision["answered_by"] == "large"
            degraded += bool(decision["degraded"])
    n = len(rows)
    p50, p99 = _percentiles(latencies)
    correct = sum(a == y for a, y in zip(answers, labels, strict=True))
    return {"accuracy": correct / n, "escalated": escalated / n, "remote_answered": remote / n,
            "degraded": degraded / n, "p50_ms": p50, "p99_ms": p99, "5xx": errors}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per c=1 phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per c=16 round")
    parser.add_argument("--rounds", type=int, default=2, help="c=16 rounds per runtime")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()

    for path in (POLICY, EDGE_POLICY):
        ensure_models(read_policy(path), progress=False)
    data = read_dataset("covertype")
    rows = np.asarray(data.test.X[: args.requests], np.float32)
    labels = np.asarray(data.test.y[: args.requests])
    classes = [str(c) for c in data.classes]

    print("starting the Ray runtime and the edge runtime ...", flush=True)
    ray_server = Served([str(POLICY), "--num-cpus", "2"], free_port())
    edge_server = Served(["--runtime", "edge", str(POLICY)], free_port())
    servers = {"ray": ray_server, "edge": edge_server}
    proxy = FlakyEndpoint(proxy_app(ray_server.url))
    split: Served | None = None
    try:
        c1 = runtimes_at_c1(servers, rows)
        rates = throughput(servers, rows, seconds=args.seconds, rounds=args.rounds)
        memory = {name: s.memory_mb() for name, s in servers.items()}
        edge_server.stop()  # the split phase's edge process runs alone beside the cluster

        proxy.start()
        with tempfile.TemporaryDirectory() as tmp:
            policy = _edge_policy(Path(tmp), f"{proxy.url}/v2/models/covertype")
            split = Served(["--runtime", "edge", str(policy)], free_port())
            modes: dict[str, dict[str, Any]] = {}
            modes["cluster alone"] = split_run(ray_server.url, "covertype", rows, labels, classes)
            for mode, label in (("ok", "reachable"), ("slow", f"slow (+{SLOW_MS:g} ms)"),
                                ("down", "down")):  # fmt: skip
                proxy.set(mode, delay_ms=SLOW_MS)  # type: ignore[arg-type]
                modes[label] = split_run(split.url, "covertype-edge", rows, labels, classes)
            split_memory = split.memory_mb()
    finally:
        proxy.stop()
        for server in (split, edge_server, ray_server):
            if server is not None:
                server.stop()

    results: dict[str, Any] = {
        name: {**c1[name], "requests_per_s_c16": rates[name], **memory[name]} for name in servers
    }
    ratios = {
        "p50 ray/edge": c1["ray"]["p50_ms"] / c1["edge"]["p50_ms"],
        "cpu per request ray/edge": c1["ray"]["cpu_ms_per_request"]
        / c1["edge"]["cpu_ms_per_request"],
        "req/s c16 edge/ray": rates["edge"] / rates["ray"],
        "rss ray/edge": memory["ray"]["rss_mb"] / memory["edge"]["rss_mb"],
    }
    print("\n(a) covertype.yaml, edge runtime vs Ray Serve runtime (same machine, same policy)")
    print(table(
        ["runtime", "p50 ms c=1", "p99 ms c=1", "server CPU ms/req", "req/s c=16", "RSS MB",
         "PSS MB", "processes"],
        [[name, f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['cpu_ms_per_request']:.2f}",
          f"{r['requests_per_s_c16']:.0f}", f"{r['rss_mb']:.0f}", f"{r['pss_mb']:.0f}",
          str(r["processes"])] for name, r in results.items()],
    ))  # fmt: skip
    print("ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    print(f"\n(b) split inference, covertype-edge.yaml ({len(rows)} single-row requests, c=1)")
    print(table(
        ["remote tier", "accuracy", "escalated", "remote answered", "degraded", "p50 ms",
         "p99 ms", "5xx"],
        [[mode, f"{r['accuracy']:.4f}", f"{r['escalated']:.1%}", f"{r['remote_answered']:.1%}",
          f"{r['degraded']:.1%}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", str(r["5xx"])]
         for mode, r in modes.items()],
    ))  # fmt: skip
    print(f"edge process serving covertype-edge: {split_memory['rss_mb']:.0f} MB RSS "
          "(target < 400 MB)")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "edge.json"
    settings = vars(args) | {"out": str(args.out)}
    document = {"runtimes": results, "ratios": ratios, "split": modes,
                "split_edge_memory": split_memory, "settings": settings}  # fmt: skip
    out.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
