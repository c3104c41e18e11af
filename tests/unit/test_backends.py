"""OnnxModel and FakeModel: loading, validation of every bad input, error translation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cascade import (
    BackendError,
    FakeModel,
    InputError,
    Model,
    ModelUnavailable,
    OnnxModel,
    ProviderFallbackWarning,
)
from cascade.catalog import ModelCard
from cascade.zoo import read_dataset


@pytest.fixture(scope="module")
def tiny(digits_zoo: tuple[Path, list[ModelCard]]) -> OnnxModel:
    return OnnxModel(digits_zoo[0] / "tiny.onnx")


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.array(read_dataset("digits").test.X[:8])


def test_predicts_probabilities_of_real_rows(tiny: OnnxModel, rows: np.ndarray) -> None:
    probabilities = tiny.predict_sync(rows)
    assert probabilities.shape == (8, 10)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert tiny.name == "tiny"
    assert tiny.input_spec.name == "input" and tiny.input_spec.width == 64
    assert tiny.n_classes == 10
    assert isinstance(tiny, Model)


def test_async_predict_matches_sync_inline_and_offloaded(
    digits_zoo: tuple[Path, list[ModelCard]], rows: np.ndarray
) -> None:
    inline = OnnxModel(digits_zoo[0] / "small.onnx")
    offloaded = OnnxModel(digits_zoo[0] / "small.onnx", offload=True)
    expected = inline.predict_sync(rows)
    np.testing.assert_array_equal(asyncio.run(inline.predict(rows)), expected)
    np.testing.assert_array_equal(asyncio.run(offloaded.predict(rows)), expected)


def test_accepts_lists_ints_and_float64(tiny: OnnxModel, rows: np.ndarray) -> None:
    expected = tiny.predict_sync(rows)
    np.testing.assert_allclose(tiny.predict_sync(rows.astype(np.float64)), expected)
    np.testing.assert_allclose(tiny.predict_sync(rows.tolist()), expected)
    np.testing.assert_allclose(tiny.predict_sync(rows.astype(np.int64)), expected)


BAD_INPUTS = [
    pytest.param(
        np.zeros(64),
        r"input 'input': expected rank 2 \[batch, 64\], got rank 1 "
        r"with shape \[64\]",
        id="rank-1",
    ),
    pytest.param(
        np.zeros((2, 8, 8)),
        r"expected rank 2 \[batch, 64\], got rank 3 "
        r"with shape \[2, 8, 8\]",
        id="rank-3",
    ),
    pytest.param(
        np.zeros((2, 63)),
        r"input 'input': expected 64 features per row, got 63 "
        r"\(shape \[2, 63\]\)",
        id="width",
    ),
    pytest.param(
        np.zeros((0, 64)),
        r"input 'input': empty batch \(0 rows\); send at least one row",
        id="empty",
    ),
    pytest.param(
        [],
        r"input 'input': expected rank 2 \[batch, 64\], got rank 1 with shape \[0\]",
        id="empty-list",
    ),
    pytest.param(
        np.array([["a"] * 64]),
        r"input 'input': expected real numbers \(cast to "
        r"float32\), got dtype <U1",
        id="strings",
    ),
    pytest.param(
        np.zeros((1, 64), dtype=bool),
        r"expected real numbers \(cast to float32\), "
        r"got booleans",
        id="bool",
    ),
    pytest.param(np.zeros((1, 64), dtype=complex), r"got dtype complex128", id="complex"),
    pytest.param(np.array([[None] * 64]), r"got dtype object", id="object"),
    pytest.param(
        [[1.0] * 64, [1.0] * 3],
        r"expected a rectangular \[batch, 64\] array, "
        r"got ragged rows",
        id="ragged",
    ),
]


@pytest.mark.parametrize(("batch", "message"), BAD_INPUTS)
def test_bad_input_is_an_input_error(tiny: OnnxModel, batch: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        tiny.predict_sync(batch)


@pytest.mark.parametrize(
    ("value", "what"), [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf"), (1e40, "1e40")]
)
def test_non_finite_values_name_their_rows(tiny: OnnxModel, value: float, what: str) -> None:
    batch = np.zeros((10, 64))
    batch[3, 5] = value
    batch[7, 0] = value
    with pytest.raises(
        InputError,
        match=r"input 'input': 2 non-finite values \(NaN, inf or beyond float32\) in rows \[3, 7\]",
    ):
        tiny.predict_sync(batch)


def test_many_bad_rows_are_listed_briefly(tiny: OnnxModel) -> None:
    batch = np.full((9, 64), np.nan)
    with pytest.raises(InputError, match=r"in rows \[0, 1, 2, 3, 4, \.\.\.\]"):
        tiny.predict_sync(batch)


def test_input_errors_leave_the_model_serving(tiny: OnnxModel, rows: np.ndarray) -> None:
    with pytest.raises(InputError):
        tiny.predict_sync(np.full((1, 64), np.nan))
    assert tiny.predict_sync(rows).shape == (8, 10)


def test_missing_and_corrupt_files_are_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"nope\.onnx: no such model file"):
        OnnxModel(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelUnavailable, match=r"garbage\.onnx: cannot load ONNX model"):
        OnnxModel(garbage)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_graph_shape_is_checked_at_load(tmp_path: Path) -> None:
    two_inputs = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["probabilities"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
    )
    with pytest.raises(
        ModelUnavailable, match=r"expected a graph with one input, got 2 \['a', 'b'\]"
    ):
        OnnxModel(_save(two_inputs, tmp_path / "two.onnx"))
    int_input = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["probabilities"], to=TensorProto.FLOAT)],
        "ints",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
    )
    with pytest.raises(
        ModelUnavailable,
        match=r"expected one float32 input of rank 2, "
        r"got tensor\(int64\)",
    ):
        OnnxModel(_save(int_input, tmp_path / "ints.onnx"))


def test_runtime_failures_become_backend_errors(tmp_path: Path) -> None:
    # Gather with indices taken from the input: zeros (the warm-up row) are fine, an index
    # past the table makes onnxruntime fail at run time, as a broken model would.
    table = helper.make_tensor("table", TensorProto.FLOAT, [10], [0.1] * 10)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["probabilities"]),
        ],
        "gather",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        initializer=[table],
    )
    model = OnnxModel(_save(graph, tmp_path / "gather.onnx"))
    assert model.predict_sync(np.ones((3, 4))).shape == (3, 4)
    with pytest.raises(BackendError, match=r"gather\.onnx: onnxruntime failed: .*"):
        model.predict_sync(np.full((2, 4), 50.0))
    assert model.predict_sync(np.ones((1, 4))).shape == (1, 4)


def test_unavailable_providers_fall_back_to_cpu_with_a_warning(
    digits_zoo: tuple[Path, list[ModelCard]],
) -> None:
    with pytest.warns(
        ProviderFallbackWarning,
        match=r"\['NoSuchExecutionProvider'\] are not "
        r"available here .* falling back to \['CPUExecutionProvider'\]",
    ):
        model = OnnxModel(
            digits_zoo[0] / "tiny.onnx",
            providers=("NoSuchExecutionProvider", "CPUExecutionProvider"),
        )
    assert model.providers == ("CPUExecutionProvider",)


def test_fake_model_records_calls_and_injects_failures() -> None:
    model = FakeModel(lambda x: np.tile([0.8, 0.2], (len(x), 1)), width=3, name="cheap")
    out = asyncio.run(model.predict(np.zeros((4, 3))))
    assert out.shape == (4, 2) and model.calls == [4]
    with pytest.raises(InputError, match="expected 3 features per row, got 2"):
        asyncio.run(model.predict(np.zeros((1, 2))))
    model.fail_with = ModelUnavailable("cheap is down")
    with pytest.raises(ModelUnavailable, match="cheap is down"):
        asyncio.run(model.predict(np.zeros((1, 3))))
    assert isinstance(model, Model)
