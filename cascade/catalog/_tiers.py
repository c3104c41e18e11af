"""A policy's tiers as both wings see them: files, cards, costs, latency estimates.

Costs and latency estimates come from the model cards beside the ONNX files (``tiny.onnx`` →
``tiny.card.json``; a ranking stage's ``coarse.scorer.json``) unless the policy sets them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from cascade._files import CARD_SUFFIX, SCORER_CARD_SUFFIX, beside
from cascade.catalog._cards import ModelCard, ScorerCard, sha256_of
from cascade.errors import PolicyError
from cascade.policy import PolicyFile

__all__ = [
    "HOP_MS",
    "REMOTE_LATENCY_MS",
    "ModelDriftWarning",
    "TierInfo",
    "check_provenance",
    "read_card",
    "require_model_files",
    "resolve_tiers",
]

HOP_MS = 2.0
"""Added to a deployment tier's latency estimate: one extra Ray Serve hop, measured ≈2 ms."""


class ModelDriftWarning(UserWarning):
    """A model file differs from the build the policy's thresholds were calibrated on."""


@dataclass(frozen=True)
class TierInfo:
    """A tier as evaluation and serving see it: its file, card, cost and latency estimate."""

    name: str
    path: Path
    card: ModelCard | None
    cost: float
    latency_ms: float


def require_model_files(loaded: PolicyFile) -> None:
    """Raise ``PolicyError`` when a local tier's model file is missing, saying how to build it.

    A policy naming a bundled ``dataset`` loads without its model files (the command line
    builds them on first use); a server refuses it until they are there.
    """
    policy = loaded.policy
    missing = {
        name: path
        for name in policy.tiers
        if not policy.tiers[name].is_remote and not (path := loaded.model_path(name)).is_file()
    }
    if not missing:
        return
    where = loaded.path or policy.name
    listed = "; ".join(f"tiers.{name}.model: no such file {path}" for name, path in missing.items())
    if policy.dataset is not None:
        out = next(iter(missing.values())).parent
        hint = (
            f"build them with `cascade models build {policy.dataset} --out {out}`, or let "
            "`cascade serve` build them first"
        )
    else:
        hint = "the policy names no bundled dataset to build them from"
    raise PolicyError(f"{where}: {listed} ({hint})")


def read_card(model: Path) -> ModelCard | None:
    """The model card beside ``model``, or ``None`` when it has none."""
    path = beside(model, CARD_SUFFIX)
    if not path.is_file():
        return None
    return ModelCard.model_validate_json(path.read_text())


def _read_scorer_card(model: Path) -> tuple[float, float] | None:
    """``(relative cost, p50 latency ms)`` from a ranking scorer's card, if it has one."""
    path = beside(model, SCORER_CARD_SUFFIX)
    if not path.is_file():
        return None
    card = ScorerCard.model_validate_json(path.read_text())
    return (card.relative_cost or 1.0), card.latency.p50_us / 1000.0


REMOTE_LATENCY_MS = 10.0
"""Initial latency estimate of a remote tier without ``latency_ms:``: a LAN round trip plus
the remote's own inference; the engine's moving average corrects it from the first call."""


def resolve_tiers(loaded: PolicyFile, *, remote: bool = False) -> dict[str, TierInfo]:
    """Cost and latency estimate of every tier (policy values first, then cards).

    Offline evaluation runs local ONNX files only; serving passes ``remote=True`` to accept
    tiers that are endpoint URLs: they have no card, so their ``cost:`` is required, and
    their ``path`` is the policy's folder (they have no file).
    """
    tiers: dict[str, TierInfo] = {}
    for name, tier in loaded.policy.tiers.items():
        if tier.is_remote:
            if not remote:
                raise PolicyError(
                    f"tiers.{name}: remote tier {tier.model} cannot be evaluated offline; "
                    "evaluate a policy whose tiers are ONNX files"
                )
            if tier.cost is None:
                raise PolicyError(
                    f"{loaded.path or loaded.policy.name}: tiers.{name}.cost: a remote tier "
                    f"({tier.model}) needs `cost:` (relative cost of one row, large tier = 1): "
                    "it has no model card to read it from"
                )
            latency = tier.latency_ms if tier.latency_ms is not None else REMOTE_LATENCY_MS
            tiers[name] = TierInfo(
                name=name, path=loaded.base_dir, card=None, cost=tier.cost, latency_ms=latency
            )
            continue
        path = loaded.model_path(name)
        card = read_card(path)
        cost = tier.cost if tier.cost is not None else (card.relative_cost if card else None)
        scorer = _read_scorer_card(path) if card is None else None
        if scorer is not None:  # a ranking stage's scorer: its card has cost and latency
            cost = tier.cost if tier.cost is not None else scorer[0]
        if cost is None:
            raise PolicyError(
                f"tiers.{name}: no cost: set `cost:` in the policy or put a model card "
                f"({beside(path, CARD_SUFFIX).name}) beside {path.name}"
            )
        if tier.latency_ms is not None:
            latency = tier.latency_ms
        elif card is not None:
            latency = card.latency.p50_us / 1000.0
        elif scorer is not None:
            latency = scorer[1]
        else:
            latency = 1.0
        if tier.placement == "deployment":
            latency += HOP_MS
        tiers[name] = TierInfo(name=name, path=path, card=card, cost=cost, latency_ms=latency)
    return tiers


def check_provenance(loaded: PolicyFile, tiers: dict[str, TierInfo]) -> list[str]:
    """Warn (``ModelDriftWarning``) for each model file that differs from the calibrated one."""
    provenance = loaded.policy.provenance
    if provenance is None:
        return []
    drifted = []
    for name, digest in provenance.cards.items():
        info = tiers.get(name)
        if info is None or not info.path.is_file():
            continue
        actual = info.card.sha256 if info.card is not None else sha256_of(info.path)
        if actual != digest:
            drifted.append(name)
            warnings.warn(
                f"tiers.{name}: {info.path.name} differs from the build the thresholds were "
                f"calibrated on (sha256 {actual[:12]}… vs {digest[:12]}…); re-run "
                "`cascade calibrate`",
                ModelDriftWarning,
                stacklevel=2,
            )
    return drifted
