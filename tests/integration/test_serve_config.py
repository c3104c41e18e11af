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
