"""The answer log on the real edge runtime, fed back to `cascade calibrate --from-log`.

A real edge server (uvicorn, real ONNX digits tiers) logs the rows it answers; a client
sends requests with ids, posts true labels for some of them, and the server's shutdown
writes what its log still holds. `cascade calibrate --from-log` then recalibrates the
policy on that log and prints the held-back check.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from cascade.cli import main
from cascade.edge import EdgeSettings, build_edge_app
from cascade.edge.testing import ThreadedServer
from cascade.zoo import read_dataset

pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[2]


def logged_digits_policy(
    directory: Path, models: Path, log: str = "{path: logs}", *, deployment: bool = False
) -> Path:
    """The shipped digits policy, its models by absolute path, with a ``log`` section; its
    large tier inline unless ``deployment`` (the edge has no deployments)."""
    text = (ROOT / "policies" / "digits.yaml").read_text()
    text = text.replace("models/digits/", f"{models}/")
    if not deployment:
        text = text.replace("placement: deployment", "placement: inline")
    path = directory / "digits.yaml"
    path.write_text(text + f"allow_outside_paths: true\nlog: {log}\n")
    return path


def _body(rows: np.ndarray, request_id: str | None) -> dict[str, object]:
    body: dict[str, object] = {
        "inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                    "data": rows.ravel().tolist()}]
    }  # fmt: skip
    if request_id is not None:
        body["id"] = request_id
    return body


def test_an_edge_log_with_feedback_recalibrates_the_policy(
    digits_policy_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = logged_digits_policy(tmp_path, digits_policy_models)
    dataset = read_dataset("digits")
    X = np.concatenate([dataset.calibration.X, dataset.test.X]).astype(np.float32)
    y = np.concatenate([dataset.calibration.y, dataset.test.y])
    labelled = 0
    app = build_edge_app(EdgeSettings(policies=[str(policy)]))
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for k, start in enumerate(range(0, len(X), 8)):
            rows = X[start : start + 8]
            request_id = None if k % 10 == 9 else f"q{k}"  # some clients send no id
            answer = client.post("/v2/models/digits/infer", json=_body(rows, request_id))
            assert answer.status_code == 200, answer.text
            if request_id is not None and k % 4 == 0:
                labels = [str(v) for v in y[start : start + 8]]  # class names
                sent = client.post("/v2/models/digits/feedback",
                                   json={"id": request_id, "labels": labels})  # fmt: skip
                assert sent.json() == {"id": request_id, "labels": len(labels),
                                       "matched": True}  # fmt: skip
                labelled += len(labels)
        metrics = client.get("/metrics").text
        log_state = client.get("/v2/models/digits/config").json()["load"]["log"]
    assert 'ray_cascade_log_records_total{model="digits",outcome="written"}' in metrics
    assert log_state["file"] == str((tmp_path / "logs" / "digits.jsonl").resolve())
    lines = (tmp_path / "logs" / "digits.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    answers = [r for r in records if r["kind"] == "answer"]
    assert len(answers) == len(X)  # the shutdown wrote every row still queued
    assert sum(r["kind"] == "feedback" for r in records) == labelled
    assert {r["answered_by"] for r in answers} == {"tiny", "large"}
    assert sum(r["id"] is None for r in answers) > 0

    status = main(["calibrate", str(policy), "--from-log", str(tmp_path / "logs"),
                   "--target-relative-accuracy", "0.97", "--confidence", "0.8",
                   "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0, out
    held = round(len(X) * 0.5)
    assert f"held-back check on {held:,} logged rows" in out
    assert "digits (serving)" in out and "digits (recalibrated)" in out
    assert f"feedback on {labelled:,} rows; the answer of tier 'large'" in out
    assert "target relative accuracy 0.97 on the held-back rows" in out
    provenance = yaml.safe_load(policy.read_text())["provenance"]
    assert provenance["dataset"] == (
        f"live log {tmp_path / 'logs'} ({len(X):,} rows, {labelled:,} labelled by feedback, "
        "the rest by tier large)"
    )
    assert provenance["split"].startswith(f"calibration (log): {len(X) - held:,} of {len(X):,}")
    assert provenance["target"] == {"relative_accuracy": 0.97}
    assert yaml.safe_load(policy.read_text())["log"] == {"path": "logs"}  # kept as it was


def test_from_log_refuses_a_log_without_inputs(
    digits_policy_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = logged_digits_policy(tmp_path, digits_policy_models, "{path: logs, inputs: hash}")
    rows = read_dataset("digits").test.X[:16].astype(np.float32)
    app = build_edge_app(EdgeSettings(policies=[str(policy)]))
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/v2/models/digits/infer", json=_body(rows, "a")).status_code == 200
    status = main(["calibrate", str(policy), "--from-log", str(tmp_path / "logs"),
                   "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert status != 0
    assert "no row of model 'digits' was logged with its input" in err
    assert "hashed 16" in err
