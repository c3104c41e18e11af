"""Open a tier's model file as the right backend: ONNX over numbers, or a text model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cascade.backends._base import Model
from cascade.backends._session import CPU
from cascade.backends.onnx import OnnxModel
from cascade.backends.text import TextModel
from cascade.catalog import TEXT_SIDECAR_SUFFIX, beside

__all__ = ["open_model"]


def open_model(
    path: str | os.PathLike[str],
    *,
    providers: Sequence[str] = (CPU,),
    offload: bool = False,
) -> Model:
    """An :class:`OnnxModel`, or a :class:`TextModel` when a ``.text.json`` sidecar sits
    beside it.

    ``offload`` runs the graph in a worker thread (the Ray tier deployments do).

    Example::

        model = open_model("policies/models/clinc150/tiny.onnx")   # takes texts
    """
    path = Path(path)
    if beside(path, TEXT_SIDECAR_SUFFIX).is_file():
        return TextModel(path, providers=tuple(providers), offload=offload)
    return OnnxModel(path, providers=providers, offload=offload)
