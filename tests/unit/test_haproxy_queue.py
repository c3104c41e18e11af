"""`cascade-haproxy`: Ray Serve's HAProxy configuration with a limit on each replica and a
queue bounded in time, and the program that applies it, then becomes HAProxy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cascade.cluster import queue_environment, queued_config
from cascade.cluster._haproxy import BINARY_ENV, MAXCONN_ENV, QUEUE_MS_ENV, main

# the shape Ray Serve 2.60 writes (trimmed): an app backend with one replica and the
# fallback to its Python proxy as a backup, a backend without servers, a router backend
RAY_CONFIG = """\
global
    maxconn 4096
defaults
    mode http
    errorfile 503 /tmp/haproxy-serve/x/500.http
frontend http_frontend
    bind 127.0.0.1:8000
    use_backend http-cascade if is_http-cascade
    default_backend default_backend
backend default_backend
    http-request return status 404 content-type text/plain lf-string "not found"
backend http-cascade
    log global
    http-reuse always
    default-server fastinter 250ms downinter 250ms fall 2 rise 2 inter 5s check
    server SERVE_REPLICA_cascade-Ingress-a0 127.0.0.1:30001 check observe layer4
    server SERVE_REPLICA_cascade-Ingress-b1 127.0.0.1:30002 check observe layer4
    server SERVE_PROXY_ACTOR-fallback-x 127.0.0.1:8500 check backup
backend http-cascade-via-ingress-request-router
    server SERVE_REPLICA_cascade-Ingress-a0 127.0.0.1:30001 check
listen stats
  bind *:60099
"""


def _section(text: str, head: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(head)
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()),
        len(lines),
    )
    return lines[start:end]


def test_replica_servers_get_the_limit_and_their_backend_a_timed_queue() -> None:
    text = queued_config(RAY_CONFIG, maxconn=64, queue_ms=20)
    backend = _section(text, "backend http-cascade")
    servers = [line for line in backend if line.strip().startswith("server ")]
    assert [s.endswith(" maxconn 64") for s in servers] == [True, True, False]  # not the backup
    assert "    timeout queue 20ms" in backend
    (error,) = [line for line in backend if "http-error status 503" in line]
    assert "content-type application/json" in error and error.endswith("hdr retry-after 1")
    body = json.loads(error.split("string '", 1)[1].rsplit("'", 1)[0])
    assert "within 20 ms" in body["error"]
    # what has no replica servers, or routes elsewhere, is as Ray wrote it
    for head in ("backend default_backend", "backend http-cascade-via-ingress-request-router",
                 "frontend http_frontend", "defaults", "listen stats"):  # fmt: skip
        assert _section(text, head) == _section(RAY_CONFIG, head)


def test_the_rewrite_is_idempotent_and_zero_turns_it_off() -> None:
    once = queued_config(RAY_CONFIG, maxconn=8, queue_ms=50)
    assert queued_config(once, maxconn=8, queue_ms=50) == once
    assert queued_config(RAY_CONFIG, maxconn=0, queue_ms=50) == RAY_CONFIG
    assert queued_config(RAY_CONFIG, maxconn=8, queue_ms=0) == RAY_CONFIG


def test_the_program_rewrites_the_file_then_becomes_the_real_haproxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_CONFIG)
    ran: list[tuple[str, list[str]]] = []

    def execv(path: str, argv: list[str]) -> None:
        ran.append((path, argv))
        raise SystemExit(0)  # execv does not return

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setenv(BINARY_ENV, "/opt/haproxy")
    monkeypatch.setenv(MAXCONN_ENV, "16")
    monkeypatch.setenv(QUEUE_MS_ENV, "30")
    with pytest.raises(SystemExit):
        main(["-db", "-f", str(config), "-sf", "123"])
    assert ran == [("/opt/haproxy", ["/opt/haproxy", "-db", "-f", str(config), "-sf", "123"])]
    assert "    timeout queue 30ms" in config.read_text()
    assert " maxconn 16" in config.read_text()


def test_the_environment_names_this_program_and_the_real_binary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(BINARY_ENV, "/opt/haproxy")
    env = queue_environment(maxconn=64, queue_ms=20)
    assert env[BINARY_ENV] == "/opt/haproxy"
    assert Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).name == "cascade-haproxy"
    assert os.access(env["RAY_SERVE_HAPROXY_BINARY_PATH"], os.X_OK)  # installed with cascade
    assert (env[MAXCONN_ENV], env[QUEUE_MS_ENV]) == ("64", "20")
    assert queue_environment(maxconn=0, queue_ms=20) == {}
