"""scikit-learn → ONNX export with skl2onnx, and the fidelity check every export must pass."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import onnx

from cascade.errors import BuildError, FidelityError

__all__ = [
    "FIDELITY_TOLERANCE",
    "bool_attributes_as_ints",
    "check_fidelity",
    "library_versions",
    "onnx_probabilities",
    "sklearn_to_onnx",
]

FIDELITY_TOLERANCE = 1e-4
"""Largest allowed |p_onnx - p_sklearn| over all rows and classes of the checked split."""

# ONNX default domain 17 and ai.onnx.ml 3 run on every onnxruntime we support (>= 1.18).
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


@contextmanager
def bool_attributes_as_ints() -> Iterator[None]:
    """Work around skl2onnx 1.20 under protobuf >= 7 for HistGradientBoosting.

    skl2onnx passes ``nodes_missing_value_tracks_true`` as a list of numpy bools; protobuf 7
    refuses bools in an ``ints`` field ("Expected an int, got a boolean"). We coerce such
    lists to ints for the duration of one conversion instead of pinning protobuf < 7, which
    would fight Ray and onnx over the protobuf version. Harmless where the bug is absent.
    """
    from skl2onnx.common._container import ModelComponentContainer

    original = ModelComponentContainer.add_node

    def add_node(self: Any, *args: Any, **attrs: Any) -> Any:
        for key, value in attrs.items():
            if isinstance(value, list | tuple) and any(
                isinstance(v, bool | np.bool_) for v in value
            ):
                attrs[key] = [int(v) for v in value]
        return original(self, *args, **attrs)

    ModelComponentContainer.add_node = add_node
    try:
        yield
    finally:
        ModelComponentContainer.add_node = original


def sklearn_to_onnx(
    estimator: Any,
    *,
    n_features: int,
    input_name: str = "input",
    metadata: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """Convert a fitted classifier (or pipeline ending in one) to a self-contained ONNX graph.

    The graph takes raw float32 features ``[N, n_features]`` and returns class probabilities
    as a plain float tensor named ``probabilities`` (no ZipMap), beside a ``label`` output.

    Example::

        graph = sklearn_to_onnx(model, n_features=64, metadata={"tier": "tiny"})
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    classifier = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    try:
        with bool_attributes_as_ints():
            graph = convert_sklearn(
                estimator,
                initial_types=[(input_name, FloatTensorType([None, n_features]))],
                options={id(classifier): {"zipmap": False}},
                target_opset=TARGET_OPSET,
            )
    except Exception as exc:
        raise BuildError(f"skl2onnx could not convert {type(estimator).__name__}: {exc}") from exc
    if "probabilities" not in [o.name for o in graph.graph.output]:
        raise BuildError(f"converted {type(estimator).__name__} has no 'probabilities' output")
    graph.producer_name = "cascade"
    # skl2onnx names the graph with a random uuid; a fixed name makes builds reproducible
    # byte for byte, so a model's sha256 identifies its training, not the export run.
    graph.graph.name = f"cascade_{type(classifier).__name__}"
    for key, value in (metadata or {}).items():
        entry = graph.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    result: onnx.ModelProto = graph
    return result


def onnx_probabilities(graph: onnx.ModelProto | bytes, X: np.ndarray) -> np.ndarray:
    """Run ``graph`` on ``X`` with onnxruntime (CPU) and return its probabilities."""
    import onnxruntime as ort

    payload = graph if isinstance(graph, bytes) else graph.SerializeToString()
    session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    wanted = "probabilities" if "probabilities" in outputs else outputs[-1]
    (probabilities,) = session.run([wanted], {name: np.ascontiguousarray(X, dtype=np.float32)})
    return np.asarray(probabilities, dtype=np.float32)


def check_fidelity(
    onnx_proba: np.ndarray,
    reference_proba: np.ndarray,
    *,
    what: str,
    tolerance: float = FIDELITY_TOLERANCE,
) -> float:
    """Return max |onnx - reference|; raise ``FidelityError`` when it exceeds ``tolerance``.

    Example::

        diff = check_fidelity(onnx_probabilities(graph, X), model.predict_proba(X), what="tiny")
    """
    if onnx_proba.shape != reference_proba.shape:
        raise FidelityError(
            f"{what}: ONNX probabilities have shape {list(onnx_proba.shape)}, "
            f"the reference has {list(reference_proba.shape)}"
        )
    diff = np.abs(onnx_proba.astype(np.float64) - reference_proba.astype(np.float64))
    worst = float(diff.max())
    if not worst <= tolerance:  # also catches NaN
        row = int(np.flatnonzero((~(diff <= tolerance)).any(axis=1))[0])  # NaN counts as bad
        raise FidelityError(
            f"{what}: ONNX disagrees with the reference by {worst:.3g} "
            f"(row {row}; allowed <= {tolerance:g}); the export is not faithful"
        )
    return worst


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a build's output, for its cards."""
    import platform

    import onnxruntime
    import skl2onnx
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
