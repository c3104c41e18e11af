"""The live audit inside the service: it never touches an answer or delays it, it reports
agreement with the top tier in metadata and metrics, it stays off under gears and after a
shed, and its alarms are logged once when raised and once when cleared. Real tiny model
(digits), the top tier a fake backend. No Ray, no sockets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade.backends import InputSpec, OnnxModel
from cascade.catalog import ModelCard
from cascade.edge import PrometheusMetrics
from cascade.errors import PolicyError
from cascade.policy import parse_policy
from cascade.serving import InferenceService, PolicyText, ServedModel
from cascade.zoo import read_dataset


class _Top:
    """The top tier: answers by ``answer``, or never while ``blocked``."""

    def __init__(self, spec: InputSpec, answer: Callable[[np.ndarray], np.ndarray]) -> None:
        self.name = "large"
        self.input_spec = spec
        self.answer = answer
        self.blocked = False
        self.calls: list[int] = []

    async def predict(self, batch: Any) -> np.ndarray:
        self.calls.append(len(batch))
        if self.blocked:
            await asyncio.Event().wait()
        return self.answer(np.asarray(batch))


_ON = "{sample_rate: 1.0, max_rows_per_s: 100000}"  # every row below the top tier


def _class3(rows: np.ndarray) -> np.ndarray:
    return np.repeat(np.eye(10, dtype=np.float32)[[3]], len(rows), axis=0)


def _policy(models: Path, *, audit: str | None, threshold: float = 0.9, extra: str = "") -> str:
    text = (
        "name: digits\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}}}\n"
        f"  large: {{model: {models / 'large.onnx'}, placement: deployment}}\n"
        "routing:\n  kind: confidence\n  chain:\n"
        f"    - {{tier: tiny, threshold: {threshold}}}\n    - {{tier: large}}\n"
    )
    if audit is not None:
        text += f"audit: {audit}\n"
    return text + extra


def _service(
    tmp_path: Path, text: str, answer: Callable[[np.ndarray], np.ndarray] = _class3
) -> tuple[InferenceService, list[_Top], PrometheusMetrics]:
    path = tmp_path / f"digits-{abs(hash(text))}.yaml"
    path.write_text(text)
    metrics = PrometheusMetrics()
    svc = InferenceService(max_rows=64, metrics=metrics)
    tops: list[_Top] = []

    def factory(spec: InputSpec) -> _Top:
        tops.append(_Top(spec, answer))
        return tops[-1]

    svc.apply_policies([PolicyText(str(path), text)], remote=lambda name: {"large": factory})
    assert not svc.reload_errors, svc.reload_errors
    return svc, tops, metrics


async def _infer(svc: InferenceService, rows: np.ndarray) -> dict[str, Any]:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.ravel().tolist()}]}  # fmt: skip

    async def read() -> bytes:
        return json.dumps(body).encode()

    # a guard against a hang, not a timing assertion
    reply = await asyncio.wait_for(svc.handle("POST", "/v2/models/digits/infer", {}, read), 30)
    assert reply.status == 200, reply.body
    out: dict[str, Any] = json.loads(reply.body)
    return out


def _output(body: dict[str, Any], name: str) -> Any:
    return next(o for o in body["outputs"] if o["name"] == name)["data"]


async def _audit(svc: InferenceService) -> dict[str, Any]:
    reply = await svc.handle("GET", "/v2/models/digits", {}, _no_body)
    audit: dict[str, Any] = json.loads(json.loads(reply.body)["parameters"]["audit"])
    return audit


async def _no_body() -> bytes:
    return b""


async def _settle(svc: InferenceService, audited: int) -> dict[str, Any]:
    """The audit once the drain task has answered ``audited`` rows (polled, bounded)."""
    for _ in range(2000):
        snapshot = await _audit(svc)
        if snapshot["total"]["audited"] >= audited:
            return snapshot
        await asyncio.sleep(0.005)
    raise AssertionError(f"the audit never reached {audited} rows: {snapshot}")


@pytest.fixture
def digits_rows() -> np.ndarray:
    return read_dataset("digits").test.X[:120].astype(np.float32)


def test_a_blocked_top_tier_never_delays_an_answer_nor_changes_one(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path, digits_rows: np.ndarray
) -> None:
    """Threshold 0: tiny answers every row, so every call to the top tier is the audit's;
    the top tier then never answers. Each request still returns (the drain waits, not the
    request), with the same answers as without the audit."""
    models, _ = digits_zoo
    audited, tops, _ = _service(tmp_path, _policy(models, audit=_ON, threshold=0))
    plain, _, _ = _service(tmp_path, _policy(models, audit=None, threshold=0))
    tops[0].blocked = True

    async def scenario() -> tuple[list[Any], list[Any]]:
        with_audit, without = [], []
        for chunk in np.split(digits_rows, 12):
            with_audit.append(await _infer(audited, chunk))
            without.append(await _infer(plain, chunk))
        for _ in range(1000):  # let the drain task reach the top tier (within a tick)
            if tops[0].calls:
                break
            await asyncio.sleep(0.005)
        assert tops[0].calls, "the audit never called the top tier"
        served = audited.models["digits"]
        assert isinstance(served, ServedModel) and served.audit is not None
        served.audit.close()
        return with_audit, without

    with_audit, without = asyncio.run(scenario())
    for a, b in zip(with_audit, without, strict=True):
        assert a["outputs"] == b["outputs"]


def test_metadata_and_metrics_report_agreement_with_the_top_tier(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path, digits_rows: np.ndarray
) -> None:
    """The top tier says 3 to everything: agreement of tiny's rows is the share it labels 3,
    and the estimate is 1 - share below the top tier x disagreement, computed here from the
    responses."""
    models, _ = digits_zoo
    svc, _, metrics = _service(tmp_path, _policy(models, audit=_ON))

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        bodies = [await _infer(svc, chunk) for chunk in np.split(digits_rows, 6)]
        answered_by = [t for b in bodies for t in _output(b, "answered_by")]
        snapshot = await _settle(svc, answered_by.count("tiny"))
        reply = await svc.handle("GET", "/v2/models/digits/config", {}, _no_body)
        return bodies, snapshot, json.loads(reply.body)

    bodies, snapshot, config = asyncio.run(scenario())
    answered_by = [t for b in bodies for t in _output(b, "answered_by")]
    labels = [x for b in bodies for x in _output(b, "label")]
    tiny = [label for label, t in zip(labels, answered_by, strict=True) if t == "tiny"]
    share = len(tiny) / len(labels)
    disagree = sum(int(label) != 3 for label in tiny) / len(tiny)
    window = snapshot["window"]
    assert window["rows"] == len(labels) and window["audited"] == len(tiny)
    assert window["relative_accuracy"]["estimate"] == pytest.approx(1 - share * disagree)
    assert window["relative_accuracy"]["lower"] < window["relative_accuracy"]["estimate"]
    assert window["tiers"]["tiny"]["agreement"] == pytest.approx(1 - disagree)
    assert config["audit"]["window"]["audited"] == len(tiny)
    assert snapshot["drift"]["score"] is None  # the policy stores no reference
    text = metrics.render()
    assert 'ray_cascade_live_relative_accuracy{model="digits",bound="estimate"}' in text
    assert 'ray_cascade_audit_rows_total{model="digits",tier="tiny",outcome="agreed"}' in text


def test_no_audit_under_a_gear(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path, digits_rows: np.ndarray
) -> None:
    """A gear engaged from one request in flight: every request runs in it, and the audit
    sends nothing to the top tier."""
    models, _ = digits_zoo
    gears = "gears:\n  - {name: brownout, queue_depth_at_least: 1, max_tier: tiny}\n"
    svc, tops, _ = _service(tmp_path, _policy(models, audit=_ON, extra=gears))

    async def scenario() -> dict[str, Any]:
        for chunk in np.split(digits_rows, 6):
            body = await _infer(svc, chunk)
            assert body["parameters"]["gear"] == "brownout"
        await asyncio.sleep(0.05)
        return await _audit(svc)

    snapshot = asyncio.run(scenario())
    assert tops[0].calls == []
    assert snapshot["total"]["audited"] == 0
    assert snapshot["outcomes"]["skipped_gear"] == len(digits_rows)


def test_no_audit_right_after_a_shed(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path, digits_rows: np.ndarray
) -> None:
    models, _ = digits_zoo
    svc, tops, _ = _service(tmp_path, _policy(models, audit=_ON, threshold=0))

    async def scenario() -> dict[str, Any]:
        svc._shed("digits", "admission", "a test's shed")
        await _infer(svc, digits_rows[:20])
        await asyncio.sleep(0.05)
        return await _audit(svc)

    snapshot = asyncio.run(scenario())
    assert tops[0].calls == []
    assert snapshot["outcomes"] == {"skipped_shed": 20}


def test_alarm_is_logged_once_when_raised_and_once_when_cleared(
    digits_zoo: tuple[Path, list[ModelCard]],
    tmp_path: Path,
    digits_rows: np.ndarray,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The top tier first disagrees with most of tiny's answers (accuracy alarm), then
    agrees with all of them (tiny's own answers): one line each, however many refreshes."""
    models, _ = digits_zoo
    provenance = (
        "provenance: {dataset: digits, split: calibration, date: '2026-12-02', "
        "target: {relative_accuracy: 0.5}, achieved: {}, confidence: 0.95}\n"
    )
    audit = (
        "{sample_rate: 1.0, max_rows_per_s: 100000, window_audited: 10, min_audited_rows: 10, "
        "alarm_after_rows: 0, alarm_after_audited: 0}"
    )
    svc, tops, _ = _service(tmp_path, _policy(models, audit=audit, threshold=0, extra=provenance))
    tiny = OnnxModel(models / "tiny.onnx")

    async def scenario() -> list[dict[str, Any]]:
        seen = []
        for chunk in np.split(digits_rows[:60], 3):
            await _infer(svc, chunk)
        seen.append(await _settle(svc, 60))
        seen.append(await _audit(svc))
        tops[0].answer = tiny.predict_sync  # now it agrees with every answer
        for chunk in np.split(digits_rows[60:], 3):
            await _infer(svc, chunk)
        seen.append(await _settle(svc, 120))
        seen.append(await _audit(svc))
        return seen

    with caplog.at_level(logging.WARNING, logger="cascade.serving"):
        seen = asyncio.run(scenario())
    assert "accuracy" in seen[0]["alarms"] and "accuracy" in seen[1]["alarms"]
    assert seen[2]["alarms"] == {} and seen[3]["alarms"] == {}
    lines = [r.getMessage() for r in caplog.records if "audit alarm" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("audit alarm raised model=digits kind=accuracy")
    assert "tier=tiny" in lines[0] and "< floor 0.5000 (target 0.5)" in lines[0]
    assert lines[1] == "audit alarm cleared model=digits kind=accuracy"


def test_ranking_policies_refuse_an_audit_section() -> None:
    text = (
        "name: ltr\ntiers:\n  fine: {model: fine.onnx}\n"
        "stages:\n  - {name: fine, tier: fine, keep: 10}\naudit: {sample_rate: 0.1}\n"
    )
    with pytest.raises(PolicyError, match="audit applies to classification policies"):
        parse_policy(text, source="ltr.yaml")


def test_models_route_lists_what_is_served(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    models, _ = digits_zoo
    svc, _, _ = _service(tmp_path, _policy(models, audit=None))
    reply = asyncio.run(svc.handle("GET", "/v2/models", {}, _no_body))
    served = svc.models["digits"]
    assert json.loads(reply.body) == {
        "models": [{"name": "digits", "version": served.version, "kind": "classification"}]
    }


def test_status_table_shows_alarms_and_a_model_without_audit() -> None:
    from cascade.cli.status import format_status

    load = {"gear": "auto-large", "in_flight": 2, "breakers": {"large": "open"}}
    assert format_status("m", {"versions": ["v1"], "load": load}) == (
        "model m (version v1)\n"
        "live audit: off (the policy has no `audit:` section with sample_rate > 0)\n"
        "gear: auto-large    in flight: 2\nbreakers: large=open"
    )
    figures = {
        "rows": 10, "audited": 4, "share_below_top": 0.8, "relative_cost": 0.3,
        "escalation": 0.2, "relative_accuracy": {"estimate": 0.9, "lower": 0.7},
        "tiers": {"tiny": {"share": 0.8, "audited": 4, "agreement": 0.875},
                  "large": {"share": 0.2}},
    }  # fmt: skip
    audit = {
        "top_tier": "large", "sample_rate": 0.5, "confidence": 0.95,
        "target_relative_accuracy": 0.99, "agreement_floor": 0.985,
        "calibrated_relative_cost": 0.2,
        "window": figures, "total": figures, "outcomes": {"agreed": 3, "disagreed": 1},
        "drift": {"score": 0.31, "threshold": 0.2, "tier": "tiny", "measure": "max_prob",
                  "rows": 10},
        "alarms": {"drift": "drift score 0.310 > 0.2"},
    }  # fmt: skip
    text = format_status("m", {"versions": ["v1"], "load": load, "audit": audit})
    assert "lower bound (0.95)  0.7000       0.7000  floor 0.9850 (target 0.99)" in text
    assert "drift (PSI), tiny max_prob" in text and "threshold 0.2" in text
    assert "tiny   0.800        4     0.8750" in text
    assert text.endswith("ALARM drift: drift score 0.310 > 0.2")


def test_the_accuracy_alarm_starts_from_the_agreement_calibration_saw(tmp_path: Path) -> None:
    """A target on relative accuracy forgives rows where only the cheap tier is right;
    agreement does not: the floor is the target less the disagreement the calibration split
    already had (provenance.reference.agreement), unless the policy sets min_agreement."""
    from cascade.serving import audit_limits

    def floor(audit: str, reference: str) -> float | None:
        text = _policy(Path("/m"), audit=audit, extra=(
            "provenance: {dataset: d, split: calibration, date: '2026-12-02', "
            "target: {relative_accuracy: 0.99}, achieved: {}" + reference + "}\n"
        ))  # fmt: skip
        policy = parse_policy(text, source="p.yaml").policy
        limits = audit_limits(policy, {"tiny": 0.01, "large": 1.0}, {"tiny": 0.1, "large": 2})
        assert limits is not None
        return limits.floor

    reference = (", reference: {tier: tiny, measure: max_prob, edges: [0.5], "
                 "shares: [0.2, 0.8], rows: 100, agreement: 0.992}")  # fmt: skip
    assert floor("{sample_rate: 0.1}", "") == 0.99
    assert floor("{sample_rate: 0.1}", reference) == pytest.approx(0.982)
    assert floor("{sample_rate: 0.1, min_agreement: 0.97}", reference) == 0.97


def test_a_model_rebuilt_on_reload_stops_its_old_audit(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path, digits_rows: np.ndarray
) -> None:
    """New tiers rebuild the served model: the old one's drain task must not live on."""
    models, _ = digits_zoo
    svc, _, _ = _service(tmp_path, _policy(models, audit=_ON))
    grown = _policy(models, audit=_ON).replace(
        "tiers:\n", f"tiers:\n  small: {{model: {models / 'small.onnx'}}}\n"
    )
    path = tmp_path / "grown.yaml"
    path.write_text(grown)

    async def scenario() -> tuple[bool, Any]:
        await _infer(svc, digits_rows[:10])
        old = svc.models["digits"]
        assert isinstance(old, ServedModel) and old.audit is not None
        task = old.audit._task
        svc.apply_policies([PolicyText(str(path), grown)], remote=lambda name: {})
        assert svc.models["digits"] is not old and not svc.reload_errors
        assert task is not None
        # asked here: asyncio.run cancels whatever task is left when it ends; a stopped
        # task ends within the wait, a running one never does
        await asyncio.wait([task], timeout=2)
        return task.cancelled(), svc.models["digits"]

    stopped, new = asyncio.run(scenario())
    assert stopped
    assert isinstance(new, ServedModel) and new.audit is not None and new.audit.sink is not None
