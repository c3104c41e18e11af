"""`cascade serve` pinned to one core, as a subprocess: what the served benchmarks start.

Imported by ``benchmarks/served_cost.py`` and ``benchmarks/overload.py`` (run as scripts, so
this folder is on ``sys.path``).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("cascade")


class Server:
    """`cascade serve` on one core, up once it prints its "serving" line.

    ``runtime``: ``ray`` (Serve's bookkeeping gets 8 logical CPUs; the process tree still
    runs on the one core) or ``edge``; ``extra``: more `cascade serve` options.
    """

    def __init__(
        self, runtime: str, policies: list[Path], *, port: int, core: int,
        extra: list[str] | None = None,
    ) -> None:  # fmt: skip
        self.port = port
        argv = ["taskset", "-c", str(core), str(CLI), "serve", *map(str, policies),
                "--port", str(port), "--no-progress", *(extra or [])]  # fmt: skip
        argv += ["--runtime", "edge"] if runtime == "edge" else ["--num-cpus", "8"]
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line)
                if line.startswith("serving "):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        began = time.monotonic()
        while not ready.wait(timeout=1.0):
            if self.process.poll() is not None or time.monotonic() - began > 600:
                self.stop()
                raise RuntimeError(f"{runtime} server did not start:\n" + "".join(self.lines[-40:]))

    def cpu_s(self) -> float:
        """CPU seconds of the server's whole process tree so far."""
        import psutil

        total = 0.0
        root = psutil.Process(self.process.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
