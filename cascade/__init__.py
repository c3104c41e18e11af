"""cascade: serve tiny/small/large model cascades, routed by a policy file.

Everything users need is importable from here. The request path (policies, model cards,
backends, routing) loads with the package; the workshop (the model zoo, evaluation and
ranking builders: scikit-learn, pandas, skl2onnx) loads on first use of one of its names, so
``import cascade`` stays light for serving processes.

Example::

    import cascade

    cards = cascade.build_zoo(cascade.read_dataset("digits"), "models/digits")
    model = cascade.OnnxModel("models/digits/tiny.onnx")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cascade.backends import (
    FakeModel,
    HttpModel,
    InputSpec,
    Model,
    OnnxModel,
    ProviderFallbackWarning,
)
from cascade.catalog import ModelCard, format_cards, read_cards
from cascade.errors import (
    BackendError,
    BuildError,
    CascadeError,
    DatasetError,
    FidelityError,
    InputError,
    ModelTimeout,
    ModelUnavailable,
    OverloadedError,
    PolicyError,
)
from cascade.policy import Policy, PolicyFile, parse_policy, read_policy
from cascade.routing import BatchResult, Decision, Engine, Ranker, Ranking

if TYPE_CHECKING:
    from cascade.evaluate import EvalRow, Evaluator, Target, calibrate_policy
    from cascade.ranking import (
        build_ltr,
        build_movielens,
        evaluate_cascade,
        ltr_queries,
        movielens_queries,
        ndcg_at_k,
    )
    from cascade.zoo import (
        CompressionOptions,
        Dataset,
        Split,
        available_datasets,
        build_zoo,
        read_dataset,
        read_table,
    )

__version__ = "0.1.0"

_WORKSHOP = {
    "EvalRow": "cascade.evaluate",
    "Evaluator": "cascade.evaluate",
    "Target": "cascade.evaluate",
    "calibrate_policy": "cascade.evaluate",
    "build_ltr": "cascade.ranking",
    "build_movielens": "cascade.ranking",
    "evaluate_cascade": "cascade.ranking",
    "ltr_queries": "cascade.ranking",
    "movielens_queries": "cascade.ranking",
    "ndcg_at_k": "cascade.ranking",
    "CompressionOptions": "cascade.zoo",
    "Dataset": "cascade.zoo",
    "Split": "cascade.zoo",
    "available_datasets": "cascade.zoo",
    "build_zoo": "cascade.zoo",
    "read_dataset": "cascade.zoo",
    "read_table": "cascade.zoo",
}
"""Workshop names, imported on first use (PEP 562): a serving process never pays for them."""

__all__ = [
    "BackendError",
    "BatchResult",
    "BuildError",
    "CascadeError",
    "CompressionOptions",
    "Dataset",
    "DatasetError",
    "Decision",
    "Engine",
    "EvalRow",
    "Evaluator",
    "FakeModel",
    "FidelityError",
    "HttpModel",
    "InputError",
    "InputSpec",
    "Model",
    "ModelCard",
    "ModelTimeout",
    "ModelUnavailable",
    "OnnxModel",
    "OverloadedError",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "ProviderFallbackWarning",
    "Ranker",
    "Ranking",
    "Split",
    "Target",
    "__version__",
    "available_datasets",
    "build_ltr",
    "build_movielens",
    "build_zoo",
    "calibrate_policy",
    "evaluate_cascade",
    "format_cards",
    "ltr_queries",
    "movielens_queries",
    "ndcg_at_k",
    "parse_policy",
    "read_cards",
    "read_dataset",
    "read_policy",
    "read_table",
]


def __getattr__(name: str) -> Any:
    module = _WORKSHOP.get(name)
    if module is None:
        raise AttributeError(f"module 'cascade' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup finds it directly
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
