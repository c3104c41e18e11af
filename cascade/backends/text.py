"""TextModel: a text tier served in-process, texts in, class probabilities out.

A text tier is an ONNX file plus a sidecar ``<stem>.text.json`` beside it that says how texts
become the graph's inputs (see :mod:`cascade.text.build` for how both are written)::

    {"format_version": 1, "kind": "hashed", "n_features": 16384, ...}     # tiny
    {"format_version": 1, "kind": "tfidf", ..., "terms": [...], "idf": [...]}   # small
    {"format_version": 1, "kind": "minilm", "tokenizer": "tokenizer.json", "max_length": 128}

``hashed`` and ``tfidf`` graphs take ``feature_ids`` int64 and ``feature_values`` float32
``[batch, k]`` (:meth:`SparseRows.padded <cascade.backends.featurize.SparseRows.padded>`);
``minilm`` graphs take ``input_ids`` and ``attention_mask`` int64 ``[batch, seq]``. All output
``probabilities`` float32 ``[batch, n_classes]``. Serving needs neither scikit-learn nor the
network: the featurizer is numpy and the standard library, the tokenizer file sits beside the
model.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cascade.backends._base import InputSpec, as_rows, validate_texts
from cascade.backends._session import CPU, onnxruntime_errors, open_session, resolve_providers
from cascade.backends.featurize import FORMAT_VERSION, Featurizer, read_featurizer
from cascade.catalog import TEXT_SIDECAR_SUFFIX, beside
from cascade.errors import BuildError, ModelUnavailable

__all__ = ["TEXT_KINDS", "TextModel"]

TEXT_KINDS = ("hashed", "tfidf", "minilm")
_GRAPH_INPUTS = {
    "hashed": ("feature_ids", "feature_values"),
    "tfidf": ("feature_ids", "feature_values"),
    "minilm": ("input_ids", "attention_mask"),
}
_OUTPUT = "probabilities"


class TextModel:
    """A text tier: a batch of strings in, probabilities ``(n, n_classes)`` float32 out.

    Texts are featurized (``hashed``, ``tfidf``) or tokenized (``minilm``) as the sidecar
    says, then the graph runs on onnxruntime with one intra-op thread by default, as
    :class:`~cascade.backends.OnnxModel` does. Inputs are checked by
    :func:`~cascade.backends.validate_texts`: a list or 1-D array of ``str``, each at most
    ``MAX_TEXT_CHARS`` long; anything else is an :class:`~cascade.errors.InputError`.

    Example::

        model = TextModel("models/clinc150/tiny.onnx")
        model.predict_sync(["what's my balance", "play some jazz"]).shape   # (2, 151)
        probabilities = await model.predict(texts)                          # in the engine

    ``offload`` runs the graph in a worker thread; ``None`` chooses it for ``minilm``, whose
    calls cost milliseconds, and not for the µs-cheap linear tiers.

    ``row_by_row`` runs the graph once per text; ``None`` chooses it for ``minilm``. Dynamic
    INT8 quantizes activations with one scale per tensor, so in a batch a text's
    probabilities depend on its batch-mates (by up to 0.09 on CLINC150 test queries); one
    run per text makes them a function of the text alone. On one thread it costs no more:
    padding to the longest text made batches of 32 cost 1.9 ms per text against 1.4 ms
    one by one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        providers: Sequence[str] = (CPU,),
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        warmup_runs: int = 3,
        offload: bool | None = None,
        row_by_row: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = name if name is not None else self.path.name.split(".")[0]
        if not self.path.is_file():
            raise ModelUnavailable(f"{self.path}: no such model file")
        self.sidecar = beside(self.path, TEXT_SIDECAR_SUFFIX)
        self.kind, self._featurizer, self._tokenizer = _read_sidecar(self.sidecar)
        self.offload = self.kind == "minilm" if offload is None else offload
        self.row_by_row = self.kind == "minilm" if row_by_row is None else row_by_row
        self.providers = resolve_providers(providers)

        self._session = open_session(
            self.path,
            providers=self.providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
        )
        _check_graph(self._session, self.path, self.kind)

        self.input_spec = InputSpec(name="text", width=None, dtype="string")
        probe = self.predict_sync(["warm up"])
        self.n_classes = int(probe.shape[1])
        for _ in range(max(warmup_runs - 1, 0)):
            self.predict_sync(["warm up"])

    def __repr__(self) -> str:
        return f"TextModel({str(self.path)!r}, kind={self.kind!r})"

    def feeds(self, texts: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
        """The graph's input feed for already validated ``texts``."""
        if self._tokenizer is not None:
            return dict(self._tokenizer(texts).feeds())
        assert self._featurizer is not None
        ids, values = self._featurizer.transform(texts).padded()
        return {"feature_ids": ids, "feature_values": values}

    def predict_sync(self, batch: Any) -> np.ndarray:
        """Validate ``batch``, featurize or tokenize it and run the graph in this thread."""
        return self._answer(validate_texts(batch, self.input_spec).tolist())

    def _answer(self, texts: list[str]) -> np.ndarray:
        if self.row_by_row and len(texts) > 1:
            return np.concatenate([self._run([text]) for text in texts])
        return self._run(texts)

    def _run(self, texts: list[str]) -> np.ndarray:
        feeds = self.feeds(texts)
        with onnxruntime_errors(str(self.path)):
            (probabilities,) = self._session.run([_OUTPUT], feeds)
        return np.asarray(probabilities, dtype=np.float32)

    async def predict(self, batch: Any) -> np.ndarray:
        """Probabilities ``(len(batch), n_classes)`` of texts the engine has validated
        (anything else is validated here); see ``offload`` above."""
        texts = as_rows(batch, self.input_spec).tolist()
        if self.offload:
            return await asyncio.to_thread(self._answer, texts)
        return self._answer(texts)


def _read_sidecar(path: Path) -> tuple[str, Featurizer | None, Any]:
    """``(kind, featurizer, tokenizer)`` from a sidecar file; exactly one of the last two."""
    if not path.is_file():
        raise ModelUnavailable(f"{path}: no text sidecar; a text model needs it beside the model")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelUnavailable(f"{path}: not valid JSON: {exc}") from exc
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in TEXT_KINDS:
        raise ModelUnavailable(f"{path}: kind {kind!r} is not one of {list(TEXT_KINDS)}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ModelUnavailable(
            f"{path}: format_version {data.get('format_version')!r}; "
            f"this cascade reads {FORMAT_VERSION}"
        )
    try:
        if kind == "minilm":
            from cascade.backends.tokenize import Tokenizer

            tokenizer_file = path.parent / str(data["tokenizer"])
            return kind, None, Tokenizer.from_file(tokenizer_file, max_length=data["max_length"])
        return kind, read_featurizer(text), None
    except (BuildError, KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(f"{path}: cannot read the {kind} sidecar: {exc!r}") from exc


def _check_graph(session: Any, path: Path, kind: str) -> None:
    inputs = sorted(i.name for i in session.get_inputs())
    expected = sorted(_GRAPH_INPUTS[kind])
    outputs = [o.name for o in session.get_outputs()]
    if inputs != expected or _OUTPUT not in outputs:
        raise ModelUnavailable(
            f"{path}: a {kind} text model needs inputs {expected} and output {_OUTPUT!r}, "
            f"the graph has inputs {inputs} and outputs {outputs}"
        )
