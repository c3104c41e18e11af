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
    assert app["args"] == {"policies": policies}
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8123}


def test_config_refuses_an_invalid_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntiers: {}\nrouting: {kind: confidence, chain: []}\n")
    assert main(["config", str(bad)]) == 1
    assert "bad.yaml" in capsys.readouterr().err


def test_a_gear_the_replica_cannot_reach_is_refused(tmp_path: Path) -> None:
    from cascade.errors import PolicyError
    from deployments.app import build_app

    policy = tmp_path / "geared.yaml"
    models = ROOT / "policies" / "models" / "digits"
    policy.write_text(
        "name: geared\nallow_outside_paths: true\n"
        f"tiers:\n  tiny: {{model: {models / 'tiny.onnx'}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: tiny}\n"
        "gears:\n  - {name: swamped, queue_depth_at_least: 100}\n"
    )
    with pytest.raises(PolicyError, match=r"gears \['swamped'\] engage above "
                       r"max_ongoing_requests \(64\)"):  # fmt: skip
        build_app({"policies": [str(policy)]})
    build_app({"policies": [str(policy)], "max_ongoing_requests": 128})  # now it can engage
