"""The Model protocol every tier backend implements, and input validation shared by backends."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cascade.errors import InputError

__all__ = [
    "CALL_DEADLINE",
    "CALL_TIMES",
    "MAX_TEXT_CHARS",
    "InputSpec",
    "Model",
    "as_rows",
    "validate_batch",
    "validate_texts",
]

_MAX_LISTED_ROWS = 5


CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "cascade_call_deadline", default=None
)
"""The ``time.monotonic()`` by which the tier call running in this task must end (``None``:
unbounded), set by the engine around each backend call: a remote backend sizes its network
timeout and decides whether a retry still fits by it."""

CALL_TIMES: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "cascade_call_times", default=None
)
"""Where a backend may say how its call's time was spent, in ms by part (``"queue"``,
``"model"``), set by the engine around each call of a profiled batch only (``None``
otherwise: a backend then measures nothing). A Ray deployment tier fills in its replica's
batching queue and model run, so the rest of the call is known to be the hop; backends that
cannot tell leave it empty and their call is profiled whole."""

MAX_TEXT_CHARS = 10_000
"""Longest text one row of a text model may hold."""


@dataclass(frozen=True)
class InputSpec:
    """What a model accepts: one 2-D float32 tensor ``[batch, width]``, or, with ``dtype``
    ``"string"``, a 1-D batch of texts (``width`` is then ``None``).

    ``width`` is ``None`` when the graph leaves it symbolic.
    """

    name: str
    width: int | None
    dtype: str = "float32"


@runtime_checkable
class Model(Protocol):
    """A tier backend: a batch of rows in, class probabilities out.

    Example::

        model = OnnxModel("models/digits/tiny.onnx")
        probabilities = await model.predict(rows)   # (n, n_classes) float32
    """

    name: str
    input_spec: InputSpec

    async def predict(self, batch: Any) -> np.ndarray:
        """Return class probabilities, float32 of shape ``(len(batch), n_classes)``.

        The engine calls it with rows it has validated (:func:`validate_batch`, once per
        request); a backend re-checks only what costs nothing (:func:`as_rows`).
        """
        ...


def as_rows(batch: Any, spec: InputSpec) -> np.ndarray:
    """``batch`` as a backend runs it, checked in O(1) when it already has the form
    :func:`validate_batch` returns (a float32 ``[n, width]`` C-contiguous array, or a 1-D
    object array of texts); anything else goes through :func:`validate_batch`.

    Values are scanned once per request, where the request enters (the protocol parser,
    ``Engine.run``); a backend called by the engine gets those rows and does not scan them
    again.
    """
    if type(batch) is np.ndarray and batch.ndim >= 1 and batch.shape[0] > 0:
        if spec.dtype == "string":
            if batch.dtype == object and batch.ndim == 1:
                return batch
        elif (
            batch.dtype == np.float32
            and batch.ndim == 2
            and (spec.width is None or batch.shape[1] == spec.width)
            and batch.flags.c_contiguous
        ):
            return batch
    return validate_batch(batch, spec)


def validate_batch(batch: Any, spec: InputSpec) -> np.ndarray:
    """Check ``batch`` against ``spec`` and return it as a C-contiguous float32 array.

    Real numbers of any width (ints, float16/32/64) are cast to float32; booleans, complex
    numbers, strings and objects are refused. Every refusal is an ``InputError`` naming the
    input, what was expected and what came. A ``"string"`` spec takes texts instead: see
    :func:`validate_texts`.
    """
    if spec.dtype == "string":
        return validate_texts(batch, spec)
    if (
        type(batch) is np.ndarray
        and batch.dtype == np.float32
        and batch.ndim == 2
        and batch.shape[0] > 0
        and (spec.width is None or batch.shape[1] == spec.width)
        and batch.flags.c_contiguous
        and np.isfinite(batch).all()
    ):
        return batch  # already what the checks below would return: the serving hot path
    where = f"input '{spec.name}'"
    expected_shape = f"[batch, {spec.width if spec.width is not None else 'n_features'}]"
    try:
        array = np.asarray(batch)
    except ValueError as exc:  # ragged nested lists
        raise InputError(
            f"{where}: expected a rectangular {expected_shape} array, got ragged rows"
        ) from exc
    kind = array.dtype.kind
    if kind not in "iuf":
        got = "booleans" if kind == "b" else f"dtype {array.dtype}"
        if array.size == 0 and kind in "OU":
            got = "an empty batch"
        raise InputError(f"{where}: expected real numbers (cast to {spec.dtype}), got {got}")
    if array.ndim != 2:
        raise InputError(
            f"{where}: expected rank 2 {expected_shape}, got rank {array.ndim} "
            f"with shape {list(array.shape)}"
        )
    if array.shape[0] == 0:
        raise InputError(f"{where}: empty batch (0 rows); send at least one row")
    if spec.width is not None and array.shape[1] != spec.width:
        raise InputError(
            f"{where}: expected {spec.width} features per row, got {array.shape[1]} "
            f"(shape {list(array.shape)})"
        )
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf: caught below
        as_float = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(as_float)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        listed = ", ".join(str(r) for r in bad_rows[:_MAX_LISTED_ROWS])
        more = ", ..." if bad_rows.size > _MAX_LISTED_ROWS else ""
        raise InputError(
            f"{where}: {int((~finite).sum())} non-finite values (NaN, inf or beyond float32) "
            f"in rows [{listed}{more}]"
        )
    return as_float


def validate_texts(batch: Any, spec: InputSpec) -> np.ndarray:
    """Check a batch of texts and return it as a 1-D object array of ``str``.

    A list or a 1-D (or ``[n, 1]``) array of strings; every row a ``str`` of at most
    :data:`MAX_TEXT_CHARS` characters. Every refusal is an ``InputError`` naming the row.
    """
    where = f"input '{spec.name}'"
    if isinstance(batch, np.ndarray):
        if batch.ndim == 2 and batch.shape[1] == 1:
            batch = batch[:, 0]
        if batch.ndim != 1:
            raise InputError(
                f"{where}: expected a 1-D batch of texts, got shape {list(batch.shape)}"
            )
        items = batch.tolist()
    elif isinstance(batch, list | tuple):
        items = list(batch)
    else:
        raise InputError(f"{where}: expected a batch of texts, got {type(batch).__name__}")
    if not items:
        raise InputError(f"{where}: empty batch (0 rows); send at least one text")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InputError(f"{where}: row {i} is {type(item).__name__}, not a text")
        if len(item) > MAX_TEXT_CHARS:
            raise InputError(
                f"{where}: row {i} has {len(item)} characters; the limit is {MAX_TEXT_CHARS}"
            )
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
