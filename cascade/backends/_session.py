"""One onnxruntime session setup for every backend that runs a graph in this process."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from cascade.errors import BackendError, CascadeError, ModelUnavailable

__all__ = [
    "CPU",
    "GraphOptimization",
    "ProviderFallbackWarning",
    "onnxruntime_errors",
    "open_session",
    "resolve_providers",
]

GraphOptimization = Literal["disable", "basic", "extended", "all"]

CPU = "CPUExecutionProvider"


class ProviderFallbackWarning(UserWarning):
    """A requested execution provider is not available here; the model runs without it."""


@contextmanager
def onnxruntime_errors(where: str) -> Iterator[None]:
    """Re-raise onnxruntime's errors as cascade's, keeping the original as the cause."""
    try:
        yield
    except CascadeError:
        raise
    except Exception as exc:  # onnxruntime's pybind errors share no useful base class
        raise BackendError(f"{where}: onnxruntime failed: {exc}") from exc


def open_session(
    path: Path,
    *,
    providers: Sequence[str],
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    graph_optimization: GraphOptimization = "all",
) -> Any:
    """An onnxruntime session as every backend runs one: sequential, quiet, these threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_optimization]
    options.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not to us
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
        raise ModelUnavailable(f"{path}: cannot load ONNX model: {exc}") from exc


def resolve_providers(requested: Sequence[str]) -> tuple[str, ...]:
    """The requested execution providers that onnxruntime has here, CPU always last in line;
    the missing ones are dropped with a :class:`ProviderFallbackWarning`."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if isinstance(requested, str):
        requested = (requested,)
    kept = [p for p in requested if p in available]
    if CPU not in kept:
        kept.append(CPU)
    missing = [p for p in requested if p not in available]
    if missing:
        warnings.warn(
            f"execution providers {missing} are not available here "
            f"(available: {list(available)}); falling back to {kept}",
            ProviderFallbackWarning,
            stacklevel=3,
        )
    return tuple(kept)
