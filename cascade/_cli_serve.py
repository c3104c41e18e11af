"""`cascade serve`: a local Ray + Serve running the policies, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

__all__ = ["add_serve_command", "run_serve"]


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve policies over HTTP (Open Inference Protocol v2) on a local Ray",
        description="Start a local Ray (no dashboard), build missing models of bundled "
        "datasets, serve the policies at /v2/models/NAME/infer, stop on Ctrl-C or SIGTERM.",
    )
    serve.add_argument("policies", nargs="+", type=Path, help="policy files")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs Ray may use (default: all)")  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    try:
        import ray  # noqa: F401
        from ray import serve
    except ImportError:
        print('cascade serve needs Ray Serve: pip install "cascade[serve]"', file=sys.stderr)
        return 1
    from cascade.policy import load_policy
    from deployments.app import build_app

    names = [load_policy(p).policy.name for p in args.policies]  # fail fast on a bad file
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    import ray as ray_module

    ray_module.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        app = build_app({"policies": [str(p) for p in args.policies]})
        serve.run(app, name="cascade", route_prefix="/")
        url = f"http://{args.host}:{args.port}"
        print(f"serving {', '.join(names)} at {url}/v2/models/<name>/infer  (Ctrl-C stops)")
        print(f"try: curl -s {url}/v2/models/{names[0]}")
        sys.stdout.flush()
        stop.wait()
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray_module.shutdown()
    print("stopped")
    return 0
