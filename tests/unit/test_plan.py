"""`cascade plan`: capacity from the shipped digits policy, its real models and cards."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from cascade.catalog import ModelCard
from cascade.cli import main
from cascade.errors import PolicyError
from cascade.evaluate import Evaluator, ensure_models, labelled_split
from cascade.evaluate._plan import (
    CapacityPlan,
    measure_reach,
    per_row_us_at,
    plan_capacity,
    scorer_per_row_us,
    tier_cards,
)
from cascade.policy import PolicyFile, read_policy

DIGITS = Path(__file__).resolve().parents[2] / "policies" / "digits.yaml"
MODELS = DIGITS.parent / "models" / "digits"


@pytest.fixture(scope="module")
def digits() -> PolicyFile:
    loaded = read_policy(DIGITS, check_files=False)
    ensure_models(loaded, progress=False)
    return read_policy(DIGITS)


@pytest.fixture(scope="module")
def reach(digits: PolicyFile) -> dict[str, float]:
    X, _, _ = labelled_split(digits, split="calibration")
    return measure_reach(digits, X)


def _card(name: str) -> ModelCard:
    return ModelCard.model_validate_json((MODELS / f"{name}.card.json").read_text())


def _by_hand_us(card: ModelCard, batch: float) -> float:
    """Per-row µs at ``batch``, linear in 1/batch between the card's sizes (np.interp)."""
    sizes = sorted(card.latency.per_row_us)[::-1]  # 1/b ascending
    return float(
        np.interp(1 / batch, [1 / b for b in sizes], [card.latency.per_row_us[b] for b in sizes])
    )


def test_reach_is_what_evaluate_reports(digits: PolicyFile, reach: dict[str, float]) -> None:
    X, y, _ = labelled_split(digits, split="calibration")
    evaluated = Evaluator(digits).evaluate(X, y)[0].tier_rates
    assert reach == pytest.approx({"small": 0.0, **evaluated})
    assert reach["tiny"] == 1.0 and 0 < reach["large"] < 1


def test_interpolation_is_exact_for_a_fixed_plus_per_row_cost() -> None:
    def cost(b: float) -> float:
        return 50 / b + 2  # a call costs 50 µs plus 2 µs a row

    measured = {b: cost(b) for b in (1, 32, 256)}
    for batch in (1, 2, 7.5, 32, 64, 200, 256):
        assert per_row_us_at(measured, batch) == pytest.approx(cost(batch))
    assert per_row_us_at(measured, 4096) == measured[256]  # flat outside what was measured


def test_arithmetic_at_low_load_matches_a_hand_computation(
    digits: PolicyFile, reach: dict[str, float]
) -> None:
    plan = plan_capacity(digits, 500, reach=reach)
    tiny, large = _card("tiny"), _card("large")
    # 500 requests/s × 2 ms coalescing: one request per engine batch, every batch a row
    large_rows = 500 * reach["large"]
    large_cores = large_rows * large.latency.per_row_us[1] / 1e6 + large_rows * 2 / 1000
    ingress_cores = 500 * 5 / 1000 + 500 * tiny.latency.per_row_us[1] / 1e6
    tiers = {t.name: t for t in plan.tiers}
    assert tiers["large"].cpu_cores == pytest.approx(large_cores)
    assert tiers["large"].replicas == math.ceil(large_cores / 0.7)
    assert tiers["large"].batch == 1.0 and tiers["large"].calls_per_s == pytest.approx(large_rows)
    assert plan.ingress.cpu_cores == pytest.approx(ingress_cores)
    assert plan.ingress.replicas == math.ceil(ingress_cores / 0.7)
    assert tiers["tiny"].replicas is None and tiers["small"].cpu_cores == 0
    assert plan.total_cpu_cores == pytest.approx(large_cores + ingress_cores)
    assert plan.total_cpus == plan.ingress.replicas + tiers["large"].replicas
    assert plan.ingress.autoscaling == (
        math.ceil(ingress_cores / 4 / 0.7),
        math.ceil(2 * ingress_cores / 0.7),
    )


def test_arithmetic_with_batches_matches_a_hand_computation(
    digits: PolicyFile, reach: dict[str, float]
) -> None:
    # no serving overhead: one ingress replica, which coalesces 20,000 × 2 ms = 40 requests
    qps, rows = 20_000, 3
    plan = plan_capacity(digits, qps, reach=reach, rows_per_request=rows, ingress_cpu_ms=0,
                         hop_cpu_ms=0, utilisation=1.0)  # fmt: skip
    tiny, large = _card("tiny"), _card("large")
    per_batch = 40 * rows
    tiny_cores = qps * rows * _by_hand_us(tiny, per_batch) / 1e6
    large_rows = qps * rows * reach["large"]
    window = large_rows * 2 / 1000  # rows one large replica gets within max_wait_ms
    large_batch = max(per_batch * reach["large"], min(64, window))
    large_cores = large_rows * _by_hand_us(large, large_batch) / 1e6
    tiers = {t.name: t for t in plan.tiers}
    assert plan.ingress.replicas == 1 and plan.ingress.batch == per_batch
    assert plan.ingress.cpu_cores == pytest.approx(tiny_cores)
    assert tiers["large"].batch == pytest.approx(large_batch)
    assert tiers["large"].replicas == math.ceil(large_cores) == 1  # the window is one replica's
    assert tiers["large"].cpu_cores == pytest.approx(large_cores)
    assert tiers["large"].calls_per_s == pytest.approx(qps / 40)


def test_twice_the_load_never_needs_fewer_replicas(
    digits: PolicyFile, reach: dict[str, float]
) -> None:
    for rows in (1, 16):
        previous: CapacityPlan | None = None
        for qps in (1, 10, 50, 200, 1_000, 5_000, 20_000, 80_000):
            plan = plan_capacity(digits, qps, reach=reach, rows_per_request=rows)
            if previous is not None:
                for now, before in zip(
                    (plan.ingress, *plan.tiers), (previous.ingress, *previous.tiers), strict=True
                ):
                    assert (now.replicas or 0) >= (before.replicas or 0), (rows, qps, now.name)
                    assert now.cpu_cores >= before.cpu_cores, (rows, qps, now.name)
                assert plan.total_cpus >= previous.total_cpus
            for load in (plan.ingress, *plan.tiers):
                if load.autoscaling is not None:
                    low, high = load.autoscaling
                    assert 1 <= low <= (load.replicas or 0) <= high
            previous = plan


def test_a_policy_allowing_too_few_replicas_gets_a_note(
    digits: PolicyFile, reach: dict[str, float]
) -> None:
    plan = plan_capacity(digits, 100_000, reach=reach, rows_per_request=8)
    assert any("tiers.large: the policy allows 1 replica" in note for note in plan.notes)
    assert plan_capacity(digits, 10, reach=reach).notes == ()


def test_cli_prints_the_table_and_the_json(
    reach: dict[str, float],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    measured = tmp_path / "served_cost.json"
    measured.write_text(json.dumps({"overheads": {"ray": {
        "request_us": 4000.0, "request_us_per_row": 10.0, "hop_us": 1500.0,
        "hop_us_per_row": 0.0, "note": "a test's measurement",
    }}}))  # fmt: skip
    assert main(["plan", str(DIGITS), "--qps", "500", "--overheads", str(measured)]) == 0
    text = capsys.readouterr().out
    assert "digits at 500 requests/s" in text and "digits/calibration, 359 rows" in text
    for word in ("tiny", "large", "ingress", "in ingress", "CPUs to reserve"):
        assert word in text
    # the serving overheads are the measured ones (1 row: 4000 + 10 µs), and it says so
    assert "4.01 ms CPU per request at the ingress, 1.5 ms per call" in text
    assert f"measured: {measured} (a test's measurement)" in text

    monkeypatch.chdir(tmp_path)  # no benchmarks/results/served_cost.json: the fallbacks
    assert main(["plan", str(DIGITS), "--qps", "500"]) == 0
    assert "fallback defaults" in capsys.readouterr().out

    argv = ["plan", str(DIGITS), "--qps", "500", "--json", "--ingress-cpu-ms", "5",
            "--hop-cpu-ms", "3"]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    given = "given on the command line"
    expected = plan_capacity(read_policy(DIGITS), 500, reach=reach, ingress_cpu_ms=5,
                             hop_cpu_ms=3, overheads_source=given).to_dict()  # fmt: skip
    expected["reach_measured_on"] = "digits/calibration, 359 rows"
    assert data == json.loads(json.dumps(expected))
    assert data["assumptions"]["hop_cpu_ms"] == 3
    assert {t["name"] for t in data["tiers"]} == {"tiny", "small", "large"}


def _policy(directory: Path, large: str, *, copy_cards: bool) -> Path:
    for name in ("tiny", "large"):
        shutil.copy(MODELS / f"{name}.onnx", directory / f"{name}.onnx")
        if copy_cards:
            shutil.copy(MODELS / f"{name}.card.json", directory / f"{name}.card.json")
    path = directory / "p.yaml"
    where = "cost: 1" if large.startswith("http") else "placement: deployment"
    path.write_text(
        "name: p\ndataset: digits\ntiers:\n  tiny: {model: tiny.onnx}\n"
        f"  large: {{model: {large}, {where}}}\n"
        "routing:\n  kind: confidence\n  chain:\n    - {tier: tiny, threshold: 0.9}\n"
        "    - {tier: large}\n"
    )
    return path


def test_a_tier_without_a_card_fails_clearly(
    digits: PolicyFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _policy(tmp_path, "large.onnx", copy_cards=False)
    with pytest.raises(PolicyError, match=r"tiers.tiny: no model card tiny.card.json beside"):
        tier_cards(read_policy(path))
    assert main(["plan", str(path), "--qps", "10"]) == 1
    assert "cascade: error:" in capsys.readouterr().err


def test_a_remote_tier_fails_clearly(
    digits: PolicyFile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "http://127.0.0.1:9/v2/models/large"
    path = _policy(tmp_path, url, copy_cards=True)
    assert main(["plan", str(path), "--qps", "10"]) == 1
    assert f"tiers.large: remote tier {url} runs outside this app" in capsys.readouterr().err


def test_a_ranking_policy_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    ltr = DIGITS.parent / "ltr.yaml"
    assert main(["plan", str(ltr), "--qps", "10"]) == 1
    assert "a ranking policy (stages)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", str(DIGITS)],
        ["plan", str(DIGITS), "--qps", "0"],
        ["plan", str(DIGITS), "--qps", "nan"],
        ["plan", str(DIGITS), "--qps", "5", "--utilisation", "1.5"],
        ["plan", str(DIGITS), "--qps", "5", "--rows-per-request", "0"],
        ["plan", str(DIGITS), "--qps", "5", "--split", "validation"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_a_complexity_scorer_runs_at_the_ingress(
    digits: PolicyFile, reach: dict[str, float], tmp_path: Path
) -> None:
    flat = {1: 10.0, 32: 10.0, 256: 10.0}
    plain = plan_capacity(digits, 300, reach=reach)
    scored = plan_capacity(digits, 300, reach=reach, scorer_us=flat)
    assert scored.ingress.cpu_cores == pytest.approx(plain.ingress.cpu_cores + 300 * 10 / 1e6)

    from cascade.backends import OnnxModel
    from cascade.evaluate._complexity import train_scorer
    from cascade.zoo import read_dataset

    # a real scorer: "will tiny be wrong?", learnt on the digits calibration split
    split = read_dataset("digits").calibration
    tiny_wrong = OnnxModel(MODELS / "tiny.onnx").predict_sync(split.X).argmax(axis=1) != split.y
    scorer = train_scorer(split.X, tiny_wrong, tmp_path / "c.complexity.onnx")
    path = tmp_path / "c.yaml"
    path.write_text(
        f"name: c\ndataset: digits\nallow_outside_paths: true\ntiers:\n"
        f"  tiny: {{model: {MODELS / 'tiny.onnx'}}}\n"
        f"  large: {{model: {MODELS / 'large.onnx'}, placement: deployment}}\n"
        f"routing:\n  kind: complexity\n  scorer: {{name: onnx, model: {scorer}}}\n"
        "  bands:\n    - {tier: tiny, below: 0.5}\n    - {tier: large}\n"
    )
    loaded = read_policy(path)
    measured = scorer_per_row_us(loaded)
    assert measured is not None and set(measured) == {1, 32, 256}
    assert main(["plan", str(path), "--qps", "300", "--json"]) == 0
