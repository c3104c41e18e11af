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
    └── OverloadedError                         the service sheds load (HTTP 503)

Lower-library errors (onnxruntime, skl2onnx, httpx, Ray) are translated where they cross into
cascade and re-raised ``from`` the original, so the cause stays visible.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BuildError",
    "CascadeError",
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


class OverloadedError(CascadeError):
    """Even the cheapest path cannot answer in time; the caller should retry later."""

    def __init__(self, message: str, *, queued: int, limit: int) -> None:
        super().__init__(message)
        self.queued = queued
        self.limit = limit
