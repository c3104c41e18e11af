"""Overload: always-large, the cascade, and the cascade with gears, at 2x and 4x large's capacity.

    python benchmarks/overload.py [--seconds 60] [--rows 64] [--deadline-ms 1000]

Covertype (small inline, large as a deployment, the shipped calibrated policy), requests of
``--rows`` rows each, sent as the binary tensor data extension (``--json-numbers``: as
JSON). First the large tier's capacity is measured: always-large, closed loop,
8 clients. Then each configuration gets open-loop Poisson traffic (``cascade bench``'s
generator) at 2x and 4x that rate for ``--seconds``, every request carrying the deadline:

- always-large: every row to the large deployment;
- cascade: the calibrated small -> large policy, no gears;
- cascade + gears: the same policy with two gears on the replica's queue depth: `brownout`
  lowers the thresholds by 0.05, `small-only` caps the route at small.

Every app gets Serve's ``max_queued_requests`` at the deadline's worth of requests at that
capacity (Little's law), so that overload turns into quick 503s rather than a queue in front
of the ingress, where no deadline can be checked.

Goodput counts answers within the deadline, measured by the client from each request's
scheduled send time. Target at 2x: the geared cascade answers >= 95 % within the deadline,
with accuracy >= always-small's, and no errors other than 503 sheds. The load generator gets
half of the cores and the server the other half (``--no-split-cores``: all share them; then
the generator falls seconds behind its own schedule on 2 cores and measures itself).
Writes ``benchmarks/results/overload.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ray
from ray import serve

from cascade._table import table
from cascade.backends import OnnxModel
from cascade.bench import BenchReport, drive, infer_body, poisson_arrivals, run_load
from cascade.evaluate import ensure_models
from cascade.policy import read_policy
from cascade.zoo import read_dataset
from deployments.app import build_app

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "covertype.yaml"


def _variants(directory: Path, depth: tuple[int, int]) -> dict[str, Path]:
    """The three configurations as policy files beside copies of the shipped one."""
    text = POLICY.read_text()
    models = (ROOT / "policies" / "models" / "covertype").resolve()
    text = text.replace("models/covertype/", f"{models}/")
    text = "allow_outside_paths: true\n" + text
    large = (
        "name: always-large\nallow_outside_paths: true\ntiers:\n"
        f"  large: {{model: {models / 'large.onnx'}, placement: deployment,\n"
        "          batching: {max_batch_size: 64, max_wait_ms: 2}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: large}\n"
    )
    gears = (
        f"gears:\n  - {{name: brownout, queue_depth_at_least: {depth[0]}, threshold_shift: 0.05}}\n"
        f"  - {{name: small-only, queue_depth_at_least: {depth[1]}, max_tier: small}}\n"
    )
    files = {
        "always-large": large,
        "cascade": text.replace("name: covertype", "name: cascade"),
        "cascade + gears": text.replace("name: covertype", "name: geared") + gears,
    }
    paths = {}
    for label, body in files.items():
        path = directory / f"{label.replace(' + ', '-').replace(' ', '-')}.yaml"
        path.write_text(body)
        paths[label] = path
    return paths


async def _capacity(
    url: str, rows: np.ndarray, n_rows: int, seconds: float, *, binary: bool
) -> float:
    """Closed-loop throughput (requests/s) of 8 clients, encoding rows like the load does."""
    done = 0
    stop = time.perf_counter() + seconds

    def request(i: int) -> tuple[bytes, dict[str, str]]:
        chunk = rows[(i * n_rows) % (len(rows) - n_rows) :][:n_rows]
        body, header_length = infer_body("input", chunk, {"trace": False}, binary=binary)
        headers = {"content-type": "application/json"}
        if binary:
            headers["Inference-Header-Content-Length"] = str(header_length)
        return body, headers

    async def client_loop(client: httpx.AsyncClient, k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop:
            content, headers = request(i)
            (await client.post(url, content=content, headers=headers)).raise_for_status()
            done += 1
            i += 8

    async with httpx.AsyncClient(timeout=60) as client:
        began = time.perf_counter()
        await asyncio.gather(*(client_loop(client, k) for k in range(8)))
        return done / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per configuration and rate")
    parser.add_argument("--rows", type=int, default=64, help="rows per request")
    parser.add_argument("--deadline-ms", type=float, default=1000.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    parser.add_argument(
        "--json-numbers",
        dest="binary",
        action="store_false",
        help="send rows as JSON numbers, not the binary tensor extension",
    )
    parser.add_argument("--no-split-cores", dest="split_cores", action="store_false",
                        help="let the load generator share the server's cores")  # fmt: skip
    args = parser.parse_args()

    loaded = read_policy(POLICY)
    ensure_models(loaded, progress=True)
    split = read_dataset("covertype").test
    X, y = np.asarray(split.X, dtype=np.float32), np.asarray(split.y)
    small = OnnxModel(loaded.model_path("small")).predict_sync(X)
    small_accuracy = float((small.argmax(axis=1) == y).mean())

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    cores = sorted(os.sched_getaffinity(0))
    client_cores = set(cores[len(cores) // 2 :]) if args.split_cores and len(cores) > 1 else None
    if client_cores is not None:
        # Ray's processes inherit the driver's affinity at start: the server side gets the
        # first half of the cores, the load generator (this process, after ray.init) the rest,
        # as if it ran on a machine of its own. Capacity is measured the same way.
        os.sched_setaffinity(0, set(cores) - client_cores)
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False)
    if client_cores is not None:
        os.sched_setaffinity(0, client_cores)
        print(f"server on cores {sorted(set(cores) - client_cores)}, load generator on "
              f"{sorted(client_cores)}", file=sys.stderr)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    reports: dict[str, dict[str, Any]] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        workdir = Path(tempfile.mkdtemp())
        paths = _variants(workdir, (2, 4))  # placeholders until capacity is known
        serve.run(build_app({"policies": [str(paths["always-large"])]}), name="always-large",
                  route_prefix="/always-large")  # fmt: skip
        large_url = f"{base}/always-large/v2/models/always-large/infer"
        asyncio.run(_capacity(large_url, X, args.rows, 3.0, binary=args.binary))  # warm-up
        capacity = asyncio.run(_capacity(large_url, X, args.rows, 15.0, binary=args.binary))
        # Gears by Little's law: the requests the replica may hold and still answer in time
        # (the replica holds at most max_ongoing_requests, 64: the gears must engage below it)
        in_time = max(4, int(capacity * args.deadline_ms / 1000.0))
        depth = (max(1, min(in_time // 4, 24)), max(2, min(in_time // 2, 48)))
        print(f"large capacity: {capacity:.1f} req/s of {args.rows} rows; gears at queue depth "
              f"{depth[0]} (brownout) and {depth[1]} (small-only); Serve queue limit "
              f"{max(8, in_time)}", file=sys.stderr)  # fmt: skip
        paths = _variants(workdir, depth)
        names = {"always-large": "always-large", "cascade": "cascade",
                 "cascade + gears": "geared"}  # fmt: skip
        # Admission needs a short queue in front of the ingress: Serve's own queue sits before
        # our code, so it holds no more than the deadline's worth of requests at capacity.
        queue = max(8, in_time)
        for label in names:
            app_args = {"policies": [str(paths[label])], "max_queued_requests": queue}
            serve.run(build_app(app_args), name=names[label], route_prefix=f"/{names[label]}")
        for factor in (2, 4):
            rate = capacity * factor
            for label, model in names.items():
                offsets = poisson_arrivals(rate, duration_s=args.seconds, seed=factor)
                print(f"{label} at {factor}x ({rate:.0f} req/s)", file=sys.stderr)
                report: BenchReport = drive(
                    run_load(f"{base}/{model}", model, X, y, offsets,
                             rows_per_request=args.rows, deadline_ms=args.deadline_ms,
                             duration_s=args.seconds, schedule=f"poisson {rate:.0f}/s",
                             timeout_s=10 * args.deadline_ms / 1000, progress=False,
                             binary=args.binary, processes=2)
                )  # fmt: skip
                reports[f"{label} @ {factor}x"] = report.to_json()
                time.sleep(3)  # let queues drain before the next run
    finally:
        serve.shutdown()
        ray.shutdown()

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    # a run whose generator fell behind its schedule measured the client: marked, not counted
    body = [
        [name if r["valid"] else f"{name} INVALID", f"{r['offered_rps']:.0f}",
         pct(r["goodput_fraction"]), ms(r["p50_ms"]), ms(r["p99_ms"]), pct(r["shed_fraction"]),
         ms(r["shed_p99_ms"]), str(r["errors"]), pct(r["degraded_fraction"]),
         "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
         " ".join(f"{g}:{n}" for g, n in sorted(r["gears"].items())) or "-",
         ms(r["send_lag_p99_ms"])]
        for name, r in reports.items()
    ]  # fmt: skip
    print(f"\nlarge capacity {capacity:.1f} req/s ({args.rows} rows each), deadline "
          f"{args.deadline_ms:g} ms, {args.seconds:g} s per run; always-small accuracy "
          f"{small_accuracy:.4f}")  # fmt: skip
    print(table(["configuration", "offered req/s", "in deadline", "p50 ms", "p99 ms", "shed",
                 "shed p99 ms", "errors", "degraded rows", "accuracy", "gears (requests)",
                 "send lag p99 ms"], body))  # fmt: skip
    geared = reports["cascade + gears @ 2x"]
    checks = {
        "geared 2x: generator on schedule (send lag p99 <= 10 ms)": geared["valid"],
        "geared 2x: >= 95% within deadline": (geared["goodput_fraction"] or 0) >= 0.95,
        "geared 2x: accuracy >= always-small": (geared["accuracy"] or 0) >= small_accuracy,
        "geared 2x: no errors but 503 sheds": geared["errors"] == 0,
    }
    print()
    for label, ok in checks.items():
        print(f"{label}: {'met' if ok else 'NOT MET'}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "overload.json"
    out.write_text(json.dumps({
        "capacity_rps": capacity, "rows_per_request": args.rows, "deadline_ms": args.deadline_ms,
        "seconds": args.seconds, "gear_depths": list(depth), "small_accuracy": small_accuracy,
        "max_queued_requests": max(8, in_time), "split_cores": client_cores is not None,
        "binary": args.binary,
        "reports": reports, "checks": checks,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
