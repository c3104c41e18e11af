"""Shadow policies: a candidate beside the serving policy, never in a reply's way. No Ray."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from cascade.backends import FakeModel, InputSpec
from cascade.catalog import ModelCard
from cascade.edge import PrometheusMetrics
from cascade.errors import PolicyError
from cascade.policy import read_policy
from cascade.serving import (
    BearerAuth,
    HttpReply,
    InferenceService,
    PolicyText,
    ServedModel,
    Shadow,
)
from cascade.zoo import read_dataset

TINY, SMALL, LARGE = 0.01, 0.1, 1.0
_LARGE_CLASS = 3


def _policy(models: Path, *, threshold: float = 0.9, chain: str | None = None,
            extra: str = "", tiers: str = "") -> str:  # fmt: skip
    """The digits tiers with fixed costs; `small` and `large` come from the test's fakes."""
    chain = chain or f"    - {{tier: tiny, threshold: {threshold}}}\n    - {{tier: large}}\n"
    return (
        "name: digits\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {models / 'tiny.onnx'}, cost: {TINY}}}\n"
        f"  small: {{model: {models / 'small.onnx'}, cost: {SMALL}, placement: deployment}}\n"
        f"  large: {{model: {models / 'large.onnx'}, cost: {LARGE}, placement: deployment}}\n"
        f"{tiers}routing:\n  kind: confidence\n  chain:\n{chain}{extra}"
    )


class _Tiers:
    """`small` and `large` as fakes: large answers class 3; small blocks while `hold` is
    clear (the candidate is stuck in it) and then answers class 5."""

    def __init__(self) -> None:
        self.hold = asyncio.Event()
        self.hold.set()
        self.small_calls = 0

    def remote(self, policy: str) -> dict[str, Any]:
        def large(spec: InputSpec) -> FakeModel:
            answer = np.eye(10, dtype=np.float32)[[_LARGE_CLASS]]
            return FakeModel(lambda rows: np.repeat(answer, len(rows), axis=0),
                             width=spec.width, name="large")  # fmt: skip

        tiers = self

        class Small(FakeModel):
            async def predict(self, batch: Any) -> np.ndarray:
                tiers.small_calls += 1
                await tiers.hold.wait()
                return np.repeat(np.eye(10, dtype=np.float32)[[5]], len(batch), axis=0)

        def small(spec: InputSpec) -> FakeModel:
            return Small(lambda rows: rows, width=spec.width, name="small")

        return {"small": small, "large": large}


def _service(path: Path, tiers: _Tiers, **options: Any) -> InferenceService:
    svc = InferenceService(max_rows=64, metrics=options.pop("metrics", None), **options)
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=tiers.remote)
    assert not svc.reload_errors, svc.reload_errors
    return svc


async def _call(
    svc: InferenceService,
    method: str,
    path: str,
    body: bytes | dict[str, Any] = b"",
    headers: dict[str, str] | None = None,
) -> tuple[HttpReply, Any]:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body

    async def read() -> bytes:
        return raw

    reply = await svc.handle(method, path, headers or {}, read)
    return reply, json.loads(reply.body)


def _infer_body(rows: np.ndarray) -> dict[str, Any]:
    tensor = {"name": "input", "shape": list(rows.shape), "datatype": "FP32",
              "data": rows.ravel().tolist()}  # fmt: skip
    return {"inputs": [tensor]}


def _rows(n: int = 16) -> np.ndarray:
    return np.asarray(read_dataset("digits").test.X[:n], dtype=np.float32)


@pytest.fixture
def models(digits_zoo: tuple[Path, list[ModelCard]]) -> Path:
    return digits_zoo[0]


def test_the_shadow_never_changes_an_answer_nor_holds_the_reply(
    models: Path, tmp_path: Path
) -> None:
    """The candidate is stuck in a tier the serving policy never calls: every request is
    still answered, with the same bytes as without a shadow."""
    path = tmp_path / "digits.yaml"
    path.write_text(_policy(models))
    candidate = _policy(models, chain="    - {tier: small}\n")
    tiers = _Tiers()
    tiers.hold.clear()  # the candidate never gets an answer

    async def run() -> tuple[list[bytes], list[bytes], dict[str, Any]]:
        svc = _service(path, tiers)
        rows = _rows(32)

        async def infer(i: int) -> bytes:
            # a hang guard, not a timing: a reply that waited for the candidate never comes
            call = _call(svc, "POST", "/v2/models/digits/infer", _infer_body(rows[i : i + 4]))
            reply, _ = await asyncio.wait_for(call, timeout=60)
            assert reply.status == 200
            return reply.body

        plain = [await infer(i) for i in range(0, 32, 4)]
        asked = {"policy": candidate, "sample_rate": 1.0, "max_queued": 2}
        started, _ = await _call(svc, "PUT", "/v2/models/digits/shadow", asked)
        assert started.status == 200
        shadowed = []
        for i in range(0, 32, 4):
            shadowed.append(await infer(i))
            await asyncio.sleep(0)  # the shadow's task runs and blocks in small
        _, report = await _call(svc, "GET", "/v2/models/digits/shadow")
        await _call(svc, "DELETE", "/v2/models/digits/shadow")
        return plain, shadowed, report

    plain, shadowed, report = asyncio.run(run())
    assert plain == shadowed
    assert tiers.small_calls == 1  # the candidate ran, and is stuck
    assert report["rows"] == 0 and report["queued"] == 2
    assert report["dropped"] == 4 * (8 - 1 - 2)  # beyond the one running and two queued


def test_a_candidate_with_other_tiers_is_refused_naming_the_tier(
    models: Path, tmp_path: Path
) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text(_policy(models))
    other_tier = _policy(
        models, tiers=f"  huge: {{model: {models / 'large.onnx'}, cost: 2}}\n",
        chain="    - {tier: tiny, threshold: 0.5}\n    - {tier: huge}\n",
    )  # fmt: skip
    other_file = _policy(models).replace(
        f"tiny: {{model: {models / 'tiny.onnx'}", f"tiny: {{model: {models / 'small.onnx'}"
    )

    async def run() -> list[tuple[int, str]]:
        svc = _service(path, _Tiers())
        answers = []
        for body in (
            {"policy": other_tier},
            {"policy": other_file},
            {"policy": _policy(models).replace("name: digits", "name: other")},
            {"policy": "name: digits\ntiers: {}\n"},
            {"policy": _policy(models), "sample_rate": 0},
            {"policy": _policy(models), "sample_rate": "0.5"},
            {"policy": _policy(models), "extra": 1},
            {"policy": "\u0096\u00e5"},  # YAML's reader refuses it before parsing
        ):
            reply, document = await _call(svc, "PUT", "/v2/models/digits/shadow", body)
            answers.append((reply.status, document["error"]))
        reply, _ = await _call(svc, "PUT", "/v2/models/digits/shadow", b"{not json")
        answers.append((reply.status, ""))
        assert svc.models["digits"].shadow is None
        return answers

    answers = asyncio.run(run())
    assert {status for status, _ in answers} == {400}
    assert (
        "tiers.huge: not a tier of the serving policy (tiers: tiny, small, large)"
        in (answers[0][1])
    )
    assert "tiers.tiny.model:" in answers[1][1] and "small.onnx" in answers[1][1]
    assert "name 'other' must be the served model's 'digits'" in answers[2][1]
    assert "tiers" in answers[3][1]
    assert "sample_rate" in answers[4][1] and "sample_rate" in answers[5][1]
    assert "extra" in answers[6][1]
    assert "invalid YAML: unacceptable character #x0096" in answers[7][1]


def test_sampling_stops_under_a_gear_and_after_a_shed(models: Path, tmp_path: Path) -> None:
    path = tmp_path / "digits.yaml"
    gears = "gears:\n  - {name: busy, queue_depth_at_least: 4, max_tier: tiny}\n"
    path.write_text(_policy(models, extra=gears))
    now = [100.0]

    async def run() -> dict[str, int]:
        svc = _service(path, _Tiers())
        served = svc.models["digits"]
        assert isinstance(served, ServedModel)
        candidate = read_policy(path)
        shadow = Shadow("digits", candidate, served, sample_rate=1.0,
                        clock=lambda: now[0])  # fmt: skip
        served.shadow = shadow
        rows = _rows(4)
        probabilities, decisions = await served.infer(rows, deadline_ms=None, max_tier=None)
        labels = probabilities.argmax(axis=1)
        served.shift(10)
        assert served.shifter.gear.name == "busy"
        shadow.offer(rows, labels, decisions)
        served.set_policy(served.policy)  # the gear restarts at normal
        assert served.shifter.gear.name == "normal"
        shadow.shed()
        shadow.offer(rows, labels, decisions)  # within the quiet time after a shed
        now[0] += 10.0
        shadow.offer(rows, labels, decisions)  # normal again: compared
        await shadow.idle()
        return {"rows": shadow.rows, **shadow.outcomes}

    outcome = asyncio.run(run())
    assert outcome == {"rows": 4, "skipped": 8, "dropped": 0, "failed": 0}


def test_the_report_matches_a_hand_computation(models: Path, tmp_path: Path) -> None:
    """Serving: tiny at 0.9, else large; candidate: tiny alone. Agreement, relative cost,
    escalation rate and agreement with the top tier, against the same sums by hand."""
    path = tmp_path / "digits.yaml"
    path.write_text(_policy(models, threshold=0.9))
    candidate = _policy(models, chain="    - {tier: tiny}\n")
    metrics = PrometheusMetrics()
    rows = _rows(64)

    async def run() -> dict[str, Any]:
        svc = _service(path, _Tiers(), metrics=metrics)
        reply, _ = await _call(svc, "PUT", "/v2/models/digits/shadow",
                               {"policy": candidate, "sample_rate": 1.0})  # fmt: skip
        assert reply.status == 200
        for i in range(0, 64, 8):
            reply, _ = await _call(svc, "POST", "/v2/models/digits/infer",
                                   _infer_body(rows[i : i + 8]))  # fmt: skip
            assert reply.status == 200
        shadow = svc.models["digits"].shadow
        assert isinstance(shadow, Shadow)
        await shadow.idle()
        config = (await _call(svc, "GET", "/v2/models/digits/config"))[1]
        report = (await _call(svc, "GET", "/v2/models/digits/shadow"))[1]
        assert config["shadow"]["rows"] == report["rows"]
        # the report is what the OpenAPI document says it is
        schemas = (await _call(svc, "GET", "/openapi.json"))[1]["components"]["schemas"]
        schema = {"$ref": "#/components/schemas/ShadowReport", "components": {"schemas": schemas}}
        jsonschema.validate(report, schema, cls=jsonschema.Draft202012Validator)
        return dict(report)

    report = asyncio.run(run())
    tiny = read_policy(path).model_path("tiny")
    from cascade.backends import OnnxModel

    p = OnnxModel(tiny).predict_sync(rows)
    tiny_labels = p.argmax(axis=1)
    escalated = p.max(axis=1) < 0.9
    served = np.where(escalated, _LARGE_CLASS, tiny_labels)
    assert report["rows"] == 64 and report["requests"] == 8
    assert report["top_tier"] == "large"
    assert report["agreement"] == pytest.approx(float(np.mean(served == tiny_labels)), abs=1e-6)
    serving_cost = np.mean(TINY + escalated * LARGE) / LARGE
    assert report["serving"]["relative_cost"] == pytest.approx(serving_cost, abs=1e-6)
    assert report["candidate"]["relative_cost"] == pytest.approx(TINY / LARGE, abs=1e-6)
    assert report["serving"]["escalation_rate"] == pytest.approx(escalated.mean(), abs=1e-6)
    assert report["candidate"]["escalation_rate"] == 0.0
    # the candidate against the top tier, over the rows the serving policy sent there
    top = report["candidate"]["top_agreement"]
    assert top["rows"] == int(escalated.sum()) > 0
    assert top["agreement"] == pytest.approx(
        float(np.mean(tiny_labels[escalated] == _LARGE_CLASS)), abs=1e-6
    )
    assert report["serving"]["top_agreement"]["rows"] == 0  # the candidate never used large
    for side in ("serving", "candidate"):
        assert report[side]["latency_ms"]["p50"] <= report[side]["latency_ms"]["p99"]
    text = metrics.render()
    assert 'ray_cascade_shadow_rows_total{model="digits",outcome="compared"} 64' in text
    assert (
        f'ray_cascade_shadow_relative_cost{{model="digits",policy="candidate"}} {TINY / LARGE}'
        in text
    )
    assert 'ray_cascade_shadow_latency_ms_count{model="digits",policy="serving"} 8' in text


def test_the_queue_is_bounded_and_what_does_not_fit_is_counted(
    models: Path, tmp_path: Path
) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text(_policy(models))
    tiers = _Tiers()
    tiers.hold.clear()

    async def run() -> Shadow:
        svc = _service(path, tiers)
        served = svc.models["digits"]
        assert isinstance(served, ServedModel)
        candidate = read_policy(path)
        blocked = _policy(models, chain="    - {tier: small}\n")
        candidate_path = tmp_path / "blocked.yaml"
        candidate_path.write_text(blocked)
        shadow = Shadow("digits", read_policy(candidate_path), served, sample_rate=1.0,
                        max_queued=3)  # fmt: skip
        assert candidate.policy.name == "digits"
        rows = _rows(2)
        probabilities, decisions = await served.infer(rows, deadline_ms=None, max_tier=None)
        for _ in range(5):  # no await in between: the task has not taken one yet
            shadow.offer(rows, probabilities.argmax(axis=1), decisions)
        await asyncio.sleep(0.01)
        shadow.stop()
        return shadow

    shadow = asyncio.run(run())
    assert shadow.outcomes == {"dropped": 2 * 2, "skipped": 0, "failed": 0}
    assert tiers.small_calls == 1


def test_a_failing_candidate_is_counted_never_raised(models: Path, tmp_path: Path) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text(_policy(models))
    tiers = _Tiers()
    remote = tiers.remote

    def failing(policy: str) -> dict[str, Any]:
        factories = remote(policy)
        factories["small"] = lambda spec: FakeModel(
            lambda rows: rows, width=spec.width, name="small", fail_with=RuntimeError("down")
        )
        return factories

    async def run() -> dict[str, Any]:
        svc = InferenceService(max_rows=64)
        svc.apply_policies([PolicyText(str(path), path.read_text())], remote=failing)
        candidate = _policy(models, chain="    - {tier: small}\n")
        await _call(svc, "PUT", "/v2/models/digits/shadow", {"policy": candidate, "sample_rate": 1})
        reply, _ = await _call(svc, "POST", "/v2/models/digits/infer", _infer_body(_rows(3)))
        assert reply.status == 200
        shadow = svc.models["digits"].shadow
        assert isinstance(shadow, Shadow)
        await shadow.idle()
        return shadow.report()

    report = asyncio.run(run())
    assert report["failed"] == 3 and report["rows"] == 0
    assert "down" in report["last_error"]


def test_promote_applies_the_candidate_as_a_reload_does(models: Path, tmp_path: Path) -> None:
    """Version changes, answers follow the candidate, the shadow is gone; the reply holds
    the text to copy into the policy file."""
    path = tmp_path / "digits.yaml"
    path.write_text(_policy(models, threshold=0.9))
    candidate = _policy(models, chain="    - {tier: large}\n")  # every row to large
    rows = _rows(8)

    async def run() -> tuple[str, dict[str, Any], list[int], list[int]]:
        svc = _service(path, _Tiers())
        before = svc.models["digits"].version
        _, answer = await _call(svc, "POST", "/v2/models/digits/infer", _infer_body(rows))
        labels_before = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
        refused, error = await _call(svc, "POST", "/v2/models/digits/shadow/promote")
        assert refused.status == 404 and "no shadow policy" in error["error"]
        await _call(svc, "PUT", "/v2/models/digits/shadow", {"policy": candidate})
        reply, promoted = await _call(svc, "POST", "/v2/models/digits/shadow/promote")
        assert reply.status == 200, promoted
        assert promoted["previous_version"] == before != promoted["version"]
        meta = (await _call(svc, "GET", "/v2/models/digits"))[1]
        assert meta["versions"] == [promoted["version"]]
        _, answer = await _call(svc, "POST", "/v2/models/digits/infer", _infer_body(rows))
        labels_after = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
        gone = (await _call(svc, "GET", "/v2/models/digits/shadow"))[0]
        assert gone.status == 404
        assert svc.files["digits"][0] == str(path)  # a restart reads this file: copy it there
        return promoted["policy"], promoted, labels_before, labels_after

    text, promoted, before, after = asyncio.run(run())
    assert text == candidate and promoted["file"] == str(path)
    assert after == [str(_LARGE_CLASS)] * 8 and before != after  # labels: the card's classes


def test_on_ray_promotion_is_refused_with_the_way_to_do_it(models: Path, tmp_path: Path) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text(_policy(models))

    async def run() -> tuple[HttpReply, Any, Any]:
        svc = _service(path, _Tiers(), promote="reload")
        _, started = await _call(svc, "PUT", "/v2/models/digits/shadow",
                                 {"policy": _policy(models, threshold=0.5)})  # fmt: skip
        reply, body = await _call(svc, "POST", "/v2/models/digits/shadow/promote")
        return reply, body, started

    reply, body, started = asyncio.run(run())
    assert reply.status == 409 and "cascade promote" in body["error"]
    assert "one ingress replica" in started["note"]


def test_the_policy_field_starts_it_and_a_bad_candidate_refuses_the_policy(
    models: Path, tmp_path: Path
) -> None:
    path = tmp_path / "digits.yaml"
    (tmp_path / "candidate.yaml").write_text(_policy(models, threshold=0.5))
    path.write_text(_policy(models, extra="shadow: {policy: candidate.yaml, sample_rate: 0.5}\n"))
    svc = _service(path, _Tiers())
    shadow = svc.models["digits"].shadow
    assert isinstance(shadow, Shadow) and shadow.origin == "policy"
    assert shadow.sample_rate == 0.5
    # a reload of the same files keeps the comparison running
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=_Tiers().remote)
    assert svc.models["digits"].shadow is shadow
    # a candidate with another tier: the policy is refused, the one serving stays
    (tmp_path / "candidate.yaml").write_text(
        _policy(models, tiers=f"  huge: {{model: {models / 'large.onnx'}, cost: 2}}\n")
    )
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=_Tiers().remote)
    assert "shadow.policy" in svc.reload_errors[str(path)]
    assert "tiers.huge: not a tier of the serving policy" in svc.reload_errors[str(path)]
    assert svc.models["digits"].shadow is shadow
    # the section removed: the shadow stops
    path.write_text(_policy(models))
    svc.apply_policies([PolicyText(str(path), path.read_text())], remote=_Tiers().remote)
    assert svc.models["digits"].shadow is None
    outside = tmp_path / "inside" / "digits.yaml"
    outside.parent.mkdir()
    outside.write_text(_policy(models, extra="shadow: {policy: ../candidate.yaml}\n").replace(
        "allow_outside_paths: true\n", ""))  # fmt: skip
    with pytest.raises(PolicyError, match=r"shadow\.policy: path leaves the policy folder"):
        read_policy(outside, check_files=False).shadow_file()


def test_the_shadow_routes_need_the_token(models: Path, tmp_path: Path) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text(_policy(models))

    async def run() -> list[int]:
        svc = _service(path, _Tiers(), auth=BearerAuth("s3cret"))
        statuses = []
        for method, route in (("PUT", ""), ("GET", ""), ("DELETE", ""), ("POST", "/promote")):
            reply, _ = await _call(svc, method, f"/v2/models/digits/shadow{route}",
                                   {"policy": _policy(models)})  # fmt: skip
            statuses.append(reply.status)
        token = {"authorization": "Bearer s3cret"}
        reply, _ = await _call(svc, "GET", "/v2/models/digits/shadow", headers=token)
        statuses.append(reply.status)
        return statuses

    assert asyncio.run(run()) == [401, 401, 401, 401, 404]


def test_the_cli_prints_the_report_side_by_side(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cascade.cli import main
    from cascade.cli.shadow import print_report

    path = tmp_path / "digits.yaml"
    path.write_text(_policy(models, threshold=0.9))

    async def run() -> dict[str, Any]:
        svc = _service(path, _Tiers())
        candidate = _policy(models, chain="    - {tier: tiny}\n")
        await _call(svc, "PUT", "/v2/models/digits/shadow", {"policy": candidate, "sample_rate": 1})
        await _call(svc, "POST", "/v2/models/digits/infer", _infer_body(_rows(8)))
        shadow = svc.models["digits"].shadow
        assert isinstance(shadow, Shadow)
        await shadow.idle()
        return shadow.report()

    report = asyncio.run(run())
    print_report(report)
    printed = capsys.readouterr().out
    assert "8 rows compared (1 requests)" in printed
    lines = {line.split()[0]: line.split() for line in printed.splitlines() if line}
    assert lines["candidate"][1] == f"{report['candidate']['relative_cost']:.4f}"
    assert lines["serving"][2] == f"{report['serving']['escalation_rate']:.4f}"
    assert main(["shadow", "http://127.0.0.1:9"]) == 1  # which model: refused before any call
    assert "--model NAME" in capsys.readouterr().err
