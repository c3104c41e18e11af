"""cascade: serve tiny/small/large model cascades, routed by a policy file.

Everything users need is importable from here. The model zoo (scikit-learn, pandas,
skl2onnx) loads on first use, so ``import cascade`` stays light for serving processes.

Example::

    import cascade

    cards = cascade.build_zoo(cascade.load_dataset("digits"), "models/digits")
    model = cascade.OnnxModel("models/digits/tiny.onnx")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cascade._lazy import lazy_exports
from cascade.backends import FakeModel, InputSpec, Model, OnnxModel, ProviderFallbackWarning
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

if TYPE_CHECKING:
    from cascade.evaluate import EvalRow, Evaluator, Target, calibrate_policy
    from cascade.policy import LoadedPolicy, Policy, load_policy, parse_policy
    from cascade.ranking import (
        Ranker,
        Ranking,
        build_ltr,
        build_movielens,
        evaluate_cascade,
        ltr_queries,
        movielens_queries,
        ndcg_at_k,
    )
    from cascade.routing import BatchResult, Decision, Engine
    from cascade.serving import HttpModel
    from cascade.zoo import (
        CompressionOptions,
        Dataset,
        ModelCard,
        Split,
        available_datasets,
        build_zoo,
        format_cards,
        load_dataset,
        load_table,
        read_cards,
    )

__version__ = "0.1.0"

_LAZY = {
    "BatchResult": "cascade.routing",
    "Decision": "cascade.routing",
    "Engine": "cascade.routing",
    "EvalRow": "cascade.evaluate",
    "Evaluator": "cascade.evaluate",
    "HttpModel": "cascade.serving",
    "LoadedPolicy": "cascade.policy",
    "Policy": "cascade.policy",
    "Target": "cascade.evaluate",
    "calibrate_policy": "cascade.evaluate",
    "load_policy": "cascade.policy",
    "parse_policy": "cascade.policy",
    "Ranker": "cascade.ranking",
    "Ranking": "cascade.ranking",
    "build_ltr": "cascade.ranking",
    "build_movielens": "cascade.ranking",
    "evaluate_cascade": "cascade.ranking",
    "ltr_queries": "cascade.ranking",
    "movielens_queries": "cascade.ranking",
    "ndcg_at_k": "cascade.ranking",
    "CompressionOptions": "cascade.zoo",
    "Dataset": "cascade.zoo",
    "ModelCard": "cascade.zoo",
    "Split": "cascade.zoo",
    "available_datasets": "cascade.zoo",
    "build_zoo": "cascade.zoo",
    "format_cards": "cascade.zoo",
    "load_dataset": "cascade.zoo",
    "load_table": "cascade.zoo",
    "read_cards": "cascade.zoo",
}

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
    "LoadedPolicy",
    "Model",
    "ModelCard",
    "ModelTimeout",
    "ModelUnavailable",
    "OnnxModel",
    "OverloadedError",
    "Policy",
    "PolicyError",
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
    "load_dataset",
    "load_policy",
    "load_table",
    "ltr_queries",
    "movielens_queries",
    "ndcg_at_k",
    "parse_policy",
    "read_cards",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
