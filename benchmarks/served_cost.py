"""Served cost: the cascade's saving as served, beside what the models alone predict.

    python benchmarks/served_cost.py [--datasets covertype clinc150] [--rows 1 16 64 256]
                                     [--runtimes ray edge] [--seconds 6] [--rounds 2]

For each runtime (`cascade serve` on a local Ray, and `cascade serve --runtime edge`), one
server process tree pinned to one core (`taskset`), this client pinned to the other, closed
loop (``--clients`` 8), pre-encoded requests of the test split (numbers in the binary tensor
extension; texts as JSON ``BYTES``), three configurations of each dataset's shipped policy
served at once: always-large (the dearest tier, placed as in the policy), the calibrated
cascade, and always-cheap (the chain's first tier, inline). Every configuration and request
size is measured in each round, rounds alternating, so slow spells of this shared machine
fall on all of them; the figure is the median over rounds.

Per cell: capacity (requests/s), server CPU per request and per row (the server's whole
process tree, Ray's background processes included). Per dataset and size: the served ratio
(cascade capacity / always-large's) beside what the models alone predict — the offline
``relative_cost`` (cards, batch 256), the model time at the batches each tier sees at that
request size (``cascade.evaluate.CostModel``, from the cards), and the models **timed**: each
tier's graph run in process, on the server's core, on exactly the rows each request sends it
(no serving work: the ceiling any server can reach) — and the served cost model with the
overheads measured here. The overheads (server CPU per request beyond the models, per hop to a
deployment tier) are fitted from always-cheap (no hop) and always-large (one hop) and written
to ``benchmarks/results/served_cost.json`` under ``overheads``, where ``cascade evaluate``,
``calibrate --cost served`` and ``plan`` read them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _serve import Server

from cascade._table import table
from cascade.bench import infer_body
from cascade.catalog import resolve_tiers
from cascade.evaluate import Evaluator, ensure_models
from cascade.evaluate._served_cost import CostModel, Overheads
from cascade.policy import read_policy
from cascade.zoo import read_dataset

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("cascade")
CONFIGS = ("always-large", "cascade", "always-cheap")


def _variants(dataset: str, work: Path) -> dict[str, Path]:
    """The three configurations of ``policies/DATASET.yaml`` as policy files in ``work``.

    Each tier keeps its placement and batching; tier timeouts are lifted to a minute, so that
    a closed loop of large requests measures capacity, not the shipped 1 s timeout."""
    source = ROOT / "policies" / f"{dataset}.yaml"
    loaded = read_policy(source)
    ensure_models(loaded, progress=True)
    policy = loaded.policy.model_dump(mode="json", exclude_none=True)
    chain = [step["tier"] for step in policy["routing"]["chain"]]
    large, cheap = chain[-1], chain[0]
    for name, tier in policy["tiers"].items():
        tier["model"] = str(loaded.model_path(name))
        tier["timeout_ms"] = 60_000
    policy["allow_outside_paths"] = True

    def variant(config: str, tiers: list[str], placement: str | None = None) -> dict[str, Any]:
        out = {**policy, "name": f"{dataset}-{config}"}
        out["tiers"] = {t: dict(policy["tiers"][t]) for t in tiers}
        if placement is not None:
            for t in tiers:
                out["tiers"][t]["placement"] = placement
        if tiers != chain:
            out["routing"] = {"kind": "confidence", "chain": [{"tier": tiers[0]}]}
            out.pop("provenance", None)
        return out

    bodies = {
        "always-large": variant("always-large", [large]),
        "cascade": variant("cascade", chain),
        "always-cheap": variant("always-cheap", [cheap], placement="inline"),
    }
    paths = {}
    for config, body in bodies.items():
        paths[config] = work / f"{dataset}-{config}.yaml"
        paths[config].write_text(json.dumps(body, indent=1))  # JSON is YAML
    return paths


def _requests(dataset: str, rows: int, count: int = 64) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` pre-encoded requests of ``rows`` test rows each (numbers binary, texts JSON),
    drawn in a seeded random order: test splits may be grouped by class (CLINC150's is), and
    a run of one class escalates differently from the split the predictions are made on."""
    X = np.asarray(read_dataset(dataset).test.X)
    order = np.random.default_rng(0).permutation(len(X))
    out = []
    for i in range(count):
        start = (i * rows) % max(1, len(X) - rows)
        chunk = X[order[start : start + rows]]
        if isinstance(chunk[0], str):
            tensor = {"name": "text", "shape": [len(chunk)], "datatype": "BYTES",
                      "data": [str(t) for t in chunk]}  # fmt: skip
            body = json.dumps({"inputs": [tensor], "parameters": {"trace": False}}).encode()
            out.append((body, {"content-type": "application/json"}))
            continue
        body, header_length = infer_body("input", chunk, {"trace": False}, binary=True)
        headers = {"content-type": "application/json",
                   "inference-header-content-length": str(header_length)}  # fmt: skip
        out.append((body, headers))
    return out


async def _closed_loop(
    url: str, requests: list[tuple[bytes, dict[str, str]]], seconds: float, clients: int
) -> tuple[int, list[float], int]:
    done = 0
    latencies: list[float] = []
    failed: list[str] = []
    stop = time.perf_counter() + seconds

    async def one_client(client: httpx.AsyncClient, k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            body, headers = requests[i % len(requests)]
            began = time.perf_counter()
            reply = await client.post(url, content=body, headers=headers)
            i += clients
            if reply.status_code != 200:
                failed.append(f"{reply.status_code} {reply.text[:200]}")
                continue
            latencies.append((time.perf_counter() - began) * 1000)
            done += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(one_client(client, k) for k in range(clients)))
    if failed:
        print(f"{url}: {len(failed)} failed, e.g. {failed[0]}", file=sys.stderr)
    return done, latencies, len(failed)


def _measure(
    server: Server, url: str, requests: Any, seconds: float, clients: int
) -> dict[str, Any]:
    asyncio.run(_closed_loop(url, requests, min(1.0, seconds), clients))  # warm-up
    cpu0, began = server.cpu_s(), time.perf_counter()
    done, latencies, failed = asyncio.run(_closed_loop(url, requests, seconds, clients))
    elapsed, cpu = time.perf_counter() - began, server.cpu_s() - cpu0
    return {"rps": done / elapsed, "cpu_ms_per_request": cpu / max(done, 1) * 1000,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
            "requests": done, "failed": failed}  # fmt: skip


def _predictions(dataset: str, paths: dict[str, Path], rows: list[int]) -> dict[str, Any]:
    """Offline figures of the cascade: relative cost (cards), reach, and model time per
    request of each configuration at each request size."""
    loaded = read_policy(paths["cascade"])
    evaluator = Evaluator(loaded)
    split = read_dataset(dataset).test
    X, y = np.asarray(split.X), np.asarray(split.y)
    evaluated = {r.name: r for r in evaluator.evaluate(X, y)}
    cascade = evaluated[loaded.policy.name]
    chain = [s.tier for s in loaded.policy.chain_routing.chain]  # type: ignore[union-attr]
    reach = {
        "cascade": cascade.tier_rates,
        "always-large": {chain[-1]: 1.0},
        "always-cheap": {chain[0]: 1.0},
    }
    none = Overheads("models alone", 0.0, 0.0, "no serving work")
    model_us = {
        config: {
            r: CostModel.for_policy(loaded, evaluator.tiers, rows_per_request=r, overheads=none)
            .request(reach[config]).model_us
            for r in rows
        }
        for config in CONFIGS
    }  # fmt: skip
    return {
        "relative_cost": cascade.relative_cost,
        "accuracy": {
            "cascade": cascade.accuracy,
            "always-large": evaluated[f"always-{chain[-1]}"].accuracy,
        },
        "reach": reach,
        "model_us": model_us,
        "hop": {
            config: loaded.policy.tiers[next(iter(reach[config]))].placement == "deployment"
            for config in ("always-large", "always-cheap")
        },
        "tiers": {n: str(i.path) for n, i in resolve_tiers(loaded).items()},
    }


def _chunks(dataset: str, rows: int, count: int) -> list[np.ndarray]:
    """The rows of the first ``count`` requests ``_requests`` sends, in the same order."""
    X = np.asarray(read_dataset(dataset).test.X)
    order = np.random.default_rng(0).permutation(len(X))
    starts = [(i * rows) % max(1, len(X) - rows) for i in range(count)]
    return [X[order[s : s + rows]] for s in starts]


def _timed_models(
    dataset: str, paths: dict[str, Path], rows: list[int], *, requests: int = 16
) -> dict[int, dict[str, float]]:
    """The models' own time per request, measured: each tier's ONNX graph run in this process
    on exactly the rows a request sends it (the cascade's escalated rows found by replaying
    the request through the engine), no serving work at all. Best of three passes over
    ``requests`` requests; ms per request by configuration."""
    loaded = read_policy(paths["cascade"])
    evaluator = Evaluator(loaded)
    chain = [s.tier for s in loaded.policy.chain_routing.chain]  # type: ignore[union-attr]
    cheap, large = chain[0], chain[-1]
    models = evaluator.backends
    out: dict[int, dict[str, float]] = {}
    for size in rows:
        work: dict[str, list[tuple[str, np.ndarray]]] = {c: [] for c in CONFIGS}
        for chunk in _chunks(dataset, size, requests):
            decisions = evaluator.replay(loaded.policy, chunk).decisions
            reached = {t: np.array([any(s.tier == t for s in d.steps) for d in decisions])
                       for t in chain}  # fmt: skip
            work["always-large"].append((large, chunk))
            work["always-cheap"].append((cheap, chunk))
            work["cascade"] += [(t, chunk[reached[t]]) for t in chain if reached[t].any()]
        timed: dict[str, float] = {}
        for config, calls in work.items():
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for tier, batch in calls:
                    models[tier].predict_sync(batch)
                best = min(best, time.perf_counter() - started)
            timed[config] = best * 1000 / requests
        out[size] = timed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["covertype", "clinc150"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 16, 64, 256])
    parser.add_argument("--runtimes", nargs="+", choices=("ray", "edge"), default=["ray", "edge"])
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    server_core, client_cores = cores[0], set(cores[1:]) or {cores[0]}
    work = Path(tempfile.mkdtemp(prefix="served-cost-"))
    paths = {d: _variants(d, work) for d in args.datasets}
    predicted = {d: _predictions(d, paths[d], args.rows) for d in args.datasets}
    os.sched_setaffinity(0, {server_core})  # the models timed on the server's core, alone
    print("timing the models alone on the server's core", file=sys.stderr)
    timed = {d: _timed_models(d, paths[d], args.rows) for d in args.datasets}
    os.sched_setaffinity(0, client_cores)
    print(f"server on core {server_core}, client on {sorted(client_cores)}", file=sys.stderr)
    requests = {(d, r): _requests(d, r) for d in args.datasets for r in args.rows}
    measured: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i, runtime in enumerate(args.runtimes):
        policies = [p for d in args.datasets for p in paths[d].values()]
        server = Server(runtime, policies, port=18000 + i, core=server_core)
        try:
            for round_ in range(args.rounds):
                for dataset in args.datasets:
                    for rows in args.rows:
                        for config in CONFIGS:
                            key = f"{runtime}|{dataset}|{rows}|{config}"
                            url = f"{server.url}/v2/models/{dataset}-{config}/infer"
                            print(f"round {round_ + 1}: {key}", file=sys.stderr)
                            cell = _measure(server, url, requests[dataset, rows], args.seconds,
                                            args.clients)  # fmt: skip
                            measured.setdefault(key, {}).setdefault("rounds", []).append(cell)
        finally:
            server.stop()

    def median(key: str, field: str) -> float:
        return statistics.median(c[field] for c in measured[key]["rounds"])

    # overheads, a fixed part and a part per row (least squares over sizes and datasets):
    # always-cheap pays the request's work and no hop, always-large one hop more
    def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
        if not points:
            return 0.0, 0.0
        rows = np.array([r for r, _ in points], dtype=float)
        us = np.array([u for _, u in points], dtype=float)
        if len(set(rows)) < 2:
            return max(0.0, float(us.mean())), 0.0
        slope, fixed = np.polyfit(rows, us, 1)
        return max(0.0, float(fixed)), max(0.0, float(slope))

    overheads = {}
    for runtime in args.runtimes:
        request_points, hop_points = [], []
        for dataset in args.datasets:
            p = predicted[dataset]
            for rows in args.rows:
                cheap = median(f"{runtime}|{dataset}|{rows}|always-cheap", "cpu_ms_per_request")
                large = median(f"{runtime}|{dataset}|{rows}|always-large", "cpu_ms_per_request")
                per_request = cheap * 1000 - p["model_us"]["always-cheap"][rows]
                request_points.append((rows, per_request))
                if p["hop"]["always-large"] and runtime == "ray":  # the edge has no hop
                    hop = large * 1000 - p["model_us"]["always-large"][rows] - per_request
                    hop_points.append((rows, hop))
        request_fit, hop_fit = fit(request_points), fit(hop_points)
        overheads[runtime] = {
            "request_us": request_fit[0], "request_us_per_row": request_fit[1],
            "hop_us": hop_fit[0], "hop_us_per_row": hop_fit[1],
            "note": f"benchmarks/served_cost.py, {time.strftime('%Y-%m-%d')}, one pinned core, "
            f"fitted on {', '.join(args.datasets)} at {args.rows} rows per request",
        }  # fmt: skip

    body, checks, cells = [], {}, {}
    for runtime in args.runtimes:
        o = overheads[runtime]
        fitted = Overheads(runtime, o["request_us"], o["hop_us"], "fitted in this run",
                           o["request_us_per_row"], o["hop_us_per_row"])  # fmt: skip
        for dataset in args.datasets:
            p = predicted[dataset]
            for rows in args.rows:
                key = f"{runtime}|{dataset}|{rows}"
                rps = {c: median(f"{key}|{c}", "rps") for c in CONFIGS}
                cpu = {c: median(f"{key}|{c}", "cpu_ms_per_request") for c in CONFIGS}
                served = rps["cascade"] / rps["always-large"]
                at_batch = p["model_us"]["always-large"][rows] / p["model_us"]["cascade"][rows]
                loaded = read_policy(paths[dataset]["cascade"])
                model = CostModel.for_policy(loaded, Evaluator(loaded).tiers,
                                             rows_per_request=rows, overheads=fitted)  # fmt: skip
                predicted_served = 1 / model.relative(p["reach"]["cascade"])[1]
                t = timed[dataset][rows]
                timed_ratio = t["always-large"] / t["cascade"]
                cells[key] = {"rps": rps, "cpu_ms_per_request": cpu, "served_ratio": served,
                              "model_ratio_at_256": 1 / p["relative_cost"],
                              "model_ratio_at_served_batches": at_batch,
                              "model_ratio_timed": timed_ratio, "model_ms_timed": t,
                              "predicted_served_ratio": predicted_served}  # fmt: skip
                body.append([
                    runtime, dataset, str(rows),
                    f"{rps['always-large']:.1f}", f"{rps['cascade']:.1f}",
                    f"{rps['always-cheap']:.1f}",
                    f"{served:.2f}x", f"{1 / p['relative_cost']:.2f}x", f"{at_batch:.2f}x",
                    f"{timed_ratio:.2f}x", f"{predicted_served:.2f}x",
                    f"{cpu['always-large']:.2f}", f"{cpu['cascade']:.2f}",
                    f"{cpu['cascade'] * 1000 / rows:.0f}",
                ])  # fmt: skip
    print()
    header = ["runtime", "dataset", "rows", "large req/s", "cascade req/s", "cheap req/s",
              "served ratio", "models @256", "models @batch", "models timed", "cost model",
              "large ms CPU/req", "cascade ms CPU/req", "cascade µs CPU/row"]  # fmt: skip
    print(table(header, body))
    print("\noverheads fitted (µs of server CPU): " + "; ".join(
        f"{r}: {o['request_us']:.0f} + {o['request_us_per_row']:.1f}/row per request, "
        f"{o['hop_us']:.0f} + {o['hop_us_per_row']:.1f}/row per hop"
        for r, o in overheads.items()))  # fmt: skip
    if "covertype" in args.datasets and 64 in args.rows:
        for runtime in args.runtimes:
            checks[f"covertype 64 rows, {runtime}: served ratio >= 2.5"] = (
                cells[f"{runtime}|covertype|64"]["served_ratio"] >= 2.5
            )
    if "clinc150" in args.datasets:
        for runtime in args.runtimes:
            for rows in args.rows:
                c = cells[f"{runtime}|clinc150|{rows}"]
                checks[f"clinc150 {rows} rows, {runtime}: within 15% of models @batch"] = (
                    abs(c["served_ratio"] / c["model_ratio_at_served_batches"] - 1) <= 0.15
                )
    if {"ray", "edge"} <= set(args.runtimes):
        for dataset in args.datasets:
            for config in ("always-large", "cascade"):
                ray_rps = median(f"ray|{dataset}|64|{config}", "rps") if 64 in args.rows else None
                edge_rps = median(f"edge|{dataset}|64|{config}", "rps") if 64 in args.rows else None
                if ray_rps and edge_rps:
                    checks[f"{dataset} 64 rows {config}: ray >= 0.5x edge "
                           f"({ray_rps / edge_rps:.2f}x)"] = ray_rps >= 0.5 * edge_rps  # fmt: skip
    print()
    for label, ok in checks.items():
        print(f"{label}: {'met' if ok else 'NOT MET'}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "served_cost.json"
    out.write_text(json.dumps({
        "overheads": overheads, "cells": cells, "checks": checks, "predicted": predicted,
        "measured": measured, "seconds": args.seconds, "rounds": args.rounds,
        "clients": args.clients, "server_core": server_core,
    }, indent=2, default=str) + "\n")  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
