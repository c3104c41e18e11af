"""`cascade bench`: open-loop load on a local server, summarised as a table, JSON and a PNG."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from cascade.cli._types import count, positive, share

__all__ = ["add_bench_command", "run_bench"]

DEFAULT_RATE = 100.0
DEFAULT_OUT = Path("bench-results")


def _ramp(text: str) -> tuple[float, float]:
    parts = text.split(":")
    try:
        start, end = (float(part) for part in parts) if len(parts) == 2 else (0.0, 0.0)
    except ValueError:
        start = end = 0.0
    if not all(math.isfinite(v) and v > 0 for v in (start, end)):
        raise argparse.ArgumentTypeError(
            f"needs START:END rates > 0 in requests/s, e.g. 50:400; got {text!r}"
        )
    return start, end


def add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="send open-loop load to a local server; report latency, goodput, shedding",
        description="Replay a labelled split against URL/v2/models/NAME/infer at Poisson "
        "arrivals (a fixed --rate or a linear --ramp), open loop: a slow server does not slow "
        "the sender. Print a summary and write DIR/bench.json and DIR/bench.png. Only this "
        "machine is a valid target (127.0.0.1, localhost, ::1).",
    )
    bench.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    bench.add_argument("--model", required=True, metavar="NAME", help="model (policy) name")
    bench.add_argument(
        "--dataset",
        default="digits",
        help="built-in dataset whose rows to replay (default: digits)",
    )
    bench.add_argument("--split", choices=("test", "calibration", "train"), default="test")
    rate = bench.add_mutually_exclusive_group()
    rate.add_argument(
        "--rate",
        type=positive,
        metavar="RPS",
        help=f"Poisson arrivals per second (default {DEFAULT_RATE:g})",
    )
    rate.add_argument(
        "--ramp",
        type=_ramp,
        metavar="START:END",
        help="rate rising linearly from START to END requests/s",
    )
    bench.add_argument(
        "--duration", type=positive, default=30.0, metavar="S", help="seconds of load (default 30)"
    )
    bench.add_argument(
        "--max-requests", type=count, metavar="N", help="stop the schedule after N requests"
    )
    bench.add_argument(
        "--deadline-ms",
        type=positive,
        metavar="MS",
        help="deadline sent with each request; goodput counts answers within it",
    )
    bench.add_argument(
        "--rows-per-request",
        type=count,
        default=1,
        metavar="N",
        help="rows in each request (default 1)",
    )
    bench.add_argument(
        "--timeout-s",
        type=positive,
        default=30.0,
        metavar="S",
        help="client timeout per request; past it the request is an error (default 30)",
    )
    bench.add_argument(
        "--max-in-flight",
        type=count,
        default=1024,
        metavar="N",
        help="outstanding requests at most; the rest are client_dropped (default 1024)",
    )
    bench.add_argument(
        "--max-connections",
        type=count,
        default=256,
        metavar="N",
        help="HTTP connections at most (default 256)",
    )
    bench.add_argument("--seed", type=int, default=0, help="seed of the arrival schedule")
    bench.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"where bench.json and bench.png go (default: {DEFAULT_OUT})",
    )
    bench.add_argument(
        "--client",
        choices=("bare", "httpx"),
        default="bare",
        help="bare (default): pre-encoded requests over keep-alive connections, the cheapest "
        "per request, so the schedule holds at higher rates; httpx: the general client",
    )
    bench.add_argument(
        "--retry-budget",
        type=share,
        default=0.0,
        metavar="SHARE",
        help="send a 503 with Retry-After again after its wait, while retries stay under this "
        "share of the requests sent and the wait ends before the deadline (default 0: never)",
    )
    bench.add_argument(
        "--processes",
        type=count,
        default=2,
        metavar="N",
        help="sender processes sharing the schedule, every N-th request each (default 2: "
        "one alone fell behind now and then even at 250-1,000 requests/s, two kept a 1.5 ms "
        "p99 send lag to 4,000/s; see README); 1 shows a progress bar",
    )
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.add_argument("--binary", action="store_true",
                       help="send rows as the binary tensor data extension (raw float32 after "
                       "a JSON header), not as JSON numbers")  # fmt: skip
    bench.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from cascade.bench import drive, loopback_url, poisson_arrivals, ramp_arrivals, run_load
    from cascade.errors import InputError
    from cascade.zoo.datasets import read_dataset

    loopback_url(args.url)  # refuse another host before loading anything
    if args.ramp is not None:
        start, end = args.ramp
        offsets = ramp_arrivals(
            start, end, duration_s=args.duration, max_requests=args.max_requests, seed=args.seed
        )
        schedule = f"ramp {start:g}→{end:g}/s, seed {args.seed}"
    else:
        rate = args.rate or DEFAULT_RATE
        offsets = poisson_arrivals(
            rate, duration_s=args.duration, max_requests=args.max_requests, seed=args.seed
        )
        schedule = f"poisson {rate:g}/s, seed {args.seed}"
    if len(offsets) == 0:
        raise InputError(
            f"the schedule holds no requests in {args.duration:g} s; raise --rate or --duration"
        )
    # Rates are per second of the window the schedule covers: all of --duration, unless
    # --max-requests ended it sooner.
    cut_short = args.max_requests is not None and len(offsets) == args.max_requests
    window = float(offsets[-1]) if cut_short else args.duration
    split = getattr(read_dataset(args.dataset), args.split)
    if args.processes > 1 and not args.no_progress:
        print(f"sending {len(offsets)} requests over {window:g} s from {args.processes} "
              "processes", file=sys.stderr)  # fmt: skip
    report = drive(
        run_load(
            args.url,
            args.model,
            split.X,
            split.y,
            offsets,
            rows_per_request=args.rows_per_request,
            deadline_ms=args.deadline_ms,
            binary=args.binary,
            timeout_s=args.timeout_s,
            max_in_flight=args.max_in_flight,
            max_connections=args.max_connections,
            duration_s=max(window, 1e-3),
            schedule=f"{schedule}, {args.dataset} {args.split} rows",
            progress=not args.no_progress,
            client=args.client,
            retry_budget=args.retry_budget,
            processes=args.processes,
        )
    )
    print(report.summary())
    if not report.valid:
        print(f"\nwarning: {report.validity()}; send from more processes (--processes N), "
              "give the client a core of its own (taskset) or lower the rate before reading "
              "these as the server's", file=sys.stderr)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "bench.json"
    json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    try:
        png = report.plot(args.out / "bench.png")
    except ImportError as exc:
        print(f"\nwrote {json_path}")
        print(f"note: no {args.out / 'bench.png'}: {exc}")
        return 0
    print(f"\nwrote {json_path} and {png}")
    return 0
