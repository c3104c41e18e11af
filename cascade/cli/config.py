"""`cascade config`: a Ray Serve config (or a KubeRay RayService) serving policies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "HAPROXY_NO_TLS",
    "add_app_options",
    "add_config_command",
    "add_tls_options",
    "app_args_of",
    "run_config",
    "tls_options",
]

HAPROXY_NO_TLS = (
    "Ray Serve's HAProxy ingress speaks plain HTTP only; use --ray-proxy serve (Serve's proxy "
    "serves HTTPS), or terminate TLS in front of HAProxy"
)


def add_config_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser(
        "config",
        help="write a Ray Serve config (or a KubeRay RayService) serving the policies",
        description="Write a Serve config for `serve deploy` on a Ray cluster, checked against "
        "Serve's schema, with every deployment's replicas or autoscaling, request limits and "
        "Ray resources spelled out. Policy files are named as given (the cluster's working "
        "directory must hold them) unless --package zips them with their models into a "
        "runtime_env working_dir; --kuberay writes a RayService manifest instead.",
    )
    config.add_argument("policies", nargs="+", type=Path, help="policy files")
    config.add_argument("--host", default="0.0.0.0", help="HTTP host on the cluster")
    config.add_argument("--port", type=int, default=8000)
    config.add_argument(
        "--proxy-location",
        choices=("EveryNode", "HeadOnly", "Disabled"),
        default="EveryNode",
        help="where Serve runs HTTP proxies (default EveryNode; HeadOnly when several "
        "nodes share one host)",
    )
    config.add_argument(
        "--ray-proxy",
        choices=("haproxy", "serve"),
        default="haproxy",
        help="haproxy (default): the KubeRay pods run Ray Serve with HAProxy in front of the "
        "ingress replicas and throughput-optimized (about 2x the requests per second); a "
        "plain Serve config cannot switch that, the cluster's environment does (see README); "
        "serve: Ray Serve's Python proxy and Ray's defaults",
    )
    config.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    package = config.add_argument_group("policy package (runtime_env)")
    package.add_argument(
        "--package",
        type=Path,
        metavar="ZIP",
        help="zip the policies and exactly the model files they read into ZIP, and serve "
        "them from it (runtime_env.working_dir)",
    )
    package.add_argument(
        "--package-uri",
        metavar="URI",
        help="where the cluster fetches ZIP (s3://, gs://, https://...; default: file://ZIP, "
        "for nodes sharing this filesystem)",
    )
    kube = config.add_argument_group("KubeRay")
    kube.add_argument("--kuberay", action="store_true",
                      help="write a ray.io/v1 RayService manifest")  # fmt: skip
    kube.add_argument("--name", help="RayService name (default: cascade-POLICY)")
    kube.add_argument(
        "--image",
        default=None,
        help="image with cascade, policies and models "
        "(default cascade-serve:latest, see deployments/kuberay/Dockerfile)",
    )
    kube.add_argument("--image-root", default="/app", type=PurePosixPath,
                      help="the folder of the image the policy paths are relative to")  # fmt: skip
    kube.add_argument("--worker-cpus", type=int, default=4, help="CPUs per worker pod")
    kube.add_argument(
        "--token-secret",
        metavar="NAME[/KEY]",
        help="the bearer token from the Kubernetes Secret NAME (key KEY, default token), "
        "as CASCADE_TOKEN in every Ray container: the manifest names the Secret, never the "
        "token (kubectl create secret generic NAME --from-file=token=PATH)",
    )
    add_app_options(config)
    add_tls_options(config, where="paths on the cluster's nodes; with --ray-proxy serve")
    config.add_argument("--cpu-only", action="store_true",
                        help="never ask Ray for GPUs, even for tiers naming CUDA")  # fmt: skip
    config.set_defaults(run=run_config)


def add_app_options(parser: argparse.ArgumentParser) -> None:
    """The serving knobs of ``cascade.serving.AppArgs``; unset ones keep its defaults."""
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
    group.add_argument("--ingress-replicas", type=int, default=None, metavar="N",
                       help="ingress replicas (default 1)")  # fmt: skip
    group.add_argument("--ingress-num-cpus", type=float, default=None, metavar="CPUS",
                       help="logical CPUs per ingress replica (default 0.5)")  # fmt: skip
    auth = parser.add_argument_group(
        "who may call (a bearer token every request must send; none: anyone who reaches the port)"
    )
    auth.add_argument(
        "--token-file",
        metavar="PATH",
        help="file holding the token, read once at start (on the serving machine; for a "
        "cluster, e.g. a mounted Secret)",
    )
    auth.add_argument(
        "--token-env",
        metavar="NAME",
        help="environment variable holding the token, in the serving processes' environment "
        "(`cascade serve` reads CASCADE_TOKEN when neither option is given)",
    )
    auth.add_argument(
        "--auth-health",
        action="store_true",
        help="ask for the token on /v2/health/live and /v2/health/ready too (default: open, "
        "for probes)",
    )


def add_tls_options(parser: argparse.ArgumentParser, *, where: str = "") -> None:
    """``--tls-cert`` and ``--tls-key``: HTTPS, uvicorn's and Ray Serve's PEM files."""
    tls = parser.add_argument_group(f"TLS (HTTPS; both or neither{'; ' + where if where else ''})")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM",
                     help="server certificate (then its chain), PEM")  # fmt: skip
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key, PEM")


def tls_options(args: argparse.Namespace, *, local: bool) -> dict[str, str]:
    """``ssl_certfile``/``ssl_keyfile`` (uvicorn's and Serve's names) from ``--tls-*``; files
    on this machine (``local``) must exist and are named by absolute path."""
    from cascade.errors import CascadeError

    if (args.tls_cert is None) != (args.tls_key is None):
        raise CascadeError("--tls-cert and --tls-key go together: the certificate and its key")
    if args.tls_cert is None:
        return {}
    paths = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
    if not local:
        return {key: str(path) for key, path in paths.items()}
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if not path.is_file():
            raise CascadeError(f"{option} {path}: no such file")
    return {key: str(path.resolve()) for key, path in paths.items()}


_APP_KNOBS = (
    "max_ongoing_requests",
    "max_queued_requests",
    "coalesce_ms",
    "max_rows",
    "ingress_replicas",
    "ingress_num_cpus",
)


def app_args_of(args: argparse.Namespace) -> dict[str, object]:
    """``build_app`` arguments from the command line, validated now rather than in Serve."""
    from cascade.serving import AppArgs

    given: dict[str, object] = {"policies": [str(p) for p in args.policies]}
    for key in _APP_KNOBS:
        if getattr(args, key, None) is not None:
            given[key] = getattr(args, key)
    if getattr(args, "token_file", None) is not None:
        given["token_file"] = str(args.token_file)
    if getattr(args, "token_env", None) is not None:
        given["token_env"] = args.token_env
    if getattr(args, "auth_health", False):
        given["open_health"] = False
    AppArgs.model_validate(given)
    return given


def run_config(args: argparse.Namespace) -> int:
    from cascade.cluster import (
        HAPROXY_ENV,
        build_package,
        dump_yaml,
        kuberay_manifest,
        serve_config,
    )
    from cascade.errors import PolicyError
    from cascade.policy import read_policy
    from cascade.serving import TOKEN_ENV, AppArgs

    loaded = [read_policy(p) for p in args.policies]
    given = app_args_of(args)
    tls = tls_options(args, local=False)
    if tls and args.kuberay:
        raise PolicyError(
            "--tls-cert with --kuberay: the RayService's Serve proxy port is KubeRay's; "
            "terminate TLS at a Kubernetes Ingress or Gateway in front of it"
        )
    if tls and args.ray_proxy == "haproxy":
        raise PolicyError(f"--tls-cert with --ray-proxy haproxy (the default): {HAPROXY_NO_TLS}")
    if args.token_secret is not None:
        if not args.kuberay:
            raise PolicyError("--token-secret names a Kubernetes Secret: it needs --kuberay")
        if "token_file" in given or "token_env" in given:
            raise PolicyError("--token-secret sets the token: leave out --token-file/--token-env")
        given["token_env"] = TOKEN_ENV
    given["use_gpus"] = not args.cpu_only
    runtime_env: dict[str, Any] | None = None
    if args.package is not None and args.kuberay:
        raise PolicyError("--package and --kuberay exclude each other: the image holds the files")
    if args.package is not None:
        package = build_package(args.policies, args.package)
        given["policies"] = package.policies
        uri = args.package_uri or package.path.resolve().as_uri()
        runtime_env = {"working_dir": uri}
        print(f"package: {package.path} ({len(package.files)} files, "
              f"{package.size_bytes / 2**20:.1f} MiB) -> {uri}", file=sys.stderr)  # fmt: skip
    elif args.package_uri is not None:
        raise PolicyError("--package-uri needs --package ZIP")
    if args.kuberay:
        # the image is built from this folder (deployments/kuberay/Dockerfile); models of
        # bundled datasets that it lacks are built where the app starts, as `serve` does
        given["policies"] = [str(args.image_root / _inside_cwd(p)) for p in args.policies]
    config = serve_config(
        loaded,
        AppArgs.model_validate(given),
        host=args.host,
        port=args.port,
        proxy_location=args.proxy_location,
        runtime_env=runtime_env,
        tls=tls,
    )
    document: dict[str, Any] = config
    if args.kuberay:
        name = args.name or "cascade-" + "-".join(i.policy.name for i in loaded).lower()
        options: dict[str, Any] = {"name": name, "worker_cpus": args.worker_cpus}
        if args.image:
            options["image"] = args.image
        env: dict[str, Any] = dict(HAPROXY_ENV) if args.ray_proxy == "haproxy" else {}
        if args.token_secret is not None:
            secret, _, key = args.token_secret.partition("/")
            env[TOKEN_ENV] = {"secretKeyRef": {"name": secret, "key": key or "token"}}
        if env:
            options["env"] = env
        document = kuberay_manifest(config, **options)
    elif args.ray_proxy == "haproxy":
        switches = " ".join(f"{key}={value}" for key, value in HAPROXY_ENV.items())
        print(f"for Serve's fast request path, start every Ray node with {switches} in its "
              "environment (a Serve config cannot set it)", file=sys.stderr)  # fmt: skip
    text = dump_yaml(document)
    if args.output is None:
        print(text, end="")
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _inside_cwd(path: Path) -> PurePosixPath:
    """``path`` relative to the working directory, the folder the image is built from."""
    from cascade.errors import PolicyError

    try:
        return PurePosixPath(path.resolve().relative_to(Path.cwd().resolve()).as_posix())
    except ValueError:
        raise PolicyError(
            f"{path}: --kuberay names policies by their path in the image, built from the "
            f"working directory ({Path.cwd()}); run it from the folder that holds the policy"
        ) from None
