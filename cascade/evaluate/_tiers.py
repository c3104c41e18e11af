"""What evaluation needs to know about a policy's tiers: files, cards, costs, latencies.

Costs and latency estimates come from the model cards beside the ONNX files (``tiny.onnx`` →
``tiny.card.json``) unless the policy sets them. A policy that names a bundled ``dataset``
gets its missing model files built on first use.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from cascade.errors import PolicyError
from cascade.policy import LoadedPolicy
from cascade.zoo.cards import CARD_SUFFIX, ModelCard, sha256_of

__all__ = [
    "HOP_MS",
    "ModelDriftWarning",
    "TierInfo",
    "card_path",
    "check_provenance",
    "ensure_models",
    "resolve_tiers",
]

HOP_MS = 2.0
"""Added to a deployment tier's latency estimate: one extra Ray Serve hop, measured ≈2 ms."""


class ModelDriftWarning(UserWarning):
    """A model file differs from the build the policy's thresholds were calibrated on."""


@dataclass(frozen=True)
class TierInfo:
    """A tier as evaluation sees it."""

    name: str
    path: Path
    card: ModelCard | None
    cost: float
    latency_ms: float


def card_path(model: Path) -> Path:
    return model.with_name(model.name.removesuffix(".onnx") + CARD_SUFFIX)


def _read_card(model: Path) -> ModelCard | None:
    path = card_path(model)
    if not path.is_file():
        return None
    return ModelCard.model_validate_json(path.read_text())


def _ensure_ranking(
    loaded: LoadedPolicy, missing: dict[str, Path], out: Path, *, progress: bool
) -> list[Path]:
    from cascade.ranking.ltr import build_ltr
    from cascade.ranking.movielens import DEFAULT_MOVIELENS_PATH, build_movielens

    if loaded.policy.dataset == "ltr":
        build_ltr(out, progress=progress)
    else:  # MovieLens's terms forbid bundling it: read from the default path, or say how
        build_movielens(DEFAULT_MOVIELENS_PATH, out, progress=progress)
    still = [str(p) for p in missing.values() if not p.is_file()]
    if still:
        raise PolicyError(
            f"{loaded.path}: building {loaded.policy.dataset} did not produce {still}"
        )
    return list(missing.values())


def _read_scorer_card(model: Path) -> tuple[float, float] | None:
    """``(relative cost, p50 latency ms)`` from a ranking scorer's card, if it has one."""
    from cascade.ranking.export import SCORER_CARD_SUFFIX, ScorerCard

    path = model.with_name(model.name.removesuffix(".onnx") + SCORER_CARD_SUFFIX)
    if not path.is_file():
        return None
    card = ScorerCard.model_validate_json(path.read_text())
    return (card.relative_cost or 1.0), card.latency.p50_us / 1000.0


def ensure_models(loaded: LoadedPolicy, *, progress: bool = True) -> list[Path]:
    """Build the missing model files of a policy that names a bundled dataset.

    Returns the files built (empty when all were there). Tiers are built where the policy
    expects them; the student variants are built only when the policy refers to one.
    """
    from cascade.zoo.build import CompressionOptions, build_zoo
    from cascade.zoo.datasets import available_datasets, load_dataset

    policy = loaded.policy
    local = {name: loaded.model_path(name) for name, t in policy.tiers.items() if not t.is_remote}
    missing = {name: path for name, path in local.items() if not path.is_file()}
    if not missing:
        return []
    if policy.dataset is None or policy.dataset not in (*available_datasets(), "ltr", "movielens"):
        first = next(iter(missing))
        raise PolicyError(
            f"{loaded.path or policy.name}: tiers.{first}.model: no such file {missing[first]} "
            "(the policy names no bundled dataset to build it from)"
        )
    directories = {path.parent for path in missing.values()}
    if len(directories) != 1:
        raise PolicyError(
            f"{loaded.path}: missing model files are in several folders {sorted(directories)}; "
            "build them with `cascade models build DATASET --out DIR`"
        )
    if policy.dataset in ("ltr", "movielens"):  # ranking scorers, not classifier tiers
        return _ensure_ranking(loaded, missing, directories.pop(), progress=progress)
    stems = {path.name.removesuffix(".onnx") for path in local.values()}
    options = CompressionOptions(
        distill=any(s.startswith("student") for s in stems),
        quantize=(
            *(("dynamic",) if any(s.endswith(".int8") for s in stems) else ()),
            *(("static",) if any(s.endswith(".int8-static") for s in stems) else ()),
        ),
        prune=0.8 if any(s.endswith(".pruned") for s in stems) else None,
    )
    out = directories.pop()
    dataset = load_dataset(policy.dataset)
    if dataset.kind == "text":  # text tiers build one by one: only the missing ones
        from cascade.text.build import build_text_zoo

        wanted = [p.name.removesuffix(".onnx") for p in missing.values()]
        build_text_zoo(dataset, out, progress=progress, tiers=tuple(wanted))
    else:
        build_zoo(dataset, out, compression=options, progress=progress)
    still = [str(p) for p in missing.values() if not p.is_file()]
    if still:
        raise PolicyError(f"{loaded.path}: building {policy.dataset} did not produce {still}")
    return list(missing.values())


REMOTE_LATENCY_MS = 10.0
"""Initial latency estimate of a remote tier without ``latency_ms:``: a LAN round trip plus
the remote's own inference; the engine's moving average corrects it from the first call."""


def resolve_tiers(loaded: LoadedPolicy, *, remote: bool = False) -> dict[str, TierInfo]:
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
        card = _read_card(path)
        cost = tier.cost if tier.cost is not None else (card.relative_cost if card else None)
        scorer = _read_scorer_card(path) if card is None else None
        if scorer is not None:  # a ranking stage's scorer: its card has cost and latency
            cost = tier.cost if tier.cost is not None else scorer[0]
        if cost is None:
            raise PolicyError(
                f"tiers.{name}: no cost: set `cost:` in the policy or put a model card "
                f"({card_path(path).name}) beside {path.name}"
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


def check_provenance(loaded: LoadedPolicy, tiers: dict[str, TierInfo]) -> list[str]:
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
