"""Overload: goodput against offered load, each configuration against its own capacity.

    python benchmarks/overload.py [--cases 1x1000,16x1000,64x1000,16x250]
                                  [--factors 1,2,4,10] [--runtime ray,edge]
                                  [--configs always-large,cascade,cascade-gears]
                                  [--seconds 30] [--no-burst] [--connections 2048]
                                  [--json-numbers] [--serve-args ARGS]
                                  [--queue fifo|adaptive-lifo] [--out DIR]

Covertype, three configurations served by `cascade serve` (Ray Serve with HAProxy and
``RAY_SERVE_THROUGHPUT_OPTIMIZED``, as the command starts it; or ``--runtime edge``):

- always-large: every row to the large tier (a deployment, batching as shipped);
- cascade: ``policies/covertype.yaml`` as shipped, the calibrated small (inline) -> large;
- cascade-gears: the same policy with two gears on the replica's queue depth: `brownout`
  lowers the thresholds by 0.05, `small-only` caps the route at small. They engage at a
  quarter and a half of the requests the cascade answers within one deadline at its capacity
  (Little's law; at most 24 and 48, below the replica's 64 ongoing requests).

A case is a request size and a deadline (``--cases ROWSxMS``). In each case every
configuration's own capacity is measured first: closed loop, 8 clients on keep-alive
connections, answers per second over ``--capacity-seconds`` after a 2 s warm-up; with
``--capacity open``, then the highest Poisson rate whose requests are >= 99 % answered within
the deadline after the run's first second (searched from the closed-loop figure up by 1.5x,
then bisected twice; the search is in the JSON), since a closed loop reads low for small
requests. Then it is
offered ``--factors`` times that capacity, open loop (Poisson arrivals, `cascade bench`'s
generator: two sender processes, the bare client, no retries, up to ``--connections``
requests in flight, each on a connection of its own) for ``--seconds`` each, and a burst:
10x for 10 s, then 0.5x for 10 s. Every request carries ``parameters.deadline_ms`` and rows
of the test split as the binary tensor extension (``--json-numbers``: as JSON numbers).

The server runs on the first core (``taskset``), this generator on the others, as in
``benchmarks/served_cost.py``: a 2-core machine is a one-core server and its client. The
gears' depths come from the cascade's capacity, so with gears each runtime is started twice:
once with always-large and the cascade, once with the geared variants.

Per run: the share of requests answered within the deadline (from each request's scheduled
send time), goodput (those answers per second) over the configuration's capacity, p50/p99 of
the answers and of the 503 sheds, errors other than 503, answers past the deadline, accuracy
and degraded share of the answered rows, and the generator's send lag p99. A run whose lag
p99 is over 10 ms measured the generator: it is marked INVALID and counts toward no check.
After the burst: the recovery time, the seconds from the burst's end until every later
second answers >= 95 % of what it offered within the deadline.

Checks per runtime, case and configuration (issue 17): goodput >= 90 % of capacity at every
factor (of the offered load below 1x); at 1x >= 99 % within the deadline; shed p99 <= 10 %
of the deadline; no errors other than 503 (nor requests dropped at the generator's in-flight
cap: the server held them all); no answer past its deadline; the cascade without gears at
2x >= 95 % within the deadline with accuracy >= always-small's (offline); burst recovery
<= 2 s; the generator on schedule (every run valid). Writes
``benchmarks/results/overload.json``; ``notebooks/degradation.ipynb`` draws it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# Light imports only up here: the generator's sender processes are spawned, and each one
# imports this module again (the training stack and Ray stay out of them).
from _serve import Server

from cascade._table import table
from cascade.bench import BenchReport, drive, infer_body, poisson_arrivals, run_load
from cascade.bench._http import TRANSPORT_ERRORS, ConnectionPool, request_head

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "covertype.yaml"
CLI = Path(sys.executable).with_name("cascade")
CONFIGS = ("always-large", "cascade", "cascade-gears")
BURST = (10.0, 10.0, 0.5, 10.0)
"""The burst: this factor of capacity for these seconds, then this one for these."""
CLIENTS = 8  # closed-loop clients measuring capacity
WARM_UP_S = 2.0
DRAIN_S = 3.0  # between runs, for the server's queues to empty
START_S = {"ray": 45.0, "edge": 10.0}  # a server start, for the estimate of the duration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _policies(work: Path, depths: set[tuple[int, int]]) -> dict[str, Path]:
    """Policy files of the configurations in ``work``, by model name: always-large, the
    cascade as shipped, and the cascade with gears at each pair of ``depths``."""
    from cascade.policy import read_policy

    loaded = read_policy(POLICY)
    shipped = loaded.policy.model_dump(mode="json", exclude_none=True)
    for name, tier in shipped["tiers"].items():
        tier["model"] = str(loaded.model_path(name))
    shipped["allow_outside_paths"] = True  # the copies live in a temporary folder
    chain = [step["tier"] for step in shipped["routing"]["chain"]]
    large = {**shipped, "name": "covertype-always-large",
             "tiers": {chain[-1]: shipped["tiers"][chain[-1]]},
             "routing": {"kind": "confidence", "chain": [{"tier": chain[-1]}]}}  # fmt: skip
    large.pop("provenance", None)
    bodies = [large, {**shipped, "name": "covertype-cascade"}]
    for brownout, small_only in sorted(depths):
        gears = [
            {"name": "brownout", "queue_depth_at_least": brownout, "threshold_shift": 0.05},
            {"name": "small-only", "queue_depth_at_least": small_only, "max_tier": chain[0]},
        ]
        bodies.append({**shipped, "name": _geared(brownout, small_only), "gears": gears})
    paths = {}
    for body in bodies:
        paths[body["name"]] = work / f"{body['name']}.yaml"
        paths[body["name"]].write_text(json.dumps(body, indent=1))  # JSON is YAML
    return paths


def _geared(brownout: int, small_only: int) -> str:
    return f"covertype-gears-{brownout}-{small_only}"


def _gear_depths(capacity: float, deadline_ms: float) -> tuple[int, int]:
    """Brownout at a quarter, small-only at half the requests answered in one deadline."""
    in_time = max(4, int(capacity * deadline_ms / 1000.0))
    return max(1, min(in_time // 4, 24)), max(2, min(in_time // 2, 48))


def _capacity(
    port: int, model: str, X: npt.NDArray[np.float32], rows: int, deadline_ms: float,
    *, binary: bool, seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """Closed loop: ``CLIENTS`` clients, each sending its next request when the last is
    answered, rows and parameters as the load sends them; answers (200s) per second."""
    path = f"/v2/models/{model}/infer"
    requests = []
    for i in range(64):
        chunk = X[[(i * rows + j) % len(X) for j in range(rows)]]
        parameters = {"trace": False, "deadline_ms": deadline_ms}
        body, header_length = infer_body("input", chunk, parameters, binary=binary)
        extra = {"inference-header-content-length": str(header_length)} if binary else {}
        requests.append((request_head(f"127.0.0.1:{port}", path, len(body), extra), body))

    async def measure(duration_s: float) -> tuple[list[float], Counter[str], float]:
        latencies: list[float] = []
        failed: Counter[str] = Counter()
        pool = ConnectionPool("127.0.0.1", port, CLIENTS)
        stop = time.perf_counter() + duration_s

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                head, body = requests[i % len(requests)]
                i += CLIENTS
                began = time.perf_counter()
                try:
                    async with pool.connection() as connection:
                        answer = await connection.post(head, body, timeout_s=30.0)
                except TRANSPORT_ERRORS as exc:
                    failed[type(exc).__name__] += 1
                    continue
                if answer.status == 200:
                    latencies.append(1000.0 * (time.perf_counter() - began))
                else:
                    failed[str(answer.status)] += 1

        began = time.perf_counter()
        try:
            await asyncio.gather(*(client(k) for k in range(CLIENTS)))
        finally:
            await pool.aclose()
        return latencies, failed, time.perf_counter() - began

    drive(measure(WARM_UP_S))
    latencies, failed, elapsed = drive(measure(seconds))
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "answered": len(latencies), "failed": dict(failed), "seconds": elapsed,
    }  # fmt: skip


def _good_per_second(report: BenchReport) -> list[int]:
    """Answers within the deadline, by the second of their scheduled send time."""
    good = [0] * len(report.timeline)
    for r in report.records:
        if r.outcome != "answered" or r.latency_ms is None:
            continue
        if report.deadline_ms is None or r.latency_ms <= report.deadline_ms:
            good[int(r.offset_s)] += 1
    return good


def _recovery_s(good: list[int], offered: list[int], burst_end: int) -> int | None:
    """Seconds after ``burst_end`` until every later second answered >= 95 % of what it
    offered within the deadline; None when even the last second did not."""
    ok = [n == 0 or g >= 0.95 * n for g, n in zip(good, offered, strict=True)]
    for k in range(len(ok) - burst_end):
        if all(ok[burst_end + k :]):
            return k
    return None


def _case(text: str) -> tuple[int, float]:
    """``64x1000``: 64 rows per request, a 1000 ms deadline."""
    try:
        rows, deadline = text.lower().split("x")
        case = int(rows), float(deadline)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a case is ROWSxMS, e.g. 64x1000; got {text!r}") from None
    if case[0] < 1 or not case[1] > 0:
        raise argparse.ArgumentTypeError(f"{text}: rows must be >= 1 and the deadline > 0 ms")
    return case


def _label(case: tuple[int, float]) -> str:
    return f"{case[0]}x{case[1]:g}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


class Overload:
    """One benchmark run: its options, the rows, and what was measured so far."""

    def __init__(
        self, args: argparse.Namespace, configs: list[str], X: npt.NDArray[np.float32],
        y: npt.NDArray[Any],
    ) -> None:  # fmt: skip
        self.args, self.configs, self.X, self.y = args, configs, X, y
        self.capacities: dict[str, dict[str, Any]] = {}
        self.depths: dict[str, list[int]] = {}
        self.runs: list[dict[str, Any]] = []
        loads = len(args.factors) + int(args.burst)
        self.total = len(args.runtime) * len(args.cases) * len(configs) * loads
        self.estimate_s = self._estimate()
        self.began = time.monotonic()

    def _estimate(self) -> float:
        """About how long the run takes: server starts, capacities, loads, pauses."""
        a = self.args
        per_run = 2.0 + DRAIN_S  # the sender processes start, then the queues drain
        loads = len(a.factors) * (a.seconds + per_run)
        if a.burst:
            loads += BURST[1] + BURST[3] + per_run
        capacity = WARM_UP_S + a.capacity_seconds + 1.0
        geared = "cascade-gears" in self.configs
        measured = len(self.configs) + int(geared and "cascade" not in self.configs)
        per_runtime = len(a.cases) * (measured * capacity + len(self.configs) * loads)
        return float(sum((1 + int(geared)) * START_S[r] + per_runtime for r in a.runtime))

    def capacity(self, runtime: str, server: Server, case: tuple[int, float], config: str,
                 model: str) -> float:  # fmt: skip
        """``config``'s capacity in ``case`` (req/s), measured once."""
        key = f"{runtime} {_label(case)} {config}"
        if key not in self.capacities:
            self.capacities[key] = found = _capacity(
                server.port, model, self.X, case[0], case[1], binary=self.args.binary,
                seconds=self.args.capacity_seconds,
            )  # fmt: skip
            print(f"{key}: capacity {found['rps']:.1f} req/s (closed loop, {CLIENTS} clients, "
                  f"p50 {_ms(found['p50_ms'])} ms; not answered: {found['failed'] or 0})",
                  file=sys.stderr)  # fmt: skip
            if not found["answered"]:
                raise RuntimeError(f"{key}: nothing answered in the closed loop: {found['failed']}")
            if self.args.capacity == "open":
                found["closed_loop_rps"] = found["rps"]
                found.update(self._open_capacity(server, case, model, found["rps"], key))
        return float(self.capacities[key]["rps"])

    def _open_capacity(
        self, server: Server, case: tuple[int, float], model: str, start: float, key: str
    ) -> dict[str, Any]:
        """The highest Poisson rate whose requests are >= 99 % answered within the deadline
        (after the run's first second) by a generator on schedule, searched from the
        closed-loop figure: up by 1.5x until a
        rate fails (down by 1.5x while the first fails), then two bisections. A closed loop
        of 8 clients leaves a fast server idle between answers, so for small requests it
        reads low (stop 23: Ray, 1 row, 392 req/s closed loop, 782 answered in time open)."""
        rows, deadline = case
        seconds = self.args.capacity_seconds
        tried: list[dict[str, Any]] = []

        def passes(rate: float) -> bool:
            report = drive(
                run_load(server.url, model, self.X, self.y,
                         poisson_arrivals(rate, duration_s=seconds, seed=len(tried)),
                         rows_per_request=rows, deadline_ms=deadline,
                         timeout_s=max(5.0, 10 * deadline / 1000), duration_s=seconds,
                         schedule=f"capacity search {rate:.0f}/s", progress=False,
                         binary=self.args.binary, client="bare", retry_budget=0.0,
                         processes=2, max_in_flight=self.args.connections,
                         max_connections=self.args.connections)
            )  # fmt: skip
            # judged after the first second: a fresh run's first second carries the sender
            # processes' and connections' start (stop 23: 2-4 s of 503s in the first second)
            good = _good_per_second(report)
            offered = [second.offered for second in report.timeline]
            share = sum(good[1:]) / max(1, sum(offered[1:]))
            ok = report.valid and share >= 0.99
            tried.append({"rate": rate, "in_deadline": share, "valid": report.valid,
                          "goodput_rps": report.goodput_rps, "passed": ok})  # fmt: skip
            print(f"{key}: open loop {rate:.0f}/s: {share:.1%} in deadline"
                  f"{'' if report.valid else ' (INVALID)'} -> {'pass' if ok else 'fail'}",
                  file=sys.stderr)  # fmt: skip
            time.sleep(DRAIN_S)
            return ok

        low, high = None, None
        rate = start
        for _ in range(6):
            if passes(rate):
                low = rate
                if high is not None:
                    break
                rate *= 1.5
            else:
                high = rate
                if low is not None:
                    break
                rate /= 1.5
        if low is not None and high is not None:
            for _ in range(2):
                middle = (low + high) / 2
                if passes(middle):
                    low = middle
                else:
                    high = middle
        if low is None:  # nothing passed: keep the closed-loop figure, say so
            return {"rps": start, "search": tried, "capacity_from": "closed loop (no open "
                    "rate passed)"}  # fmt: skip
        return {"rps": low, "search": tried, "capacity_from": "open-loop search"}

    def loads(self, runtime: str, server: Server, case: tuple[int, float], config: str,
              model: str) -> None:  # fmt: skip
        """``config``'s capacity in ``case``, then a run at each factor of it, and the burst."""
        capacity = self.capacity(runtime, server, case, config, model)
        loads = [(f"{f:g}x", f) for f in self.args.factors]
        for name, factor in loads + ([("burst", BURST[0])] if self.args.burst else []):
            seed = 1000 * self.args.cases.index(case) + round(100 * factor)
            if name == "burst":
                high, first, low, then = BURST
                offsets = np.concatenate([
                    poisson_arrivals(high * capacity, duration_s=first, seed=seed),
                    first + poisson_arrivals(low * capacity, duration_s=then, seed=seed + 1),
                ])  # fmt: skip
                duration = first + then
                schedule = (f"burst: poisson {high * capacity:.0f}/s for {first:g} s, then "
                            f"{low * capacity:.0f}/s for {then:g} s")  # fmt: skip
            else:
                duration = self.args.seconds
                offsets = poisson_arrivals(factor * capacity, duration_s=duration, seed=seed)
                schedule = f"poisson {factor * capacity:.0f}/s ({name} capacity)"
            minutes = (time.monotonic() - self.began) / 60
            print(f"[{len(self.runs) + 1}/{self.total}, {minutes:.0f} of about "
                  f"{self.estimate_s / 60:.0f} min] {runtime} {_label(case)} {config} {name}: "
                  f"{schedule}, {duration:g} s", file=sys.stderr)  # fmt: skip
            self.runs.append(
                self._run(runtime, server, case, config, model, name, factor, capacity,
                          offsets, duration, schedule)
            )  # fmt: skip
            time.sleep(DRAIN_S)

    def _run(
        self, runtime: str, server: Server, case: tuple[int, float], config: str, model: str,
        name: str, factor: float, capacity: float, offsets: npt.NDArray[np.float64],
        duration: float, schedule: str,
    ) -> dict[str, Any]:  # fmt: skip
        rows, deadline = case
        report = drive(
            run_load(server.url, model, self.X, self.y, offsets, rows_per_request=rows,
                     deadline_ms=deadline, timeout_s=max(5.0, 10 * deadline / 1000),
                     duration_s=duration, schedule=schedule, progress=False,
                     binary=self.args.binary, client="bare", retry_budget=0.0, processes=2,
                     max_in_flight=self.args.connections,
                     max_connections=self.args.connections)
        )  # fmt: skip
        good = _good_per_second(report)
        run: dict[str, Any] = {
            "runtime": runtime, "case": _label(case), "rows": rows, "deadline_ms": deadline,
            "config": config, "model": model, "load": name, "factor": factor,
            "capacity_rps": capacity, "valid": report.valid,
            "goodput_per_capacity": report.goodput_rps / capacity, "good_per_second": good,
            "recovery_s": None, "report": report.to_json(),
        }  # fmt: skip
        if name == "burst":  # goodput while the burst lasted; recovery after it
            high_s = int(BURST[1])
            run["goodput_per_capacity"] = sum(good[:high_s]) / BURST[1] / capacity
            offered = [second.offered for second in report.timeline]
            run["recovery_s"] = _recovery_s(good, offered, high_s)
        return run


def _checks(
    runs: list[dict[str, Any]], factors: list[float], small_accuracy: float
) -> dict[str, bool | None]:
    """The issue's checks on the runs of one runtime, case and configuration: True (met),
    False, or None where no valid run measured it."""
    valid = [r for r in runs if r["valid"]]
    reports = [r["report"] for r in valid]
    steady = [r for r in valid if r["load"] != "burst"]
    at = {r["factor"]: r["report"] for r in steady}
    deadline = runs[0]["deadline_ms"]

    def every(items: list[Any], ok: bool) -> bool | None:
        return ok if items else None

    checks: dict[str, bool | None] = {
        "goodput >= 90% of capacity at every factor": every(steady, all(
            r["goodput_per_capacity"] >= 0.9 * min(r["factor"], 1.0) for r in steady)),
        "at 1x: >= 99% within the deadline":
            None if 1 not in at else (at[1]["goodput_fraction"] or 0) >= 0.99,
        "shed p99 <= 10% of the deadline": every(reports, all(
            r["shed_p99_ms"] is None or r["shed_p99_ms"] <= 0.1 * deadline for r in reports)),
        "no errors other than 503": every(reports, all(
            r["errors"] == 0 and r["client_dropped"] == 0 for r in reports)),
        "no answer past its deadline": every(reports, all(
            r["late_answers"] == 0 for r in reports)),
    }  # fmt: skip
    if runs[0]["config"] == "cascade" and 2 in factors:
        checks["at 2x: >= 95% within the deadline, accuracy >= always-small"] = (
            None if 2 not in at
            else (at[2]["goodput_fraction"] or 0) >= 0.95
            and (at[2]["accuracy"] or 0) >= small_accuracy
        )  # fmt: skip
    for burst in (r for r in runs if r["load"] == "burst"):
        recovery = burst["recovery_s"]
        checks["burst: recovery <= 2 s"] = (
            None if not burst["valid"] else recovery is not None and recovery <= 2
        )
    checks["generator on schedule"] = all(r["valid"] for r in runs)
    return checks


def _table(runs: list[dict[str, Any]]) -> str:
    body = []
    for run in runs:
        r = run["report"]
        errors = str(r["errors"])
        if r["client_dropped"]:
            errors += f" +{r['client_dropped']} dropped"
        recovery = run["recovery_s"]
        body.append([
            f"{run['runtime']} {run['case']}", run["config"], run["load"],
            f"{r['offered_rps']:.0f}", _pct(r["goodput_fraction"]),
            f"{run['goodput_per_capacity']:.2f}", _ms(r["p50_ms"]), _ms(r["p99_ms"]),
            _pct(r["shed_fraction"]), f"{_ms(r['shed_p50_ms'])}/{_ms(r['shed_p99_ms'])}",
            errors, str(r["late_answers"]),
            "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}",
            _pct(r["degraded_fraction"]), _ms(r["send_lag_p99_ms"]),
            "-" if run["load"] != "burst" else "never" if recovery is None else str(recovery),
            "yes" if run["valid"] else "INVALID",
        ])  # fmt: skip
    header = ["runtime case", "configuration", "load", "offered/s", "in deadline",
              "goodput/cap", "p50 ms", "p99 ms", "shed", "shed p50/p99 ms", "errors", "late",
              "accuracy", "degraded", "lag p99 ms", "recovery s", "valid"]  # fmt: skip
    return table(header, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=lambda t: [_case(c) for c in t.split(",")],
                        default=[(1, 1000.0), (16, 1000.0), (64, 1000.0), (16, 250.0)],
                        help="ROWSxMS,... (default 1x1000,16x1000,64x1000,16x250)")  # fmt: skip
    parser.add_argument("--factors", type=lambda t: [float(f) for f in t.split(",")],
                        default=[1.0, 2.0, 4.0, 10.0],
                        help="offered loads, times capacity (default 1,2,4,10)")  # fmt: skip
    parser.add_argument("--runtime", type=lambda t: t.split(","), default=["ray", "edge"],
                        help="ray,edge (default both)")  # fmt: skip
    parser.add_argument("--configs", type=lambda t: t.split(","), default=list(CONFIGS),
                        help=f"a subset of {','.join(CONFIGS)} (default all)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="per open-loop load (default 30)")  # fmt: skip
    parser.add_argument("--capacity-seconds", type=float, default=5.0,
                        help="closed loop per capacity, after a warm-up (default 5)")  # fmt: skip
    parser.add_argument("--capacity", choices=("closed", "open"), default="closed",
                        help="closed: 8 clients in a closed loop; open: then search the "
                        "highest Poisson rate >= 99%% answered in deadline "
                        "(default closed)")  # fmt: skip
    parser.add_argument("--no-burst", dest="burst", action="store_false",
                        help="no burst (10x for 10 s, then 0.5x for 10 s)")  # fmt: skip
    # A pool smaller than the server's own limit (the edge: 64 running + 256 queued) queues
    # requests in the client, in front of the server's admission, where no deadline is
    # checked and nothing is shed: with cascade bench's 256 the edge never shed at 2x.
    parser.add_argument("--connections", type=int, default=2048,
                        help="requests in flight at most, on a connection each")  # fmt: skip
    parser.add_argument("--json-numbers", dest="binary", action="store_false",
                        help="rows as JSON numbers, not the binary tensor extension")  # fmt: skip
    parser.add_argument("--serve-args", default="", metavar="'ARGS'",
                        help="more options to `cascade serve`, e.g. '--coalesce-ms 1'")  # fmt: skip
    parser.add_argument("--queue", choices=("fifo", "adaptive-lifo"), default="fifo",
                        help="the servers' queue discipline (CASCADE_QUEUE)")  # fmt: skip
    parser.add_argument("--haproxy-maxconn", type=int, default=32,
                        help="Ray: serve --haproxy-maxconn (default 32; 0: off)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"),
                        help="folder of overload.json (default benchmarks/results)")  # fmt: skip
    args = parser.parse_args()
    for name, allowed in (("runtime", ("ray", "edge")), ("configs", CONFIGS)):
        chosen = getattr(args, name)
        if not chosen or set(chosen) - set(allowed):
            parser.error(f"--{name}: choose from {','.join(allowed)}, got {','.join(chosen)}")
    if min(args.factors) <= 0 or args.connections < 2:
        parser.error(f"--factors must be > 0 and --connections >= 2, got {args.factors} and "
                     f"{args.connections}")  # fmt: skip
    configs = [c for c in CONFIGS if c in args.configs]

    from cascade.backends import OnnxModel
    from cascade.evaluate import ensure_models
    from cascade.policy import read_policy
    from cascade.zoo import read_dataset

    loaded = read_policy(POLICY)
    ensure_models(loaded, progress=True)
    split = read_dataset("covertype").test
    X, y = np.asarray(split.X, dtype=np.float32), np.asarray(split.y)
    small = OnnxModel(loaded.model_path("small")).predict_sync(X)
    small_accuracy = float((small.argmax(axis=1) == y).mean())
    bench = Overload(args, configs, X, y)
    print(f"overload: {len(args.runtime)} runtime(s) x {len(args.cases)} case(s) x "
          f"{len(configs)} configuration(s) x ({len(args.factors)} loads of {args.seconds:g} s"
          f"{' + a 20 s burst' if args.burst else ''}): about "
          f"{bench.estimate_s / 60:.0f} min", file=sys.stderr)  # fmt: skip

    cores = sorted(os.sched_getaffinity(0))
    server_core, client_cores = cores[0], set(cores[1:]) or {cores[0]}
    os.sched_setaffinity(0, client_cores)
    print(f"server on core {server_core}, generator on {sorted(client_cores)}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="overload-"))
    extra = shlex.split(args.serve_args)
    if "ray" in args.runtime and "--haproxy-maxconn" not in extra:
        # HAProxy's queue in front of the Ray replica (off in `cascade serve` by default)
        extra += ["--haproxy-maxconn", str(args.haproxy_maxconn)]
    os.environ["CASCADE_QUEUE"] = args.queue  # the servers (and Ray's workers) inherit it
    names = {"always-large": "covertype-always-large", "cascade": "covertype-cascade"}
    try:
        for runtime in args.runtime:
            # first always-large and the cascade; the cascade's capacity in each case sets
            # the gears' depths, so the geared variants get a server of their own after
            plain = [c for c in names if c in configs or c == "cascade"]
            paths = _policies(work, set())
            server = Server(runtime, [paths[names[c]] for c in plain], port=_free_port(),
                            core=server_core, extra=extra)  # fmt: skip
            try:
                for case in args.cases:
                    for config in plain:
                        if config in configs:
                            bench.loads(runtime, server, case, config, names[config])
                        else:
                            bench.capacity(runtime, server, case, config, names[config])
            finally:
                server.stop()
            if "cascade-gears" not in configs:
                continue
            pairs = {}
            for case in args.cases:
                capacity = bench.capacities[f"{runtime} {_label(case)} cascade"]["rps"]
                pairs[case] = _gear_depths(capacity, case[1])
                bench.depths[f"{runtime} {_label(case)}"] = list(pairs[case])
            paths = _policies(work, set(pairs.values()))
            geared = [paths[_geared(*pair)] for pair in sorted(set(pairs.values()))]
            server = Server(runtime, geared, port=_free_port(), core=server_core, extra=extra)
            try:
                for case in args.cases:
                    brownout, small_only = pairs[case]
                    print(f"{runtime} {_label(case)}: gears at queue depth {brownout} (brownout) "
                          f"and {small_only} (small-only)", file=sys.stderr)  # fmt: skip
                    bench.loads(runtime, server, case, "cascade-gears", _geared(*pairs[case]))
            finally:
                server.stop()
    finally:
        print(f"ran {len(bench.runs)} of {bench.total} loads in "
              f"{(time.monotonic() - bench.began) / 60:.1f} min", file=sys.stderr)  # fmt: skip

    groups = [(r, _label(c), k) for r in args.runtime for c in args.cases for k in configs]
    runs = sorted(bench.runs, key=lambda r: groups.index((r["runtime"], r["case"], r["config"])))
    checks: dict[str, dict[str, bool | None]] = {}
    for runtime, case, config in groups:
        group = [r for r in runs if (r["runtime"], r["case"], r["config"]) == (runtime, case,
                                                                               config)]  # fmt: skip
        checks[f"{runtime} {case} {config}"] = _checks(group, args.factors, small_accuracy)
    print(f"\ncovertype, {args.seconds:g} s per load, {'binary' if args.binary else 'JSON'} "
          f"rows; always-small accuracy {small_accuracy:.4f} (offline)")  # fmt: skip
    print("capacities (req/s, closed loop, 8 clients): " + ", ".join(
        f"{key} {c['rps']:.1f}" for key, c in bench.capacities.items()))  # fmt: skip
    if bench.depths:
        print("gear depths (brownout/small-only): " + ", ".join(
            f"{key} {d[0]}/{d[1]}" for key, d in bench.depths.items()))  # fmt: skip
    print(_table(runs))
    print()
    for key, results in checks.items():
        for label, ok in results.items():
            verdict = "n/a (no valid run)" if ok is None else "met" if ok else "NOT MET"
            print(f"{key}: {label}: {verdict}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "overload.json"
    options = {**vars(args), "out": str(args.out), "configs": configs,
               "cases": [_label(c) for c in args.cases]}  # fmt: skip
    burst = dict(zip(("factor", "seconds", "then_factor", "then_seconds"), BURST, strict=True))
    out.write_text(json.dumps({
        "options": options, "burst": burst, "server_core": server_core,
        "client_cores": sorted(client_cores), "small_accuracy": small_accuracy,
        "capacities": bench.capacities, "gear_depths": bench.depths, "runs": runs,
        "checks": checks,
    }, indent=1) + "\n")  # fmt: skip
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
