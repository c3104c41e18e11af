"""OnnxModel: one ONNX tier run in-process by onnxruntime."""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cascade.backends._base import InputSpec, validate_batch
from cascade.errors import BackendError, CascadeError, ModelUnavailable

__all__ = ["GraphOptimization", "OnnxModel", "ProviderFallbackWarning"]

GraphOptimization = Literal["disable", "basic", "extended", "all"]

_CPU = "CPUExecutionProvider"


class ProviderFallbackWarning(UserWarning):
    """A requested execution provider is not available here; the model runs without it."""


@contextmanager
def _translate(where: str) -> Iterator[None]:
    """Re-raise onnxruntime's errors as cascade's, keeping the original as the cause."""
    try:
        yield
    except CascadeError:
        raise
    except Exception as exc:  # onnxruntime's pybind errors share no useful base class
        raise BackendError(f"{where}: onnxruntime failed: {exc}") from exc


class OnnxModel:
    """A tier backed by an ONNX file: raw features in, class probabilities out.

    The graph must take one float32 input of rank 2 and produce probabilities as a float
    tensor ``[batch, n_classes]`` (an output named ``probabilities`` is preferred).

    Example::

        model = OnnxModel("models/digits/tiny.onnx", intra_op_threads=1)
        probabilities = model.predict_sync(rows)          # offline, in-process
        probabilities = await model.predict(rows)         # inside the engine

    Requested execution providers that onnxruntime lacks here are dropped with a
    ``ProviderFallbackWarning``; the CPU provider is always last in line.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        providers: Sequence[str] = (_CPU,),
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        graph_optimization: GraphOptimization = "all",
        warmup_runs: int = 3,
        offload: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.name = name if name is not None else self.path.name.split(".")[0]
        self.offload = offload
        if not self.path.is_file():
            raise ModelUnavailable(f"{self.path}: no such model file")
        self.providers = _resolve_providers(providers, ort.get_available_providers())
        self._session = load_session(
            self.path,
            providers=self.providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            graph_optimization=graph_optimization,
        )

        self.input_spec = _input_spec(self._session, self.path)
        self._output_name = _probability_output(self._session, self.path)
        probe = self.predict_sync(np.zeros((1, self.input_spec.width or 1), dtype=np.float32))
        self.n_classes = int(probe.shape[1])
        for _ in range(max(warmup_runs - 1, 0)):
            self.predict_sync(np.zeros((1, self.input_spec.width or 1), dtype=np.float32))

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, providers={list(self.providers)})"

    def predict_sync(self, batch: Any) -> np.ndarray:
        """Validate ``batch`` and run the graph in the calling thread."""
        rows = validate_batch(batch, self.input_spec)
        with _translate(str(self.path)):
            (probabilities,) = self._session.run([self._output_name], {self.input_spec.name: rows})
        return np.asarray(probabilities, dtype=np.float32)

    async def predict(self, batch: Any) -> np.ndarray:
        """Validate ``batch`` and return probabilities ``(n, n_classes)``.

        With ``offload=True`` the graph runs in a worker thread, which pays for models
        costing milliseconds; µs-cheap tiers are faster run inline.
        """
        if self.offload:
            return await asyncio.to_thread(self.predict_sync, batch)
        return self.predict_sync(batch)


def load_session(
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


def _resolve_providers(requested: Sequence[str], available: Sequence[str]) -> tuple[str, ...]:
    if isinstance(requested, str):
        requested = (requested,)
    kept = [p for p in requested if p in available]
    if _CPU not in kept:
        kept.append(_CPU)
    missing = [p for p in requested if p not in available]
    if missing:
        warnings.warn(
            f"execution providers {missing} are not available here "
            f"(available: {list(available)}); falling back to {kept}",
            ProviderFallbackWarning,
            stacklevel=3,
        )
    return tuple(kept)


def _input_spec(session: Any, path: Path) -> InputSpec:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ModelUnavailable(
            f"{path}: expected a graph with one input, got {len(inputs)} {names}"
        )
    (graph_input,) = inputs
    shape = graph_input.shape
    if graph_input.type != "tensor(float)" or len(shape) != 2:
        raise ModelUnavailable(
            f"{path}: expected one float32 input of rank 2, got {graph_input.type} "
            f"with shape {shape}"
        )
    width = shape[1] if isinstance(shape[1], int) else None
    return InputSpec(name=graph_input.name, width=width)


def _probability_output(session: Any, path: Path) -> str:
    outputs = session.get_outputs()
    for output in outputs:
        if output.name == "probabilities":
            return str(output.name)
    candidates = [o for o in outputs if o.type == "tensor(float)" and len(o.shape) == 2]
    if len(candidates) != 1:
        described = [(o.name, o.type, o.shape) for o in outputs]
        raise ModelUnavailable(
            f"{path}: cannot tell which output holds probabilities: {described} "
            "(name it 'probabilities')"
        )
    return str(candidates[0].name)
