"""The served-cost model against hand computations, and calibration on served cost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cascade.catalog import ModelCard
from cascade.errors import PolicyError
from cascade.evaluate import Evaluator, Target, calibrate_policy
from cascade.evaluate._served_cost import (
    FALLBACK_OVERHEADS,
    CostModel,
    Overheads,
    per_row_us_at,
    read_overheads,
)
from cascade.policy import read_policy
from cascade.zoo import read_dataset

SMALL = {1: 10.0, 32: 5.0, 256: 4.0}
LARGE = {1: 200.0, 32: 100.0, 256: 80.0}


def _model(rows: int, *, request_us: float = 1000.0, hop_us: float = 500.0) -> CostModel:
    return CostModel(
        {"small": SMALL, "large": LARGE},
        {"small": False, "large": True},
        reference="large",
        rows_per_request=rows,
        overheads=Overheads("test", request_us, hop_us, "by hand"),
    )


def test_per_row_cost_is_linear_in_one_over_batch_and_flat_outside() -> None:
    assert per_row_us_at(LARGE, 0.5) == 200.0
    assert per_row_us_at(LARGE, 1000) == 80.0
    # between 32 and 256: t0 + (1/32 - 1/b) / (1/32 - 1/256) * (t1 - t0)
    b = 64
    hand = 100.0 + (1 / 32 - 1 / b) / (1 / 32 - 1 / 256) * (80.0 - 100.0)
    assert per_row_us_at(LARGE, b) == pytest.approx(hand)
    assert per_row_us_at(LARGE, 32) == pytest.approx(100.0)


def test_a_request_costs_its_overheads_and_its_rows_at_the_batch_each_tier_sees() -> None:
    model = _model(4)
    cost = model.request({"small": 1.0, "large": 0.5})
    called = 1 - 0.5**4  # a 4-row request calls large unless all 4 rows stay on small
    rows = 4 * 0.5 / called
    large_us = called * rows * per_row_us_at(LARGE, rows)
    small_us = 4 * per_row_us_at(SMALL, 4)
    assert cost.calls == pytest.approx({"small": 1.0, "large": called})
    assert cost.batch == pytest.approx({"small": 4.0, "large": rows})
    assert cost.model_us == pytest.approx(small_us + large_us)
    assert cost.hops_us == pytest.approx(500.0 * called)  # small is inline: no hop
    assert cost.total_us == pytest.approx(1000.0 + 500.0 * called + small_us + large_us)
    always_large = 1000.0 + 500.0 + 4 * per_row_us_at(LARGE, 4)
    at_batch, served = model.relative({"small": 1.0, "large": 0.5})
    assert at_batch == pytest.approx((small_us + large_us) / (4 * per_row_us_at(LARGE, 4)))
    assert served == pytest.approx(cost.total_us / always_large)


def test_serving_overheads_pull_the_served_ratio_towards_one() -> None:
    reach = {"small": 1.0, "large": 0.25}
    free = _model(64, request_us=0.0, hop_us=0.0).relative(reach)
    costly = _model(64, request_us=25_000.0, hop_us=5_000.0).relative(reach)
    assert free[0] == pytest.approx(free[1])  # no serving work: served = models at batch
    assert costly[0] == pytest.approx(free[0])
    assert free[1] < costly[1] < 1.0


def test_overheads_come_from_the_benchmark_file_else_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no benchmarks/results/served_cost.json here
    assert read_overheads() == FALLBACK_OVERHEADS
    measured = tmp_path / "served_cost.json"
    measured.write_text(json.dumps({"overheads": {
        "ray": {"request_us": 21000.0, "hop_us": 4000.0, "note": "here"},
        "edge": {"request_us": 900.0, "hop_us": 0.0},
    }}))  # fmt: skip
    read = read_overheads(measured)
    assert (read["ray"].request_us, read["ray"].hop_us) == (21000.0, 4000.0)
    assert read["ray"].source.startswith("measured:") and "here" in read["ray"].source
    with pytest.raises(PolicyError, match="no such file"):
        read_overheads(tmp_path / "absent.json")
    measured.write_text('{"cells": {}}')
    with pytest.raises(PolicyError, match="not a served-cost measurement"):
        read_overheads(measured)


CHAIN = """name: d
allow_outside_paths: true
tiers:
  tiny: {model: tiny.onnx}
  large: {model: large.onnx, placement: deployment}
routing:
  kind: confidence
  chain:
    - {tier: tiny, threshold: 0.5}
    - {tier: large}
"""


def test_calibration_on_served_cost_records_it_and_counts_it(
    digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path
) -> None:
    for path in digits_zoo[0].iterdir():
        if path.name.startswith(("tiny", "large")):
            shutil.copy(path, tmp_path / path.name)
    policy = tmp_path / "d.yaml"
    policy.write_text(CHAIN)
    loaded = read_policy(policy)
    evaluator = Evaluator(loaded)
    model = CostModel.for_policy(loaded, evaluator.tiers, rows_per_request=16,
                                 overheads=Overheads("ray", 5000.0, 2000.0, "by hand"))  # fmt: skip
    cal = read_dataset("digits").calibration
    result = calibrate_policy(
        loaded, cal.X, cal.y, target=Target(relative_accuracy=0.99, confidence=0.8),
        data_label="digits", evaluator=evaluator, cost_model=model,
    )  # fmt: skip
    assert result.met and result.chosen is not None
    provenance = read_policy(policy).policy.provenance
    assert provenance is not None and provenance.cost is not None
    assert provenance.cost.startswith("served: 16 rows/request on ray")
    # the chosen point's relative cost is the served figure of the rows it escalates
    replay = Evaluator(read_policy(policy)).evaluate(cal.X, cal.y, cost_model=model)[0]
    assert replay.served_relative_cost == pytest.approx(result.chosen.relative_cost, rel=1e-6)
    assert replay.served_relative_cost > replay.relative_cost  # serving work is paid too


def test_per_row_overheads_scale_with_the_rows_carried() -> None:
    overheads = Overheads("test", 1000.0, 500.0, "by hand", request_us_per_row=2.0,
                          hop_us_per_row=3.0)  # fmt: skip
    model = CostModel({"small": SMALL, "large": LARGE}, {"small": False, "large": True},
                      reference="large", rows_per_request=8, overheads=overheads)  # fmt: skip
    cost = model.request({"small": 1.0, "large": 0.5})
    called = 1 - 0.5**8
    rows = 8 * 0.5 / called
    assert cost.request_us == pytest.approx(1000.0 + 2.0 * 8)
    assert cost.hops_us == pytest.approx(called * (500.0 + 3.0 * rows))
