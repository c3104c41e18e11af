"""What a tier is on disk: model cards, the files beside a model, a policy's tiers resolved.

The one room both wings read: the request path resolves a policy's tiers to files, costs and
latency estimates here; the workshop writes the cards. Nothing here trains, exports or
imports the training stack.

Example::

    from cascade.catalog import read_cards, resolve_tiers

    tiers = resolve_tiers(read_policy("policies/digits.yaml"))
    tiers["large"].cost, tiers["large"].latency_ms
"""

from __future__ import annotations

from cascade._files import (
    CARD_SUFFIX,
    SCORER_CARD_SUFFIX,
    TEXT_SIDECAR_SUFFIX,
    beside,
    companions,
)
from cascade.catalog._cards import (
    BATCH_SIZES,
    COST_BATCH,
    SCORER_COST_ROWS,
    Fidelity,
    Latency,
    ModelCard,
    ScorerCard,
    format_cards,
    read_cards,
    read_scorer_cards,
    sha256_of,
    write_card,
)
from cascade.catalog._tiers import (
    HOP_MS,
    REMOTE_LATENCY_MS,
    ModelDriftWarning,
    TierInfo,
    check_provenance,
    read_card,
    require_model_files,
    resolve_tiers,
)

__all__ = [
    "BATCH_SIZES",
    "CARD_SUFFIX",
    "COST_BATCH",
    "HOP_MS",
    "REMOTE_LATENCY_MS",
    "SCORER_CARD_SUFFIX",
    "SCORER_COST_ROWS",
    "TEXT_SIDECAR_SUFFIX",
    "Fidelity",
    "Latency",
    "ModelCard",
    "ModelDriftWarning",
    "ScorerCard",
    "TierInfo",
    "beside",
    "check_provenance",
    "companions",
    "format_cards",
    "read_card",
    "read_cards",
    "read_scorer_cards",
    "require_model_files",
    "resolve_tiers",
    "sha256_of",
    "write_card",
]
