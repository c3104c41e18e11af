"""Where a tier's files lie: the model, and what sits beside it with the same stem.

``tiny.onnx`` is read with ``tiny.card.json`` (its model card), ``tiny.text.json`` (a text
tier's sidecar: how texts become the graph's inputs, maybe naming a tokenizer file) or
``coarse.scorer.json`` (a ranking stage's card). Every path of that kind is built here, on
the ground floor: the policy reader (which checks the files a policy names) and
:mod:`cascade.catalog` (their public face) both use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "CARD_SUFFIX",
    "SCORER_CARD_SUFFIX",
    "TEXT_SIDECAR_SUFFIX",
    "beside",
    "companions",
]

CARD_SUFFIX = ".card.json"
"""A classifier tier's model card: ``tiny.onnx`` → ``tiny.card.json``."""
TEXT_SIDECAR_SUFFIX = ".text.json"
"""A text tier's sidecar: ``tiny.onnx`` → ``tiny.text.json``."""
SCORER_CARD_SUFFIX = ".scorer.json"
"""A ranking stage's card: ``coarse.onnx`` → ``coarse.scorer.json``."""


def beside(model: str | os.PathLike[str], suffix: str) -> Path:
    """The file with ``suffix`` beside ``model``: ``beside("m/tiny.onnx", CARD_SUFFIX)``
    is ``m/tiny.card.json``.

    Example::

        beside("models/digits/tiny.onnx", CARD_SUFFIX)   # models/digits/tiny.card.json
    """
    path = Path(model)
    return path.with_name(path.name.removesuffix(".onnx") + suffix)


def companions(model: str | os.PathLike[str]) -> Iterator[Path]:
    """The model file and every file its backend and catalog read beside it, where present:
    card, scorer card, text sidecar and the tokenizer the sidecar names."""
    model = Path(model)
    yield model
    for suffix in (CARD_SUFFIX, SCORER_CARD_SUFFIX, TEXT_SIDECAR_SUFFIX):
        extra = beside(model, suffix)
        if extra.is_file():
            yield extra
    sidecar = beside(model, TEXT_SIDECAR_SUFFIX)
    if sidecar.is_file():
        tokenizer = json.loads(sidecar.read_text()).get("tokenizer")
        if isinstance(tokenizer, str):
            yield model.with_name(tokenizer)
