"""The digits zoo, built once per session: files, cards, fidelity, compression variants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cascade import BuildError, CascadeError, OnnxModel
from cascade.catalog import ModelCard, format_cards, read_cards, sha256_of
from cascade.cli import main
from cascade.zoo import CompressionOptions, build_zoo, read_dataset
from cascade.zoo.report import format_compression

Zoo = tuple[Path, list[ModelCard]]

EXPECTED = [
    "tiny",
    "small",
    "large",
    "student.hard",
    "student",
    "student.int8",
    "student.int8-static",
    "student.pruned",
]


def test_every_model_has_a_file_and_a_card(digits_zoo: Zoo) -> None:
    out, cards = digits_zoo
    assert sorted(c.name for c in cards) == sorted(EXPECTED)
    for card in cards:
        assert (out / card.file).is_file()
        assert (out / f"{card.name}.card.json").is_file()
        assert card.sha256 == sha256_of(out / card.file)
        assert card.size_bytes == (out / card.file).stat().st_size
        assert card.split_sizes == {"train": 1078, "calibration": 359, "test": 360}
        assert card.classes == [str(i) for i in range(10)]
        assert set(card.latency.per_row_us) == {1, 32, 256}
        assert card.latency.threads == 1
        assert 0 < card.latency.p50_us <= card.latency.p99_us


def test_cards_are_re_read_unchanged(digits_zoo: Zoo) -> None:
    out, cards = digits_zoo
    reread = read_cards(out)
    assert {c.name: c for c in reread} == {c.name: c for c in cards}
    assert [c.tier for c in reread][:3] == ["tiny", "small", "large"]
    raw = json.loads((out / "tiny.card.json").read_text())
    assert raw["fidelity"]["reference"] == "scikit-learn predict_proba"
    assert raw["build"]["family"] == "logistic_regression"
    assert "scikit-learn" in raw["build"]["versions"]


def test_exports_are_faithful_and_accuracy_is_what_onnx_scores(digits_zoo: Zoo) -> None:
    out, cards = digits_zoo
    test = read_dataset("digits").test
    for card in cards:
        if card.variant not in ("int8", "int8-static"):
            assert card.fidelity is not None and card.fidelity.max_abs_diff <= 1e-4
        predicted = OnnxModel(out / card.file).predict_sync(test.X).argmax(axis=1)
        assert card.accuracy["test"] == pytest.approx(float((predicted == test.y).mean()))


def test_tiers_span_accuracy_and_relative_cost_is_against_large(digits_zoo: Zoo) -> None:
    cards = {c.name: c for c in digits_zoo[1]}
    assert cards["large"].relative_cost == 1.0
    assert cards["tiny"].accuracy["test"] < cards["large"].accuracy["test"]
    assert cards["large"].accuracy["test"] >= 0.95
    for card in cards.values():
        assert card.relative_cost is not None and card.relative_cost > 0
        assert card.relative_cost == pytest.approx(card.cost_us / cards["large"].cost_us)


def test_quantized_students_stay_within_one_point_and_shrink(digits_zoo: Zoo) -> None:
    cards = {c.name: c for c in digits_zoo[1]}
    fp32 = cards["student"]
    for name in ("student.int8", "student.int8-static"):
        quantized = cards[name]
        assert abs(quantized.accuracy["test"] - fp32.accuracy["test"]) <= 0.01
        assert quantized.size_bytes < fp32.size_bytes
        assert quantized.compression is not None
        assert quantized.compression["baseline"] == "student"


def test_distilled_student_is_reported_beside_the_hard_label_student(digits_zoo: Zoo) -> None:
    cards = {c.name: c for c in digits_zoo[1]}
    distilled, hard = cards["student"], cards["student.hard"]
    assert distilled.compression is not None
    assert distilled.compression["method"] == "distillation"
    assert distilled.compression["baseline"] == "student.hard"
    assert distilled.compression["baseline_test_accuracy"] == hard.accuracy["test"]
    assert distilled.sha256 != hard.sha256
    table = format_compression(digits_zoo[1])
    assert "distillation (alpha 0.5, T 2.0)" in table
    assert "student.hard" in table


def test_pruned_student_reaches_its_sparsity(digits_zoo: Zoo) -> None:
    import onnx
    from onnx import numpy_helper

    out, cards = digits_zoo
    card = {c.name: c for c in cards}["student.pruned"]
    assert card.compression is not None
    assert card.compression["sparsity"] == pytest.approx(0.8, abs=0.005)
    graph = onnx.load(out / card.file).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.dims and len(t.dims) == 2]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros == pytest.approx(0.8, abs=0.005)


def test_card_table_lists_every_model(digits_zoo: Zoo) -> None:
    table = format_cards(digits_zoo[1])
    assert table.startswith("dataset digits — splits train 1078 / calibration 359 / test 360")
    for name in EXPECTED:
        assert f"\n{name} " in table


def test_compression_of_text_tiers_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # text datasets build their own tiers (cascade.text; tested in test_text_tiers.py)
    with pytest.raises(SystemExit) as stopped:
        main(["models", "build", "clinc150", "--distill", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    assert "--distill / --quantize / --prune apply to tabular tiers" in capsys.readouterr().err
    with pytest.raises(BuildError, match=r"'clinc150' holds texts: .*build_text_zoo"):
        build_zoo(read_dataset("clinc150"), tmp_path, progress=False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got 1.5"),
        ({"temperature": 0}, r"temperature must be > 0, got 0"),
        ({"prune": 1.0}, r"prune sparsity must be in \(0, 1\), got 1.0"),
        (
            {"quantize": ("float8",)},
            r"unknown quantize mode \['float8'\] \(allowed: dynamic, static\)",
        ),
    ],
)
def test_bad_compression_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(BuildError, match=message):
        CompressionOptions(**options)  # type: ignore[arg-type]


def test_read_cards_errors_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(CascadeError, match=r"nowhere: no such directory"):
        read_cards(tmp_path / "nowhere")
    with pytest.raises(CascadeError, match=r"no model cards \(\*\.card\.json\); build some"):
        read_cards(tmp_path)
    (tmp_path / "bad.card.json").write_text('{"name": "bad"}')
    with pytest.raises(CascadeError, match=r"bad\.card\.json: not a valid model card"):
        read_cards(tmp_path)


def test_fidelity_failure_stops_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cascade.zoo.build as build

    real = build.onnx_probabilities

    def skewed(graph: object, X: np.ndarray) -> np.ndarray:
        p = real(graph, X)  # type: ignore[arg-type]
        p[0, 0] += 1e-3  # an export that is off by more than the tolerance
        return p

    monkeypatch.setattr(build, "onnx_probabilities", skewed)
    with pytest.raises(
        BuildError,
        match=r"digits/tiny: ONNX disagrees with the reference by "
        r"0\.001 \(row 0; allowed <= 0\.0001\)",
    ):
        build_zoo(read_dataset("digits"), tmp_path, progress=False)
    assert not (tmp_path / "tiny.onnx").exists()
