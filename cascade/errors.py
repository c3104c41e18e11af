"""Errors raised by cascade.

All of them derive from one root, so ``except CascadeError`` catches everything we raise::

    CascadeError
    ├── PolicyError          (also ValueError)  a policy file is invalid
    ├── DatasetError         (also ValueError)  unknown dataset, malformed data file
    ├── InputError           (also ValueError)  a request's input does not fit the model
    ├── BuildError                              building a tier failed
    │   └── FidelityError                       ONNX disagrees with scikit-learn
    ├── BackendError                            a model could not answer
    │   ├── ModelTimeout
    │   └── ModelUnavailable
    │       └── CircuitOpen                     a circuit breaker refuses calls to a tier
    └── OverloadedError                         the service sheds load (HTTP 503)

Lower-library errors (onnxruntime, skl2onnx, httpx, Ray) are translated where they cross into
cascade and re-raised ``from`` the original, so the cause stays visible.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = [
    "BackendError",
    "BuildError",
    "CascadeError",
    "CircuitOpen",
    "DatasetError",
    "FidelityError",
    "InputError",
    "ModelTimeout",
    "ModelUnavailable",
    "OverloadedError",
    "PolicyError",
]


class CascadeError(Exception):
    """Root of every error cascade raises."""


class PolicyError(CascadeError, ValueError):
    """A policy file is invalid; the message names file, field, problem and what is allowed."""


class DatasetError(CascadeError, ValueError):
    """An unknown dataset name, or a data file that cannot be used (names file and column)."""


class InputError(CascadeError, ValueError):
    """A request's input does not fit the model: wrong rank, width, dtype, non-finite or empty."""


class BuildError(CascadeError):
    """Building, converting or checking a tier failed."""


class FidelityError(BuildError):
    """The ONNX export disagrees with the scikit-learn model beyond the allowed tolerance."""


class BackendError(CascadeError):
    """A model backend failed to answer."""


class ModelTimeout(BackendError):
    """A model did not answer within its deadline."""


class ModelUnavailable(BackendError):
    """A model cannot be loaded or reached."""


class CircuitOpen(ModelUnavailable):
    """A tier's circuit breaker refuses calls after consecutive failures; fail fast, retry later.

    ``retry_after_s`` is the time until the breaker lets a probe call through (0 while a
    probe is already in flight).
    """

    def __init__(self, message: str, *, tier: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.tier = tier
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles exceptions between processes; the keyword-only fields must survive it.
        rebuild = functools.partial(type(self), tier=self.tier, retry_after_s=self.retry_after_s)
        return rebuild, self.args


class OverloadedError(CascadeError):
    """The request cannot be answered within its deadline now (the service sheds it, 503).

    ``retry_after_s``: when the work ahead of it will have drained, as far as the estimate
    goes (the Retry-After the client gets).
    """

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild = functools.partial(type(self), retry_after_s=self.retry_after_s)
        return rebuild, self.args
