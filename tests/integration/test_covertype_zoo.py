"""The covertype zoo, built for real: the tiers must span a real accuracy range."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade import OnnxModel
from cascade.zoo import CompressionOptions, build_zoo, read_dataset


@pytest.mark.slow
def test_covertype_tiers_span_a_real_accuracy_range(tmp_path: Path) -> None:
    dataset = read_dataset("covertype")
    cards = {
        c.name: c
        for c in build_zoo(
            dataset,
            tmp_path,
            compression=CompressionOptions(quantize=("dynamic",)),
            progress=False,
        )
    }
    tiny, small, large = cards["tiny"], cards["small"], cards["large"]
    assert large.accuracy["test"] >= 0.88
    assert tiny.accuracy["test"] <= large.accuracy["test"] - 0.10
    assert tiny.accuracy["test"] < small.accuracy["test"] < large.accuracy["test"]
    for card in (tiny, small, large):
        assert card.fidelity is not None and card.fidelity.max_abs_diff <= 1e-4
        assert card.split_sizes == {"train": 55777, "calibration": 18592, "test": 18593}
    assert large.size_bytes < 50_000_000  # a modest file: sessions stay well under 1 GB
    quantized, fp32 = cards["student.int8"], cards["student"]
    assert abs(quantized.accuracy["test"] - fp32.accuracy["test"]) <= 0.01
    model = OnnxModel(tmp_path / "large.onnx")
    assert model.predict_sync(dataset.test.X[:5]).shape == (5, 7)
