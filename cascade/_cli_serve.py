"""`cascade serve`: a local Ray + Serve running the policies, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cascade.policy import LoadedPolicy

__all__ = ["add_serve_command", "run_config", "run_reload", "run_serve", "serve_config"]


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
    serve.add_argument("--no-progress", action="store_true",
                       help="no progress bar while missing models are built")  # fmt: skip
    _add_app_options(serve)

    reload = commands.add_parser(
        "reload",
        help="apply changed policy files to the app `cascade serve` runs, without a restart",
        description="Validate the policy files, then hand them to the running local app: "
        "new thresholds, chains and batch settings apply in place; in-flight requests finish. "
        "Give the same files `cascade serve` got; an invalid file changes nothing.",
    )
    reload.add_argument("policies", nargs="+", type=Path, help="policy files")

    config = commands.add_parser(
        "config",
        help="print a Ray Serve config (YAML) serving the policies, for `serve deploy`",
        description="Print a Serve config file for `serve deploy` on an existing cluster. "
        "The policy paths are written as given: the cluster's working directory must hold "
        "the same policy files and model folders.",
    )
    config.add_argument("policies", nargs="+", type=Path, help="policy files")
    config.add_argument("--host", default="0.0.0.0", help="HTTP host on the cluster")
    config.add_argument("--port", type=int, default=8000)
    _add_app_options(config)


def _add_app_options(parser: argparse.ArgumentParser) -> None:
    """The serving knobs of ``deployments.app.AppArgs``; unset ones keep its defaults."""
    group = parser.add_argument_group("serving settings (defaults tuned on 2 cores)")
    group.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=None,
        metavar="N",
        help="requests one ingress replica runs at once (default 64)",
    )
    group.add_argument(
        "--max-queued-requests",
        type=int,
        default=None,
        metavar="N",
        help="requests waiting for the ingress before a 503 with Retry-After "
        "(default 256; -1: no limit)",
    )
    group.add_argument(
        "--coalesce-ms",
        type=float,
        default=None,
        metavar="MS",
        help="longest wait for concurrent requests to share a batch (default 2)",
    )
    group.add_argument("--max-rows", type=int, default=None, metavar="N",
                       help="most rows in one request (default 4096)")  # fmt: skip


def _app_args(args: argparse.Namespace) -> dict[str, object]:
    """``build_app`` arguments from the command line, validated now rather than in Serve."""
    from deployments.app import AppArgs

    given: dict[str, object] = {"policies": [str(p) for p in args.policies]}
    for key in ("max_ongoing_requests", "max_queued_requests", "coalesce_ms", "max_rows"):
        if getattr(args, key, None) is not None:
            given[key] = getattr(args, key)
    AppArgs.model_validate(given)
    return given


def run_serve(args: argparse.Namespace) -> int:
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
    app_args = _app_args(args)
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


def serve_config(app_args: dict[str, object], *, host: str, port: int) -> dict[str, object]:
    """A Serve config serving ``build_app(app_args)``, validated against Serve's own schema."""
    from ray.serve.schema import ServeDeploySchema

    config: dict[str, object] = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": "cascade",
                "route_prefix": "/",
                "import_path": "deployments.app:build_app",
                "args": app_args,
            }
        ],
    }
    ServeDeploySchema.model_validate(config)
    return config


def run_config(args: argparse.Namespace) -> int:
    import yaml

    from cascade.policy import load_policy

    for path in args.policies:
        load_policy(path)
    config = serve_config(_app_args(args), host=args.host, port=args.port)
    print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0


def _curl_example(url: str, name: str, loaded: LoadedPolicy) -> str:
    """A ready-to-paste infer request: one row of zeros of the policy's input width."""
    import json

    from cascade.backends import open_model

    first = next(iter(loaded.policy.tiers))
    spec = open_model(loaded.model_path(first)).input_spec
    width = spec.width or 1
    body: dict[str, object] = {"inputs": [{"name": spec.name, "shape": [1, width],
                                           "datatype": "FP32", "data": [0.0] * width}]}  # fmt: skip
    if spec.dtype == "string":
        body = {"inputs": [{"name": spec.name, "shape": [1], "datatype": "BYTES",
                            "data": ["what is my balance"]}]}  # fmt: skip
    return (f"curl -s {url}/v2/models/{name}/infer -H 'content-type: application/json' "
            f"-d '{json.dumps(body)}'")  # fmt: skip
