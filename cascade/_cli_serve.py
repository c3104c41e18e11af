"""`cascade serve`: the policies on a local Ray + Serve, or with ``--runtime edge`` in one
process without Ray (uvicorn), until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cascade._cli_config import add_app_options, app_args_of
from cascade._cli_edge import add_footprint_command

if TYPE_CHECKING:
    from cascade.policy import LoadedPolicy

__all__ = ["add_serve_command", "run_reload", "run_serve"]


def add_serve_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve policies over HTTP (Open Inference Protocol v2) on a local Ray, or on "
        "the edge without Ray",
        description="Build missing models of bundled datasets, serve the policies at "
        "/v2/models/NAME/infer, stop on Ctrl-C or SIGTERM. --runtime ray (default) starts a "
        "local Ray (no dashboard); --runtime edge serves from this one process with uvicorn, "
        "no Ray (SIGHUP re-reads the policy files).",
    )
    serve.add_argument("policies", nargs="+", type=Path, help="policy files")
    serve.add_argument(
        "--runtime",
        choices=("ray", "edge"),
        default="ray",
        help="ray: local Ray Serve (default); edge: one process, no Ray",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs Ray may use (default: all; ray runtime only)")  # fmt: skip
    serve.add_argument("--no-progress", action="store_true",
                       help="no progress bar while missing models are built")  # fmt: skip
    add_app_options(serve)
    serve.set_defaults(run=run_serve)

    reload = commands.add_parser(
        "reload",
        help="apply changed policy files to the app `cascade serve` runs, without a restart",
        description="Validate the policy files, then hand them to the running local app: "
        "new thresholds, chains and batch settings apply in place; in-flight requests finish. "
        "Give the same files `cascade serve` got; an invalid file changes nothing.",
    )
    reload.add_argument("policies", nargs="+", type=Path, help="policy files")
    reload.set_defaults(run=run_reload)
    add_footprint_command(commands)


def run_serve(args: argparse.Namespace) -> int:
    if args.runtime == "edge":
        return _run_edge(args)
    try:
        import ray  # noqa: F401
        from ray import serve
    except ImportError:
        print('cascade serve needs Ray Serve: pip install "cascade[serve]"', file=sys.stderr)
        return 1
    from cascade.evaluate import ensure_models
    from cascade.policy import load_policy
    from deployments.app import build_app

    loaded = [load_policy(p) for p in args.policies]  # fail fast on a bad file
    names = [item.policy.name for item in loaded]
    app_args = app_args_of(args)
    for item in loaded:  # before Ray starts: training wants the cores to itself
        ensure_models(item, progress=not args.no_progress)
    stop = threading.Event()
    import ray as ray_module

    ray_module.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        app = build_app(app_args)
        serve.run(app, name="cascade", route_prefix="/")
        # After ray.init, which installs a SIGTERM handler of its own that aborts the driver.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        url = f"http://{args.host}:{args.port}"
        print(f"serving {', '.join(names)} at {url}/v2/models/<name>/infer  (Ctrl-C stops)")
        print(f"metadata: curl -s {url}/v2/models/{names[0]}")
        print(f"infer:    {_curl_example(url, names[0], loaded[0])}")
        sys.stdout.flush()
        stop.wait()
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray_module.shutdown()
    print("stopped")
    return 0


def _run_edge(args: argparse.Namespace) -> int:
    """The edge runtime: no Ray import on this path, nor in anything it calls."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        print('cascade serve --runtime edge needs uvicorn: pip install "cascade[edge]"',
              file=sys.stderr)  # fmt: skip
        return 1
    from cascade.edge import EdgeSettings, serve_edge
    from cascade.policy import load_policy

    loaded = [load_policy(p) for p in args.policies]  # fail fast on a bad file
    names = [item.policy.name for item in loaded]
    given = {key: getattr(args, key) for key in
             ("max_ongoing_requests", "max_queued_requests", "coalesce_ms", "max_rows")
             if getattr(args, key, None) is not None}  # fmt: skip
    settings = EdgeSettings(policies=[str(p) for p in args.policies], **given)

    def announce(url: str) -> None:
        print(f"serving {', '.join(names)} at {url}/v2/models/<name>/infer  (Ctrl-C stops; "
              "edge runtime, no Ray)")  # fmt: skip
        print(f"metadata: curl -s {url}/v2/models/{names[0]}")
        print(f"infer:    {_curl_example(url, names[0], loaded[0])}")
        print(f"metrics:  curl -s {url}/metrics")
        sys.stdout.flush()

    serve_edge(settings, host=args.host, port=args.port, announce=announce,
               progress=not args.no_progress)  # fmt: skip
    print("stopped")
    return 0


def run_reload(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        print('cascade reload needs Ray Serve: pip install "cascade[serve]"', file=sys.stderr)
        return 1
    from cascade.policy import load_policy
    from deployments.app import build_app

    for path in args.policies:
        load_policy(path)  # an invalid file stops here, before anything reaches the app
    ray.init(address="auto", include_dashboard=False, log_to_driver=False)
    try:
        serve.run(build_app({"policies": [str(p) for p in args.policies]}), name="cascade",
                  route_prefix="/")  # fmt: skip
    finally:
        ray.shutdown()
    print(f"reloaded {len(args.policies)} policies")
    return 0


def _curl_example(url: str, name: str, loaded: LoadedPolicy) -> str:
    """A ready-to-paste infer request: one row of zeros of the policy's input width."""
    import json

    from cascade.backends import open_model

    first = next(n for n, t in loaded.policy.tiers.items() if not t.is_remote)
    spec = open_model(loaded.model_path(first)).input_spec
    width = spec.width or 1
    body: dict[str, object] = {"inputs": [{"name": spec.name, "shape": [1, width],
                                           "datatype": "FP32", "data": [0.0] * width}]}  # fmt: skip
    if spec.dtype == "string":
        body = {"inputs": [{"name": spec.name, "shape": [1], "datatype": "BYTES",
                            "data": ["what is my balance"]}]}  # fmt: skip
    return (f"curl -s {url}/v2/models/{name}/infer -H 'content-type: application/json' "
            f"-d '{json.dumps(body)}'")  # fmt: skip
