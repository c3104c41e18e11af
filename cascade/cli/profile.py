"""`cascade profile`: where a served request's time goes, phase by phase."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cascade.cli._types import count

__all__ = ["add_profile_command", "run_profile_command"]

DEFAULT_OUT = Path("profile-results")


def add_profile_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profile = commands.add_parser(
        "profile",
        help="break a local server's request latency down by phase (table, PNG, Chrome trace)",
        description="Send a short closed-loop load of profiled requests (parameters.profile, "
        "and the send time in x-cascade-sent-at) to URL/v2/models/NAME/infer, then print each "
        "phase's share of the client-measured end-to-end time with its p50 and p99, and write "
        "DIR/profile.json, DIR/profile.png and DIR/profile.trace.json (Chrome trace events: "
        "open in ui.perfetto.dev or chrome://tracing). Only this machine is a valid target "
        "(127.0.0.1, localhost, ::1).",
    )
    profile.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    profile.add_argument("--model", required=True, metavar="NAME", help="model (policy) name")
    profile.add_argument(
        "--dataset",
        metavar="NAME",
        help="built-in dataset whose test rows to send (default: the model's name when it is "
        "one: digits, covertype)",
    )
    profile.add_argument("--rows", type=count, default=1, metavar="N",
                         help="rows per request (default 1)")  # fmt: skip
    profile.add_argument("--requests", type=count, default=200, metavar="N",
                         help="profiled requests (default 200)")  # fmt: skip
    profile.add_argument("--concurrency", type=count, default=1, metavar="C",
                         help="requests in flight at once (default 1)")  # fmt: skip
    profile.add_argument("--warmup", type=int, default=20, metavar="N",
                         help="requests sent first and not counted (default 20)")  # fmt: skip
    profile.add_argument("--binary", action="store_true",
                         help="send rows as the binary tensor data extension (raw float32 "
                         "after a JSON header), not as JSON numbers")  # fmt: skip
    profile.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"where profile.json, profile.png and profile.trace.json go (default: {DEFAULT_OUT})",
    )
    profile.set_defaults(run=run_profile_command)


def run_profile_command(args: argparse.Namespace) -> int:
    import asyncio

    from cascade.bench import loopback_url, run_profile
    from cascade.errors import InputError
    from cascade.policy import BUNDLED_DATASETS
    from cascade.zoo.datasets import read_dataset

    loopback_url(args.url)  # refuse another host before loading anything
    dataset = args.dataset or args.model
    if dataset not in BUNDLED_DATASETS:
        raise InputError(
            f"model {args.model!r} is not a bundled dataset's name: say which rows to send "
            f"with --dataset ({', '.join(BUNDLED_DATASETS)})"
        )
    rows = read_dataset(dataset).test.X
    report = asyncio.run(
        run_profile(
            args.url,
            args.model,
            rows,
            rows=args.rows,
            requests=args.requests,
            concurrency=args.concurrency,
            binary=args.binary,
            warmup=args.warmup,
        )
    )
    print(report.table())
    args.out.mkdir(parents=True, exist_ok=True)
    written = [args.out / "profile.json", args.out / "profile.trace.json"]
    written[0].write_text(json.dumps(report.to_json(), indent=1) + "\n")
    written[1].write_text(json.dumps(report.trace()) + "\n")
    try:
        written.insert(1, report.plot(args.out / "profile.png"))
    except ImportError as exc:
        print(f"note: no {args.out / 'profile.png'}: {exc}")
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0 if report.profiled else 1
