"""`cascade config`: a Ray Serve config (or a KubeRay RayService) serving policies."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_app_options", "add_config_command", "app_args_of", "run_config", "serve_config"]


def add_config_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    add_app_options(config)
    config.set_defaults(run=run_config)


def add_app_options(parser: argparse.ArgumentParser) -> None:
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


def app_args_of(args: argparse.Namespace) -> dict[str, object]:
    """``build_app`` arguments from the command line, validated now rather than in Serve."""
    from deployments.app import AppArgs

    given: dict[str, object] = {"policies": [str(p) for p in args.policies]}
    for key in ("max_ongoing_requests", "max_queued_requests", "coalesce_ms", "max_rows"):
        if getattr(args, key, None) is not None:
            given[key] = getattr(args, key)
    AppArgs.model_validate(given)
    return given


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
    config = serve_config(app_args_of(args), host=args.host, port=args.port)
    print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0
