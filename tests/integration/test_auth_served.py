"""Who may call, over real sockets on 127.0.0.1: the edge runtime with a token and HTTPS
(certificates from a CA made for the test), split inference edge -> remote tier with the
remote's token and its CA, and one `cascade serve` on Ray with a token and HTTPS (the only
Ray start here: TLS is fixed when Serve starts, so no server of another module can take it).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_server import CliServer
from grpc_contract import grpc_status, grpc_stub
from tls_files import TlsFiles, make_tls

from cascade.edge import EdgeSettings, build_edge_app
from cascade.edge.testing import ThreadedServer, free_port
from cascade.serving import bearer_header
from cascade.zoo import read_dataset

pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "policies" / "models" / "digits"
ROWS = read_dataset("digits").test.X[:30]
EDGE_TOKEN = "edge-token-0123456789abcdef"
REMOTE_TOKEN = "remote-token-fedcba9876543210"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def _trust(tls: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.ca))


@pytest.fixture(scope="module")
def remote(
    tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory, digits_policy_models: Path
) -> Iterator[str]:
    """digits' large tier behind its own token and HTTPS: the cluster of split inference."""
    folder = tmp_path_factory.mktemp("remote")
    (folder / "token").write_text(REMOTE_TOKEN + "\n")
    path = folder / "digits.yaml"
    path.write_text(
        "name: digits\nallow_outside_paths: true\n"
        f"tiers:\n  large: {{model: {MODELS / 'large.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: large}\n"
    )
    settings = EdgeSettings(policies=[str(path)], token_file=str(folder / "token"))
    with ThreadedServer(build_edge_app(settings), tls=(str(tls.cert), str(tls.key))) as server:
        yield f"{server.url}/v2/models/digits"


def _split(folder: Path, name: str, url: str, extra: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {MODELS / 'tiny.onnx'}}}\n"
        f"  large:\n    model: {url}\n    cost: 1.0\n    timeout_ms: 5000\n{extra}"
        "routing:\n  kind: confidence\n  chain:\n"
        "    - {tier: tiny, threshold: 0.99}\n    - {tier: large}\n"
    )
    return path


@pytest.fixture(scope="module")
def edge(remote: str, tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An edge with its own token and HTTPS, serving three split policies: ``split`` sends
    the remote's token and trusts its CA; ``wrongtoken`` sends another token; ``untrusted``
    trusts another CA."""
    folder = tmp_path_factory.mktemp("edge")
    (folder / "remote-token").write_text(REMOTE_TOKEN)
    (folder / "other-token").write_text("not-the-remote-token")
    other = make_tls(tmp_path_factory.mktemp("other-ca"))
    policies = [
        _split(folder, "split", remote,
               f"    token_file: remote-token\n    ca_bundle: {tls.ca}\n"),
        _split(folder, "wrongtoken", remote,
               f"    token_file: other-token\n    ca_bundle: {tls.ca}\n"),
        _split(folder, "untrusted", remote,
               f"    token_file: remote-token\n    ca_bundle: {other.ca}\n"),
    ]  # fmt: skip
    os.environ["CASCADE_TEST_EDGE_TOKEN"] = EDGE_TOKEN
    try:
        settings = EdgeSettings(
            policies=[str(p) for p in policies], token_env="CASCADE_TEST_EDGE_TOKEN"
        )
        app = build_edge_app(settings)
    finally:
        del os.environ["CASCADE_TEST_EDGE_TOKEN"]  # read once, at start
    with ThreadedServer(app, tls=(str(tls.cert), str(tls.key))) as server:
        yield server.url


def _infer(client: httpx.Client, model: str) -> list[dict[str, Any]]:
    body = {"inputs": [{"name": "input", "shape": [30, 64], "datatype": "FP32",
                        "data": ROWS.ravel().tolist()}], "parameters": {"trace": True}}  # fmt: skip
    response = client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    decisions: list[dict[str, Any]] = json.loads(response.json()["parameters"]["trace"])
    return decisions


ROUTES = [
    ("GET", "/v2"),
    ("GET", "/v2/models/split"),
    ("GET", "/v2/models/split/ready"),
    ("POST", "/v2/models/split/infer"),
    ("PUT", "/v2/models/split/shadow"),  # the shadow routes change how a model is served
    ("GET", "/v2/models/split/shadow"),
    ("DELETE", "/v2/models/split/shadow"),
    ("POST", "/v2/models/split/shadow/promote"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),
]


def test_every_route_of_the_edge_but_health_answers_401_without_the_token(
    edge: str, tls: TlsFiles
) -> None:
    with httpx.Client(base_url=edge, verify=_trust(tls), timeout=30) as client:
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert client.get(path).status_code == 200  # open: probes carry no secret
        for method, path in ROUTES:
            for headers in ({}, bearer_header("wrong"), {"authorization": f"Basic {EDGE_TOKEN}"}):
                reply = client.request(method, path, headers=headers, json={"inputs": []})
                assert reply.status_code == 401, (method, path, headers)
                assert list(reply.json()) == ["error"]
                assert reply.headers["www-authenticate"].startswith('Bearer realm="cascade"')
                assert "wrong" not in reply.text
        client.headers.update(bearer_header(EDGE_TOKEN))
        assert client.get("/v2").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/no/such/route").status_code == 404
        document = client.get("/openapi.json").json()
        assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{edge}/v2/health/live", timeout=10)  # the system's CAs do not know it


def test_split_inference_sends_the_remote_token_over_verified_tls(edge: str, tls: TlsFiles) -> None:
    with httpx.Client(
        base_url=edge, verify=_trust(tls), timeout=60, headers=bearer_header(EDGE_TOKEN)
    ) as client:
        decisions = _infer(client, "split")
        remote = [d for d in decisions if d["answered_by"] == "large"]
        assert remote and not any(d["degraded"] for d in remote)

        for model, error in (
            ("wrongtoken", "HTTP 401: the endpoint refused the token"),
            ("untrusted", "TLS: "),
        ):
            decisions = _infer(client, model)
            fell_back = [d for d in decisions if d["degraded"]]
            assert fell_back, model  # the local answer, marked degraded: never a 5xx
            message = fell_back[0]["steps"][-1]["error"]
            assert error in message, message
            assert REMOTE_TOKEN not in message and "not-the-remote-token" not in message


def test_the_edge_cli_serves_https_with_the_token_from_a_file(
    tls: TlsFiles, digits_policy_models: Path, tmp_path: Path
) -> None:
    from cascade.serving._oip import grpc_service_pb2 as pb

    token = tmp_path / "token"
    token.write_text(EDGE_TOKEN + "\n")
    port, grpc_port = free_port(), free_port()
    cli = Path(sys.executable).with_name("cascade")
    env = {k: v for k, v in os.environ.items() if k != "CASCADE_TOKEN"}
    argv = [str(cli), "serve", "--runtime", "edge", "policies/digits.yaml", "--port", str(port),
            "--tls-cert", str(tls.cert), "--tls-key", str(tls.key), "--no-progress",
            "--token-file", str(token), "--grpc-port", str(grpc_port)]  # fmt: skip
    server = CliServer(argv, cwd=ROOT, ready_timeout_s=120, stop_timeout_s=60, env=env)
    url = f"https://127.0.0.1:{port}"
    with server, httpx.Client(base_url=url, verify=_trust(tls), timeout=30) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/v2/models/digits").status_code == 401
        assert client.get("/v2/models/digits", headers=bearer_header(EDGE_TOKEN)).is_success
        # gRPC: the same certificate, the token as metadata, health open as its routes are
        with grpc_stub(f"127.0.0.1:{grpc_port}", ca=tls.ca) as stub:
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=60).ready
            metadata = pb.ModelMetadataRequest(name="digits")
            assert grpc_status(stub.ModelMetadata, metadata)[0] == "UNAUTHENTICATED"
            bearer = [("authorization", f"Bearer {EDGE_TOKEN}")]
            assert grpc_status(stub.ModelMetadata, metadata, metadata=bearer) == ("OK", "")
    assert server.returncode == 0, server.output
    assert f"serving digits at {url}/v2/models/<name>/infer" in server.output
    assert f"Authorization: Bearer <the token in {token}> (health routes open)" in server.output
    # the curl examples it prints send the token, read by the shell from the file
    assert f'/v2/models/digits -H "Authorization: Bearer $(cat {token})"' in server.output
    assert EDGE_TOKEN not in server.output


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--token-file", "/nonexistent/token"], "token file /nonexistent/token: cannot read"),
        (["--token-env", "CASCADE_UNSET_FOR_TEST"], "CASCADE_UNSET_FOR_TEST is not set"),
        (["--token-env", "CASCADE_EMPTY_FOR_TEST"], "CASCADE_EMPTY_FOR_TEST is empty"),
    ],
)
def test_the_cli_refuses_incomplete_tls_or_a_missing_token_before_serving(
    flags: list[str], error: str
) -> None:
    cli = Path(sys.executable).with_name("cascade")
    result = subprocess.run(
        [str(cli), "serve", "--runtime", "edge", "policies/digits.yaml", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "CASCADE_EMPTY_FOR_TEST": " "},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert error in result.stderr
    assert "serving" not in result.stdout


def test_the_ray_runtime_serves_https_and_asks_every_route_but_health_for_the_token(
    tls: TlsFiles, digits_policy_models: Path, tmp_path: Path
) -> None:
    """One `cascade serve` on Ray: HTTPS through Serve's proxy (HAProxy speaks plain HTTP
    only, so --tls-cert picks --ray-proxy serve), the token from CASCADE_TOKEN, which the
    ingress replica reads from the environment it inherits (never from the app's config),
    and --auth-health closing the health routes too."""
    pytest.importorskip("ray.serve")
    from cascade.serving._oip import grpc_service_pb2 as pb

    port, grpc_port = free_port(), free_port()
    cli = Path(sys.executable).with_name("cascade")
    env = {**os.environ, "CASCADE_TOKEN": EDGE_TOKEN}
    argv = [str(cli), "serve", "policies/digits.yaml", "--port", str(port), "--num-cpus", "2",
            "--no-progress", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
            "--auth-health", "--grpc-port", str(grpc_port)]  # fmt: skip
    server = CliServer(argv, cwd=ROOT, ready_timeout_s=180, stop_timeout_s=90, env=env)
    url = f"https://127.0.0.1:{port}"
    with server, httpx.Client(base_url=url, verify=_trust(tls), timeout=30) as client:
        for method, path in [*ROUTES[:-2], ("GET", "/v2/health/live")]:
            reply = client.request(method, path.replace("split", "digits"), json={"inputs": []})
            assert reply.status_code == 401, (method, path, reply.text)
            assert reply.headers["www-authenticate"] == 'Bearer realm="cascade"'
        # Serve's proxy answers its own routes before the app: open, and documented so
        assert client.get("/-/healthz").status_code == 200
        wrong = client.get("/v2", headers=bearer_header("wrong"))
        assert wrong.status_code == 401 and "invalid_token" in wrong.headers["www-authenticate"]
        client.headers.update(bearer_header(EDGE_TOKEN))
        assert client.get("/v2/health/ready").status_code == 200
        body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                            "data": ROWS[:2].ravel().tolist()}]}  # fmt: skip
        assert client.post("/v2/models/digits/infer", json=body).status_code == 200
        # gRPC through Serve's gRPC proxy (plaintext: Serve's TLS is its HTTP proxy's)
        with grpc_stub(f"127.0.0.1:{grpc_port}") as stub:
            live = pb.ServerLiveRequest()
            assert grpc_status(stub.ServerLive, live)[0] == "UNAUTHENTICATED"
            bearer = [("authorization", f"Bearer {EDGE_TOKEN}")]
            assert grpc_status(stub.ServerLive, live, metadata=bearer) == ("OK", "")
    assert server.returncode == 0, server.output
    assert f"serving digits at {url}/v2/models/<name>/infer" in server.output
    assert "request path: Ray Serve's Python proxy" in server.output
    assert "<the token in $CASCADE_TOKEN> (health routes behind it too)" in server.output
    assert EDGE_TOKEN not in server.output


def test_tls_with_the_haproxy_ingress_is_refused_with_the_way_out(tls: TlsFiles) -> None:
    cli = Path(sys.executable).with_name("cascade")
    result = subprocess.run(
        [str(cli), "serve", "policies/digits.yaml", "--ray-proxy", "haproxy",
         "--tls-cert", str(tls.cert), "--tls-key", str(tls.key)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "HAProxy ingress speaks plain HTTP only; use --ray-proxy serve" in result.stderr
