"""Tier backends: the Model protocol and its implementations."""

from cascade.backends._base import MAX_TEXT_CHARS, InputSpec, Model, validate_batch, validate_texts
from cascade.backends._open import open_model
from cascade.backends.fake import FakeModel
from cascade.backends.onnx import GraphOptimization, OnnxModel, ProviderFallbackWarning

__all__ = [
    "MAX_TEXT_CHARS",
    "FakeModel",
    "GraphOptimization",
    "InputSpec",
    "Model",
    "OnnxModel",
    "ProviderFallbackWarning",
    "open_model",
    "validate_batch",
    "validate_texts",
]
