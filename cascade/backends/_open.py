"""Open a tier's model file as the right backend: ONNX over numbers, or a text model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cascade.backends._base import Model
from cascade.backends.onnx import OnnxModel

__all__ = ["TEXT_SIDECAR_SUFFIX", "open_model"]

TEXT_SIDECAR_SUFFIX = ".text.json"
"""Beside ``tiny.onnx``, ``tiny.text.json`` says how texts become the graph's inputs."""


def open_model(
    path: str | os.PathLike[str],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    offload: bool = False,
) -> Model:
    """An :class:`OnnxModel`, or a text model when a ``.text.json`` sidecar sits beside it.

    ``offload`` runs the graph in a worker thread (the Ray tier deployments do).

    Example::

        model = open_model("policies/models/clinc150/tiny.onnx")   # takes texts
    """
    path = Path(path)
    sidecar = path.with_name(path.name.removesuffix(".onnx") + TEXT_SIDECAR_SUFFIX)
    if sidecar.is_file():
        from cascade.text.backend import TextModel

        return TextModel(path, providers=tuple(providers), offload=offload)
    return OnnxModel(path, providers=providers, offload=offload)
