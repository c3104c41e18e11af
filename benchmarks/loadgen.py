"""Does the load generator keep its schedule? Send lag of ``cascade bench``'s clients by rate.

    python benchmarks/loadgen.py [--rates 250 500 1000 2000 4000 6000] [--seconds 8]
                                 [--clients bare httpx] [--loops uvloop asyncio]
                                 [--processes 1 2] [--rows 1]

An open-loop load figure means something only while the generator sends each request when
its schedule says: once it falls behind, the server is offered less than the report claims
and the latencies measure the client. This runs ``cascade serve --runtime edge
policies/digits.yaml`` pinned to core 0 and ``run_load`` in this process pinned to core 1
(the split every load benchmark here uses), Poisson arrivals at each rate, each client in
turn (rates interleaved; the bare one also with each count of ``--processes`` sender
processes, all on the generator's core), and prints per run the send lag (p50, p99),
whether the run is valid (p99 <= 10 ms; a variant that fell behind is not run at higher
rates), answers and sheds per second, the client's CPU per
request (sender processes included) and the share of its core it used. Writes
``benchmarks/results/loadgen.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cascade._table import table
from cascade.bench import drive, poisson_arrivals, run_load
from cascade.zoo import read_dataset

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("cascade")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu() -> float:
    """CPU seconds of this process and of its sender processes that have ended."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+",
                        default=[250, 500, 1000, 2000, 4000, 6000])  # fmt: skip
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", nargs="+", default=["bare", "httpx"])
    parser.add_argument("--loops", nargs="+", default=["uvloop", "asyncio"])
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 2],
        help="sender processes (each count is a variant of the bare client)",
    )
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[0], cores[-1]
    port = _free_port()
    server = subprocess.Popen(
        ["taskset", "-c", str(server_core), str(CLI), "serve", "--runtime", "edge",
         str(ROOT / "policies" / "digits.yaml"), "--port", str(port), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    os.sched_setaffinity(0, {client_core})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the edge server did not come up in 120 s")
        split = read_dataset("digits").test
        X, y = np.asarray(split.X, dtype=np.float32), np.asarray(split.y)
        print(f"server on core {server_core}, generator on core {client_core}", file=sys.stderr)
        drive(run_load(url, "digits", X, y, poisson_arrivals(200, duration_s=2, seed=9),
                       progress=False))  # warm-up  # fmt: skip
        results: list[dict[str, Any]] = []
        behind: set[tuple[str, str, int]] = set()  # variants not run at higher rates
        for rate in args.rates:
            variants = [(c, lp, n) for c in args.clients for lp in args.loops
                        for n in (args.processes if c == "bare" else [1])]  # fmt: skip
            for client, loop, processes in variants:
                if (client, loop, processes) in behind:
                    continue  # it already fell behind at a lower rate
                offsets = poisson_arrivals(rate, duration_s=args.seconds, seed=int(rate))
                began_cpu, began = _cpu(), time.perf_counter()
                report = drive(
                    run_load(url, "digits", X, y, offsets, rows_per_request=args.rows,
                             duration_s=args.seconds, progress=False, client=client,
                             binary=True, timeout_s=10.0, processes=processes),
                    loop=loop,
                )  # fmt: skip
                cpu, wall = _cpu() - began_cpu, time.perf_counter() - began
                lags = [
                    1000 * (r.sent_s - r.offset_s) for r in report.records if r.sent_s is not None
                ]
                row = {
                    "rate": rate, "client": client, "loop": loop, "processes": processes,
                    "valid": report.valid,
                    "errors_by_kind": report.errors_by_kind,
                    "send_lag_p50_ms": float(np.percentile(lags, 50)) if lags else None,
                    "send_lag_p99_ms": report.send_lag_p99_ms,
                    "answered_rps": report.throughput_rps, "shed_rps": report.shed / args.seconds,
                    "errors": report.errors, "client_dropped": report.client_dropped,
                    "client_cpu_ms_per_request": 1000 * cpu / max(report.sent, 1),
                    "client_core_busy": cpu / wall,
                }  # fmt: skip
                results.append(row)
                if not report.valid:
                    behind.add((client, loop, processes))
                print(f"{client} on {loop} x{processes} at {rate:g}/s: lag p99 "
                      f"{row['send_lag_p99_ms']:.1f} ms, "
                      f"{row['client_cpu_ms_per_request']:.2f} ms CPU/request",
                      file=sys.stderr)  # fmt: skip
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=60)

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1f}"

    body = [[f"{r['rate']:g}", f"{r['client']}, {r['loop']}, x{r['processes']}",
             ms(r["send_lag_p50_ms"]), ms(r["send_lag_p99_ms"]),
             "yes" if r["valid"] else "INVALID", f"{r['answered_rps']:.0f}", f"{r['shed_rps']:.0f}",
             str(r["errors"] + r["client_dropped"]), f"{r['client_cpu_ms_per_request']:.2f}",
             f"{100 * r['client_core_busy']:.0f}%"] for r in results]  # fmt: skip
    print(f"\ndigits, {args.rows}-row binary requests, Poisson, {args.seconds:g} s per run; "
          "edge server on one core, generator on the other")  # fmt: skip
    header = ["offered/s", "client", "lag p50 ms", "lag p99 ms", "valid", "answers/s",
              "sheds/s", "errors+dropped", "client ms CPU/req", "client core"]  # fmt: skip
    print(table(header, body))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "loadgen.json"
    settings = {"rows": args.rows, "seconds": args.seconds, "server": "edge, policies/digits.yaml"}
    out.write_text(json.dumps({"settings": settings, "runs": results}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
