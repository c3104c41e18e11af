"""INT8 post-training quantization of a digits MLP student with onnxruntime."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.tree import DecisionTreeClassifier

from cascade.errors import BuildError
from cascade.zoo import read_dataset
from cascade.zoo.quantize import has_quantizable_ops, quantize_dynamic_int8, quantize_static_int8
from cascade.zoo.student import TrainConfig, student_to_onnx, train_student


@dataclass(frozen=True)
class Digits:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="module")
def digits() -> Digits:
    # The project's own seeded 60/20/20 split: calibration rows stand in for validation.
    ds = read_dataset("digits")
    return Digits(ds.train.X, ds.train.y, ds.calibration.X, ds.test.X, ds.test.y)


@pytest.fixture(scope="module")
def fp32_model(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # hidden=256 makes the weight matrices dominate the file, as in a real student.
    config = TrainConfig(hidden=(256,), epochs=60, batch_size=64, seed=0)
    mlp = train_student(digits.X_train, digits.y_train, n_classes=10, config=config)
    path = tmp_path_factory.mktemp("fp32") / "student.onnx"
    onnx.save(student_to_onnx(mlp), path)
    return path


@pytest.fixture(scope="module")
def tree_model(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(digits.X_train, digits.y_train)
    path = tmp_path_factory.mktemp("tree") / "tree.onnx"
    onnx.save(to_onnx(tree, digits.X_train[:1], options={"zipmap": False}), path)
    return path


def ort_accuracy(path: Path, digits: Digits) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [proba] = session.run(["probabilities"], {"input": digits.X_test})
    return float((proba.argmax(axis=1) == digits.y_test).mean())


def quantize(kind: str, src: Path, dst: Path, digits: Digits) -> Path:
    if kind == "dynamic":
        return quantize_dynamic_int8(src, dst)
    # A held-out calibration split, as the zoo build uses: its ranges differ from the
    # training data's, which is what made MinMax calibration lose accuracy.
    return quantize_static_int8(src, dst, calibration=digits.X_val)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_int8_model_is_smaller_and_as_accurate(
    kind: str,
    digits: Digits,
    fp32_model: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    dst = quantize(kind, fp32_model, tmp_path / "int8" / f"{kind}.onnx", digits)
    assert dst.is_file()
    fp32_acc = ort_accuracy(fp32_model, digits)
    int8_acc = ort_accuracy(dst, digits)
    fp32_bytes, int8_bytes = fp32_model.stat().st_size, dst.stat().st_size
    request.node.user_properties += [
        ("fp32_test_accuracy", fp32_acc),
        (f"int8_{kind}_test_accuracy", int8_acc),
        ("fp32_bytes", fp32_bytes),
        (f"int8_{kind}_bytes", int8_bytes),
    ]
    # Measured: about 0.3x the fp32 size, accuracy within 0.3 points on seeds 0-2.
    assert int8_bytes < 0.5 * fp32_bytes
    assert abs(int8_acc - fp32_acc) <= 0.01


def test_static_model_is_qdq_with_int8_weights(
    digits: Digits, fp32_model: Path, tmp_path: Path
) -> None:
    dst = quantize_static_int8(fp32_model, tmp_path / "static.onnx", calibration=digits.X_train)
    model = onnx.load(dst)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul", "Softmax"} <= ops
    int8_weights = [i for i in model.graph.initializer if i.data_type == TensorProto.INT8]
    assert sum(numpy_helper.to_array(i).size for i in int8_weights) >= 64 * 256 + 256 * 10


def test_dynamic_model_uses_integer_matmul(
    digits: Digits, fp32_model: Path, tmp_path: Path
) -> None:
    dst = quantize_dynamic_int8(fp32_model, tmp_path / "dynamic.onnx")
    ops = {n.op_type for n in onnx.load(dst).graph.node}
    assert "DynamicQuantizeLinear" in ops
    assert ops & {"MatMulInteger", "MatMulIntegerToFloat"}


@pytest.mark.parametrize("rows", [1, 10, 257])
def test_static_accepts_any_number_of_calibration_rows(
    rows: int, digits: Digits, fp32_model: Path, tmp_path: Path
) -> None:
    dst = quantize_static_int8(
        fp32_model, tmp_path / "static.onnx", calibration=digits.X_val[:rows]
    )
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    [proba] = session.run(None, {"input": digits.X_test[:3]})
    assert proba.shape == (3, 10)


def test_has_quantizable_ops(fp32_model: Path, tree_model: Path) -> None:
    assert has_quantizable_ops(fp32_model)
    assert not has_quantizable_ops(tree_model)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_tree_ensemble_is_refused(
    kind: str, digits: Digits, tree_model: Path, tmp_path: Path
) -> None:
    message = (
        f"{tree_model}: no MatMul/Gemm/Conv nodes to quantize "
        "(tree ensembles and linear classifiers stay fp32)"
    )
    with pytest.raises(BuildError, match=re.escape(message)):
        quantize(kind, tree_model, tmp_path / "tree.int8.onnx", digits)
    assert not (tmp_path / "tree.int8.onnx").exists()


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_missing_and_corrupt_files_are_named(kind: str, digits: Digits, tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(BuildError, match=re.escape(f"{missing}: no such ONNX file")):
        quantize(kind, missing, tmp_path / "out.onnx", digits)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not protobuf")
    with pytest.raises(BuildError, match=re.escape(f"{corrupt}: cannot be read as an ONNX model")):
        quantize(kind, corrupt, tmp_path / "out.onnx", digits)


def test_static_checks_input_name_and_calibration_width(
    digits: Digits, fp32_model: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "out.onnx"
    with pytest.raises(
        BuildError, match=re.escape("no graph input named 'x'; inputs are ['input']")
    ):
        quantize_static_int8(fp32_model, dst, calibration=digits.X_train, input_name="x")
    with pytest.raises(BuildError, match=re.escape("has 64 features, calibration data has 32")):
        quantize_static_int8(fp32_model, dst, calibration=digits.X_train[:, :32])
    with pytest.raises(BuildError, match="calibration data contains NaN"):
        quantize_static_int8(fp32_model, dst, calibration=np.full((4, 64), np.nan))


def test_onnxruntime_failure_is_translated(tmp_path: Path) -> None:
    # A graph that passes onnx.load but that onnxruntime cannot run: the weight is (3, 2)
    # while the input is declared [N, 4], so calibration fails inside onnxruntime.
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["probabilities"])],
        "broken",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(np.ones((3, 2), dtype=np.float32), "W")],
    )
    src = tmp_path / "broken.onnx"
    onnx.save(
        helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", 17)]), src
    )
    with pytest.raises(
        BuildError, match=re.escape(f"{src}: static INT8 quantization failed")
    ) as info:
        quantize_static_int8(src, tmp_path / "out.onnx", calibration=np.ones((8, 4), np.float32))
    assert info.value.__cause__ is not None


def test_quantization_is_quiet(
    digits: Digits,
    fp32_model: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    filters_before = list(logging.getLogger().filters)
    with caplog.at_level(logging.INFO):
        quantize_dynamic_int8(fp32_model, tmp_path / "dynamic.onnx")
        quantize_static_int8(fp32_model, tmp_path / "static.onnx", calibration=digits.X_train)
    assert caplog.records == []
    assert capfd.readouterr() == ("", "")
    assert logging.getLogger().filters == filters_before
