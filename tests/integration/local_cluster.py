"""A multi-node Ray cluster made of processes on this host, torn down by PID.

Each node is one ``ray start --block`` process (its own resources and ports on 127.0.0.1,
token authentication with a token of its own), started in a new session so that nothing it
spawns outlives :meth:`LocalCluster.close`. Killing a node kills its process tree with
SIGKILL: the raylet, its agents and every worker (replica) process it started, as a machine
that loses power would.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from cascade.edge.testing import free_port

BIN = Path(sys.executable).parent


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int] = field(default_factory=dict)
    node_id: str | None = None

    def tree(self) -> list[psutil.Process]:
        """This node's processes: ``ray start`` and everything below it."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


class LocalCluster:
    """A Ray head (with dashboard, for ``serve deploy``) and workers on 127.0.0.1."""

    def __init__(self) -> None:
        # short: Ray's unix sockets live below it and their paths may not pass 107 bytes
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            # replicas and handles report their load every second, not every 10 s, so
            # that autoscaling follows the test's phases within seconds
            "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
            "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
        }
        self.nodes: dict[str, Node] = {}
        self.gcs_port = free_port()
        self.dashboard_port = free_port()

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str], *, num_cpus: int) -> Node:
        ports = {key: free_port() for key in (
            "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        )}  # fmt: skip
        command = [
            str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(num_cpus), "--temp-dir", str(self.temp_dir),
            "--disable-usage-stats", "--min-worker-port=0", "--max-worker-port=0",  # any free port
            *[f"--{key}={value}" for key, value in ports.items()], *args,
        ]  # fmt: skip
        log = self.temp_dir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True, cwd=self.temp_dir,
            )  # fmt: skip
        node = Node(name, process, log, ports)
        self.nodes[name] = node
        return node

    def start_head(self, *, num_cpus: int) -> Node:
        node = self._start("head", [
            "--head", f"--port={self.gcs_port}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
        ], num_cpus=num_cpus)  # fmt: skip
        self._wait(lambda: self._get("/api/serve/applications/").status_code == 200, node, 60)
        return node

    def add_worker(self, name: str, *, num_cpus: int) -> Node:
        before = self.alive_nodes()
        node = self._start(name, [f"--address=127.0.0.1:{self.gcs_port}"], num_cpus=num_cpus)
        self._wait(lambda: len(self.alive_nodes()) > len(before), node, 60)
        (node.node_id,) = set(self.alive_nodes()) - set(before)
        return node

    def _wait(self, ready: Any, node: Node, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited: {node.log.read_text()[-3000:]}")
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"{node.name} not ready in {timeout_s} s: {node.log.read_text()[-3000:]}"
        )

    def _get(self, path: str) -> httpx.Response:
        headers = {"x-ray-authorization": f"Bearer {self.token}"}
        return httpx.get(self.dashboard + path, headers=headers, timeout=10)

    def alive_nodes(self) -> list[str]:
        """Node ids of the nodes alive now (Ray's state API, through the dashboard)."""
        response = self._get("/api/v0/nodes?detail=1&limit=100")
        response.raise_for_status()
        nodes = response.json()["data"]["result"]["result"]
        return [n["node_id"] for n in nodes if n["state"] == "ALIVE"]

    def head_node_id(self) -> str:
        response = self._get("/api/v0/nodes?detail=1&limit=100")
        nodes = response.json()["data"]["result"]["result"]
        return next(n["node_id"] for n in nodes if n["is_head_node"] and n["state"] == "ALIVE")

    def deploy(self, config: Path) -> None:
        """``serve deploy CONFIG`` with the Serve CLI, as an operator would."""
        subprocess.run(
            [str(BIN / "serve"), "deploy", str(config), "--address", self.dashboard],
            env=self.env, check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def serve_status(self) -> dict[str, Any]:
        response = self._get("/api/serve/applications/")
        response.raise_for_status()
        status: dict[str, Any] = response.json()
        return status

    def replicas(self, deployment: str, app: str = "cascade") -> list[dict[str, Any]]:
        apps = self.serve_status()["applications"]
        if app not in apps:
            return []
        found: list[dict[str, Any]] = (
            apps[app]["deployments"].get(deployment, {}).get("replicas", [])
        )
        return found

    def kill(self, name: str) -> int:
        """SIGKILL a node's whole process tree; the number of processes killed."""
        node = self.nodes.pop(name)
        procs = node.tree()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=15)
        node.process.wait(timeout=15)  # reap `ray start`, our child
        return len(procs)

    def close(self) -> None:
        """Kill every node (workers first) by PID, then remove the temp dir."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            self.kill(name)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
