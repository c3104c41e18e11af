"""OnnxModel: one ONNX tier run in-process by onnxruntime."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascade.backends._base import InputSpec, as_rows, validate_batch
from cascade.backends._session import (
    CPU,
    GraphOptimization,
    onnxruntime_errors,
    open_session,
    resolve_providers,
)
from cascade.errors import ModelUnavailable

__all__ = ["OnnxModel"]


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
        providers: Sequence[str] = (CPU,),
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        graph_optimization: GraphOptimization = "all",
        warmup_runs: int = 3,
        offload: bool = False,
    ) -> None:
        self.path = Path(path)
        self.name = name if name is not None else self.path.name.split(".")[0]
        self.offload = offload
        if not self.path.is_file():
            raise ModelUnavailable(f"{self.path}: no such model file")
        self.providers = resolve_providers(providers)
        self._session = open_session(
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
        """Validate ``batch`` (every value) and run the graph in the calling thread."""
        return self._run(validate_batch(batch, self.input_spec))

    async def predict(self, batch: Any) -> np.ndarray:
        """Probabilities ``(n, n_classes)`` of rows the engine has validated (anything not
        in validated form is validated here: :func:`~cascade.backends.as_rows`).

        With ``offload=True`` the graph runs in a worker thread, which pays for models
        costing milliseconds; µs-cheap tiers are faster run inline.
        """
        rows = as_rows(batch, self.input_spec)
        if self.offload:
            return await asyncio.to_thread(self._run, rows)
        return self._run(rows)

    def _run(self, rows: np.ndarray) -> np.ndarray:
        with onnxruntime_errors(str(self.path)):
            (probabilities,) = self._session.run([self._output_name], {self.input_spec.name: rows})
        return np.asarray(probabilities, dtype=np.float32)


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
