"""Tier backends: the Model protocol and every implementation that runs outside Ray.

- :class:`OnnxModel`: an ONNX graph over numbers, in this process (onnxruntime);
- :class:`TextModel`: texts featurized or tokenized as the model's sidecar says, then ONNX;
- :class:`HttpModel`: a remote Open Inference Protocol endpoint (split inference);
- :class:`FakeModel`: scripted answers for tests.

:func:`open_model` picks the local one a model file needs. A Ray Serve deployment tier is
reached through a handle, wrapped by the Ray host (``deployments/app.py``).
"""

from cascade.backends._base import (
    CALL_DEADLINE,
    CALL_TIMES,
    MAX_TEXT_CHARS,
    InputSpec,
    Model,
    validate_batch,
    validate_texts,
)
from cascade.backends._open import open_model
from cascade.backends._session import GraphOptimization, ProviderFallbackWarning
from cascade.backends.fake import FakeModel
from cascade.backends.onnx import OnnxModel
from cascade.backends.remote import HttpModel
from cascade.backends.text import TextModel

__all__ = [
    "CALL_DEADLINE",
    "CALL_TIMES",
    "MAX_TEXT_CHARS",
    "FakeModel",
    "GraphOptimization",
    "HttpModel",
    "InputSpec",
    "Model",
    "OnnxModel",
    "ProviderFallbackWarning",
    "TextModel",
    "open_model",
    "validate_batch",
    "validate_texts",
]
