"""`cascade serve`: the policies on a local Ray + Serve, or with ``--runtime edge`` in one
process without Ray (uvicorn), until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cascade.cli.config import (
    HAPROXY_NO_TLS,
    add_app_options,
    add_tls_options,
    app_args_of,
    tls_options,
)
from cascade.errors import CascadeError, PolicyError

if TYPE_CHECKING:
    from cascade.policy import PolicyFile

__all__ = [
    "APP_NAME",
    "add_serve_command",
    "check_port_free",
    "grpc_options",
    "ray_environment",
    "run_reload",
    "run_serve",
]

_GRPC_SERVICER = (
    "cascade.serving._oip.grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"
)


def grpc_options(port: int) -> dict[str, object]:
    """Serve's ``grpc_options`` for the ingress's RPCs on ``port`` (``serve.start``).

    Reflection is off: the messages live in a descriptor pool of their own (see
    ``cascade/serving/_oip/generate.py``), which Serve's reflection service cannot see.

    Example::

        serve.start(http_options={"port": 8000}, grpc_options=grpc_options(8001))
    """
    return {"port": port, "grpc_servicer_functions": [_GRPC_SERVICER], "enable_reflection": False}


APP_NAME = "cascade"
"""The Serve application `cascade serve` runs and `cascade reload` rebuilds."""

HAPROXY_MAXCONN = 0
"""Requests at most in one ingress replica behind HAProxy (``--haproxy-maxconn``; 0: no
limit). Off by default: the queue's bound is one figure for every request, so a burst of
requests with long deadlines (or none) past the limit is refused after it like any other."""
HAPROXY_QUEUE_MS = 20
"""How long a request may wait in HAProxy for a replica (``--haproxy-queue-ms``)."""


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
    serve.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        metavar="PORT",
        help="also serve the Open Inference Protocol over gRPC (inference.GRPCInferenceService,"
        " as KServe and Triton clients call it) on this port (default: HTTP only)",
    )
    serve.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs Ray may use (default: all; ray runtime only)")  # fmt: skip
    serve.add_argument("--no-progress", action="store_true",
                       help="no progress bar while missing models are built")  # fmt: skip
    serve.add_argument(
        "--ray-proxy",
        choices=("haproxy", "serve"),
        default=None,
        help="ray runtime: haproxy (the default where Ray Serve finds an HAProxy binary, as "
        "ray[serve] installs one on Linux) puts HAProxy on --port in front of the ingress "
        "replica's own server and runs Serve throughput-optimized, about 2x the requests per "
        "second; serve: Ray Serve's Python proxy and Ray's defaults",
    )
    serve.add_argument(
        "--haproxy-maxconn",
        type=int,
        default=HAPROXY_MAXCONN,
        metavar="N",
        help="ray runtime with HAProxy: at most N requests in each ingress replica, the rest "
        "wait in HAProxy (default 0: no limit, Ray's own configuration; 32 measured best "
        "under overload, but it refuses a burst past N that waited --haproxy-queue-ms, "
        "whatever its deadline)",
    )
    serve.add_argument(
        "--haproxy-queue-ms",
        type=int,
        default=HAPROXY_QUEUE_MS,
        metavar="MS",
        help="ray runtime with HAProxy: a request that waited this long in HAProxy for a "
        f"replica is refused there with a 503 and Retry-After (default {HAPROXY_QUEUE_MS})",
    )
    add_app_options(serve)
    add_tls_options(serve)
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


def check_port_free(host: str, port: int) -> None:
    """Raise ``CascadeError`` when something listens on ``host:port`` already.

    Ray's proxy and uvicorn would both start anyway (port reuse), and the kernel would then
    split connections between two unrelated servers: asked before anything starts.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CascadeError(f"--host {host}: cannot resolve it: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT only
        try:
            probe.bind(address)
        except OSError as exc:
            raise CascadeError(
                f"{host}:{port} is already in use ({exc.strerror}): is another server (another "
                "`cascade serve`?) running there? Stop it or choose another --port"
            ) from exc


def _read_and_build(args: argparse.Namespace) -> list[PolicyFile]:
    """Read every policy (a bad file fails here, with its line), then build the missing model
    files of the bundled datasets they name: the command line's convenience, never the
    servers'. Building needs the training stack; serving built files does not."""
    from cascade.catalog import require_model_files
    from cascade.policy import read_policy

    loaded = [read_policy(p) for p in args.policies]
    for item in loaded:  # before Ray starts: training wants the cores to itself
        try:
            require_model_files(item)
            continue
        except PolicyError:
            if item.policy.dataset is None:
                raise
        try:
            from cascade.evaluate import ensure_models
        except ModuleNotFoundError as exc:
            raise CascadeError(
                f"{item.path}: its model files are not built yet, and building them needs the "
                f'training stack: pip install "cascade[train]" ({exc})'
            ) from exc
        ensure_models(item, progress=not args.no_progress)
    return loaded


def ray_environment(
    choice: str | None, *, maxconn: int = HAPROXY_MAXCONN, queue_ms: int = HAPROXY_QUEUE_MS
) -> str:
    """Set Ray Serve's request-path switches for ``--ray-proxy choice`` in this process's
    environment, before Ray is imported and started (its processes inherit them); the
    proxy chosen. Variables already set in the environment win over these defaults. With
    HAProxy, ``maxconn`` requests at most in each ingress replica and the rest queued in
    HAProxy for at most ``queue_ms`` (:mod:`cascade.cluster._haproxy`; 0: Ray's config)."""
    import os

    from cascade.cluster import HAPROXY_ENV, haproxy_available, queue_environment

    if choice == "serve":
        return "serve"
    if not haproxy_available():
        if choice == "haproxy":
            raise CascadeError(
                "--ray-proxy haproxy: Ray Serve finds no HAProxy binary (ray[serve] ships one "
                "on Linux; or set RAY_SERVE_HAPROXY_BINARY_PATH); use --ray-proxy serve"
            )
        print("no HAProxy binary for Ray Serve here: serving through Serve's Python proxy "
              "(about half the throughput; see --ray-proxy)", file=sys.stderr)  # fmt: skip
        return "serve"
    for key, value in HAPROXY_ENV.items():
        os.environ.setdefault(key, value)
    if os.environ["RAY_SERVE_ENABLE_HA_PROXY"] != "1":
        raise CascadeError(
            f"RAY_SERVE_ENABLE_HA_PROXY={os.environ['RAY_SERVE_ENABLE_HA_PROXY']} in the "
            "environment contradicts --ray-proxy haproxy: unset it, or use --ray-proxy serve"
        )
    # HAProxy's stats and Prometheus ports are 8404 and 9101 on every interface by default:
    # a second `cascade serve` on this host would find them taken
    for key in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        os.environ.setdefault(key, str(_free_port()))
    # an ingress replica that stops stays reachable this long for load balancers to let go
    # of it (Ray's default: 30 s, which Ctrl-C would wait out); HAProxy retries elsewhere
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    try:
        queue = queue_environment(maxconn=maxconn, queue_ms=queue_ms)
    except FileNotFoundError as exc:
        raise CascadeError(f"--haproxy-maxconn: {exc} (reinstall cascade, or give 0)") from exc
    os.environ.update(queue)
    return "haproxy"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_PATHS = {
    "haproxy": "request path: HAProxy -> the ingress replica, Serve throughput-optimized "
    "(the replica's own port listens on every interface; --ray-proxy serve: Ray's defaults)",
    "serve": "request path: Ray Serve's Python proxy, Ray's defaults",
}


def _serving_args(args: argparse.Namespace) -> dict[str, object]:
    """:func:`app_args_of` for a server on this machine: the token file as an absolute path
    (replicas may start elsewhere), ``CASCADE_TOKEN`` when no option names a token, and
    the token read now, so that a missing or empty one stops here, before anything starts."""
    import os

    from cascade.serving import TOKEN_ENV, ServingLimits

    given = app_args_of(args)
    if "token_file" in given:
        given["token_file"] = str(Path(str(given["token_file"])).resolve())
    elif "token_env" not in given and os.environ.get(TOKEN_ENV) is not None:
        given["token_env"] = TOKEN_ENV
    fields = set(ServingLimits.model_fields)
    ServingLimits.model_validate({k: v for k, v in given.items() if k in fields}).auth()
    return given


def _bearer(given: dict[str, object]) -> str:
    """The curl option sending the token, ready to paste (the shell reads the token from its
    file or variable: the command line never prints it)."""
    import shlex

    if "token_file" in given:
        return f' -H "Authorization: Bearer $(cat {shlex.quote(str(given["token_file"]))})"'
    if "token_env" in given:
        return f' -H "Authorization: Bearer ${given["token_env"]}"'
    return ""


def _announce_auth(given: dict[str, object], tls: dict[str, str]) -> None:
    if "token_file" in given or "token_env" in given:
        where = given.get("token_file") or f"${given.get('token_env')}"
        health = "open" if given.get("open_health", True) else "behind it too"
        print(f"auth:     every request sends Authorization: Bearer <the token in {where}> "
              f"(health routes {health})")  # fmt: skip
    if tls:
        print(f"tls:      HTTPS with {tls['ssl_certfile']}")


def run_serve(args: argparse.Namespace) -> int:
    tls = tls_options(args, local=True)
    if args.runtime == "edge":
        return _run_edge(args, tls)
    choice = args.ray_proxy
    if tls and choice == "haproxy":
        raise CascadeError(f"--tls-cert with --ray-proxy haproxy: {HAPROXY_NO_TLS}")
    if tls:
        choice = "serve"  # the only request path of Ray Serve 2.60 with TLS
    # before Ray is imported: Serve reads it then
    proxy = ray_environment(choice, maxconn=args.haproxy_maxconn, queue_ms=args.haproxy_queue_ms)
    try:
        import ray
        from ray import serve
    except ImportError:
        print('cascade serve needs Ray Serve: pip install "cascade[serve]"', file=sys.stderr)
        return 1
    from cascade.serving import AppArgs
    from deployments.app import app_for

    given = _serving_args(args)
    if proxy == "haproxy" and min(args.haproxy_maxconn, args.haproxy_queue_ms) > 0:
        given["front_queue_ms"] = float(args.haproxy_queue_ms)  # the replicas allow that wait
    app_args = AppArgs.model_validate(given)
    check_port_free(args.host, args.port)
    grpc = None
    if args.grpc_port is not None:
        check_port_free(args.host, args.grpc_port)
        grpc = grpc_options(args.grpc_port)
    loaded = _read_and_build(args)
    names = [item.policy.name for item in loaded]
    # a signal handler that takes no lock: Event.set from a handler deadlocks when a second
    # signal lands while the first handler holds the Event's lock (seen: SIGINT then SIGTERM)
    signals: list[int] = []
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port, **tls}, grpc_options=grpc)
        serve.run(app_for(loaded, app_args), name=APP_NAME, route_prefix="/")
        # After ray.init, which installs a SIGTERM handler of its own that aborts the driver.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, _: signals.append(number))
        url = f"{'https' if tls else 'http'}://{args.host}:{args.port}"
        print(f"serving {', '.join(names)} at {url}/v2/models/<name>/infer  (Ctrl-C stops)")
        print(f"metadata: curl -s {url}/v2/models/{names[0]}{_bearer(given)}")
        print(f"infer:    {_curl_example(url, names[0], loaded[0])}{_bearer(given)}")
        _print_grpc(args)
        print(_PATHS[proxy])
        if "front_queue_ms" in given:
            print(f"overload: at most {args.haproxy_maxconn} requests in the ingress replica, "
                  f"the rest wait in HAProxy at most {args.haproxy_queue_ms} ms, then 503 "
                  "(--haproxy-maxconn, --haproxy-queue-ms)")  # fmt: skip
        _announce_auth(given, tls)
        sys.stdout.flush()
        while not signals:
            time.sleep(0.2)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    print("stopped")
    return 0


def _run_edge(args: argparse.Namespace, tls: dict[str, str]) -> int:
    """The edge runtime: no Ray import on this path, nor in anything it calls."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        print('cascade serve --runtime edge needs uvicorn: pip install cascade',
              file=sys.stderr)  # fmt: skip
        return 1
    from cascade.edge import EdgeSettings, serve_edge

    given = _serving_args(args)
    settings = EdgeSettings.model_validate(
        {k: v for k, v in given.items() if k in EdgeSettings.model_fields}
    )
    check_port_free(args.host, args.port)
    if args.grpc_port is not None:
        check_port_free(args.host, args.grpc_port)
    loaded = _read_and_build(args)
    names = [item.policy.name for item in loaded]

    def announce(url: str) -> None:
        print(f"serving {', '.join(names)} at {url}/v2/models/<name>/infer  (Ctrl-C stops; "
              "edge runtime, no Ray)")  # fmt: skip
        print(f"metadata: curl -s {url}/v2/models/{names[0]}{_bearer(given)}")
        print(f"infer:    {_curl_example(url, names[0], loaded[0])}{_bearer(given)}")
        print(f"metrics:  curl -s {url}/metrics{_bearer(given)}")
        _print_grpc(args)
        _announce_auth(given, tls)
        sys.stdout.flush()

    serve_edge(settings, host=args.host, port=args.port, announce=announce, policies=loaded,
               tls_cert=tls.get("ssl_certfile"), tls_key=tls.get("ssl_keyfile"),
               grpc_port=args.grpc_port)  # fmt: skip
    print("stopped")
    return 0


def _print_grpc(args: argparse.Namespace) -> None:
    if args.grpc_port is not None:
        print(f"grpc:     {args.host}:{args.grpc_port}  (inference.GRPCInferenceService; "
              "tritonclient.grpc.InferenceServerClient)")  # fmt: skip


def run_reload(args: argparse.Namespace) -> int:
    """Rebuild the running app from these files with the settings it was started with
    (``--max-ongoing-requests`` and the rest, read back from its ingress): only the policies
    change, so Serve hands them to the replicas through ``reconfigure``."""
    import os

    # This driver calls the app's handle from synchronous code, which needs the handle's
    # router in a loop of its own, whatever the shell exported for `cascade serve`
    # (RAY_SERVE_THROUGHPUT_OPTIMIZED=1 moves it onto the caller's loop, and there is none).
    os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] = "1"
    try:
        import ray
        from ray import serve
    except ImportError:
        print('cascade reload needs Ray Serve: pip install "cascade[serve]"', file=sys.stderr)
        return 1
    from cascade.serving import AppArgs
    from deployments.app import app_for

    loaded = _read_and_build(args)  # an invalid file stops here, before anything reaches the app
    ray.init(address="auto", include_dashboard=False, log_to_driver=False)
    try:
        try:
            ingress = serve.get_app_handle(APP_NAME)
        except Exception as exc:  # Serve raises RayServeException: no such application
            raise CascadeError(f"no `cascade serve` app is running here: {exc}") from exc
        started_with = ingress.app_args.remote().result()
        app_args = AppArgs.model_validate(
            {**started_with, "policies": [str(p) for p in args.policies]}
        )
        serve.run(app_for(loaded, app_args), name=APP_NAME, route_prefix="/")
    finally:
        ray.shutdown()
    print(f"reloaded {len(args.policies)} policies")
    return 0


def _curl_example(url: str, name: str, loaded: PolicyFile) -> str:
    """A ready-to-paste infer request: one row of zeros of the policy's input width, read from
    a tier's card (no model is opened here: a forest costs hundreds of MB to open)."""
    import json

    from cascade.catalog import TEXT_SIDECAR_SUFFIX, beside, read_card

    first = next(n for n, t in loaded.policy.tiers.items() if not t.is_remote)
    path = loaded.model_path(first)
    card = read_card(path)
    input_name = card.input_name if card is not None else "input"
    if beside(path, TEXT_SIDECAR_SUFFIX).is_file():
        text = {"name": input_name, "shape": [1], "datatype": "BYTES",
                "data": ["what is my balance"]}  # fmt: skip
        body: dict[str, object] = {"inputs": [text]}
    else:
        width = card.n_features if card is not None else 1
        body = {"inputs": [{"name": input_name, "shape": [1, width], "datatype": "FP32",
                            "data": [0.0] * width}]}  # fmt: skip
    return (f"curl -s {url}/v2/models/{name}/infer -H 'content-type: application/json' "
            f"-d '{json.dumps(body)}'")  # fmt: skip
