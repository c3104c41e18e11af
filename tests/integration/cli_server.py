"""`cascade serve ...` in a subprocess, as a user runs it: ready when it prints "serving",
stopped with SIGTERM (what Ctrl-C and process managers send) when the block ends."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from types import TracebackType


class CliServer:
    """Run ``args``; ``lines`` collects its output, ``returncode`` is set after the block.

    Example::

        with CliServer([cascade, "serve", policy, "--port", "8123"], cwd=ROOT) as server:
            httpx.get("http://127.0.0.1:8123/v2/health/ready")
        assert server.returncode == 0, server.output
    """

    def __init__(
        self,
        args: list[str],
        *,
        cwd: Path,
        ready_timeout_s: float = 180,
        stop_timeout_s: float = 90,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args, self.cwd, self.env = args, cwd, env
        self.ready_timeout_s, self.stop_timeout_s = ready_timeout_s, stop_timeout_s
        self.lines: list[str] = []
        self.returncode: int | None = None
        self._announced = threading.Event()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _read(self) -> None:  # the user waits for the "serving ..." line; so does the test
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("serving "):
                self._announced.set()

    def __enter__(self) -> CliServer:
        self.process = subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._announced.wait(timeout=self.ready_timeout_s):
            self.__exit__(None, None, None)
            raise AssertionError(f"no 'serving' line in {self.ready_timeout_s} s:\n{self.output}")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            self._reader.join(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()
        self.returncode = self.process.returncode
