"""Tier backends: the Model protocol and its implementations."""

from cascade.backends._base import InputSpec, Model, validate_batch
from cascade.backends.fake import FakeModel
from cascade.backends.onnx import GraphOptimization, OnnxModel, ProviderFallbackWarning

__all__ = [
    "FakeModel",
    "GraphOptimization",
    "InputSpec",
    "Model",
    "OnnxModel",
    "ProviderFallbackWarning",
    "validate_batch",
]
