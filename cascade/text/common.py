"""What every text tier's build shares: the build's state, linear text graphs, measuring,
cards, and writing a model with its sidecar.

Used by :mod:`cascade.text.build` (the tiers) and :mod:`cascade.text.oos` (the out-of-scope
filter).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from cascade.backends.featurize import SparseRows
from cascade.backends.text import TextModel
from cascade.catalog import (
    CARD_SUFFIX,
    TEXT_SIDECAR_SUFFIX,
    Fidelity,
    ModelCard,
    beside,
    companions,
    sha256_of,
)
from cascade.errors import BuildError
from cascade.zoo.datasets import Dataset
from cascade.zoo.measure import measure_latency

__all__ = [
    "IR_VERSION",
    "OPSET",
    "TextBuild",
    "head_nodes",
    "linear_text_onnx",
    "predict_all",
    "save_model",
    "set_metadata",
    "text_card",
    "text_metrics",
    "texts_of",
    "to_csr",
    "write_sidecar",
]

OPSET = 17
IR_VERSION = 8


@dataclass
class TextBuild:
    """One text build in progress: its dataset, output folder, progress step and cards."""

    dataset: Dataset
    out: Path
    seed: int
    step: Callable[[str], None]
    latency_texts: list[str]
    cards: list[ModelCard] = field(default_factory=list)


def to_csr(rows: SparseRows) -> Any:
    """``rows`` as a ``scipy.sparse.csr_matrix`` (float64) to train scikit-learn on."""
    from scipy.sparse import csr_matrix

    return csr_matrix(
        (rows.values.astype(np.float64), rows.indices, rows.indptr),
        shape=(len(rows), rows.width),
    )


def texts_of(X: npt.NDArray[Any]) -> list[str]:
    return [str(t) for t in X]


def text_metrics(
    probabilities: npt.NDArray[Any], y: npt.NDArray[Any], classes: Sequence[str]
) -> dict[str, float]:
    predicted = probabilities.argmax(axis=1)
    out = {"accuracy": float((predicted == y).mean())}
    if "oos" in classes:  # CLINC150's out-of-scope class: report both sides of it
        oos = list(classes).index("oos")
        inside = y != oos
        if inside.any():
            out["in_scope_accuracy"] = float((predicted[inside] == y[inside]).mean())
        if (~inside).any():
            out["oos_recall"] = float((predicted[~inside] == oos).mean())
    return out


def predict_all(model: TextModel, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """Probabilities of every text, in batches of similar length (less padding)."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.n_classes), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out[rows] = model.predict_sync([texts[i] for i in rows])
    return out


def set_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    existing = {entry.key: entry for entry in model.metadata_props}
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value)
        entry = existing.get(key) or model.metadata_props.add()
        entry.key, entry.value = key, text


def head_nodes(
    source: str, weight: npt.NDArray[np.float32], bias: npt.NDArray[np.float32]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = [
        helper.make_node("MatMul", [source, "head.weight"], ["head.logits_raw"]),
        helper.make_node("Add", ["head.logits_raw", "head.bias"], ["head.logits"]),
        helper.make_node("Softmax", ["head.logits"], ["probabilities"], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(weight, "head.weight"),
        numpy_helper.from_array(bias, "head.bias"),
    ]
    return nodes, initializers


def linear_text_onnx(
    weight: npt.ArrayLike, bias: npt.ArrayLike, *, metadata: dict[str, Any] | None = None
) -> onnx.ModelProto:
    """``softmax(x @ W + b)`` for sparse rows given as padded ``feature_ids``/``feature_values``.

    ``W`` is ``[width, n_classes]``. The graph gathers the ``k`` rows of ``W`` a text uses and
    weighs them by its values (``[batch, 1, k] @ [batch, k, C]``); padding (id 0, value 0)
    adds nothing.

    Example::

        graph = linear_text_onnx(coef.T, intercept)
        ids, values = featurizer.transform(texts).padded()
    """
    W = np.ascontiguousarray(weight, dtype=np.float32)
    b = np.ascontiguousarray(bias, dtype=np.float32)
    if W.ndim != 2 or b.shape != (W.shape[1],):
        raise BuildError(
            f"weight must be [width, n_classes] and bias [n_classes], got {list(W.shape)} "
            f"and {list(b.shape)}"
        )
    nodes = [
        helper.make_node("Gather", ["linear.weight", "feature_ids"], ["linear.rows"], axis=0),
        helper.make_node("Unsqueeze", ["feature_values", "linear.axis1"], ["linear.values"]),
        helper.make_node("MatMul", ["linear.values", "linear.rows"], ["linear.sum"]),
        helper.make_node("Squeeze", ["linear.sum", "linear.axis1"], ["linear.dot"]),
        helper.make_node("Add", ["linear.dot", "linear.bias"], ["linear.logits"]),
        helper.make_node("Softmax", ["linear.logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "cascade_linear_text",
        [
            helper.make_tensor_value_info("feature_ids", TensorProto.INT64, ["batch", "k"]),
            helper.make_tensor_value_info("feature_values", TensorProto.FLOAT, ["batch", "k"]),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", W.shape[1]])],
        [
            numpy_helper.from_array(W, "linear.weight"),
            numpy_helper.from_array(b, "linear.bias"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "linear.axis1"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cascade"
    )
    model.ir_version = IR_VERSION
    set_metadata(model, metadata or {})
    onnx.checker.check_model(model)
    return model


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, tmp)
    tmp.replace(path)
    return path


def write_sidecar(model_path: Path, content: str) -> Path:
    path = beside(model_path, TEXT_SIDECAR_SUFFIX)
    path.write_text(content + "\n", encoding="utf-8")
    return path


def text_card(
    ctx: TextBuild,
    model: TextModel,
    *,
    tier: str,
    build: dict[str, Any],
    fidelity: Fidelity | None,
    test_probabilities: np.ndarray,
    compression: dict[str, Any] | None = None,
) -> ModelCard:
    ds = ctx.dataset
    ctx.step(f"{tier}: measuring")
    calibration = predict_all(model, texts_of(ds.calibration.X))
    metrics = text_metrics(test_probabilities, ds.test.y, ds.classes)
    card = ModelCard(
        name=model.path.name.removesuffix(".onnx"),
        tier=tier,
        variant=None,
        file=model.path.name,
        dataset=ds.name,
        dataset_source=ds.source,
        seed=ctx.seed,
        split_sizes=ds.split_sizes(),
        n_features=ds.n_features,
        input_name=model.input_spec.name,
        classes=list(ds.classes),
        accuracy={
            "test": metrics["accuracy"],
            "calibration": text_metrics(calibration, ds.calibration.y, ds.classes)["accuracy"],
        },
        size_bytes=model.path.stat().st_size,
        sha256=sha256_of(model.path),
        latency=measure_latency(
            model, ctx.latency_texts, single_row_runs=100 if model.kind == "minilm" else 300
        ),
        fidelity=fidelity,
        build={
            **build,
            "test_metrics": metrics,
            "files": {
                p.name: p.stat().st_size
                for p in companions(model.path)
                if not p.name.endswith(CARD_SUFFIX)
            },
        },
        compression=compression,
    )
    ctx.cards.append(card)
    return card
