"""Building a policy's missing model files on first use: a convenience of the command line.

A policy that names a bundled ``dataset`` may ship without its model files; the commands that
need them (``cascade serve``, ``evaluate``, ``calibrate``, ``plan``, ``config --package``) build
them first. The servers never do: a host given a policy whose files are missing refuses it.
"""

from __future__ import annotations

from pathlib import Path

from cascade.errors import PolicyError
from cascade.policy import RANKING_DATASETS, PolicyFile
from cascade.ranking.ltr import build_ltr
from cascade.ranking.movielens import DEFAULT_MOVIELENS_PATH, build_movielens
from cascade.text.build import build_text_zoo
from cascade.zoo.build import CompressionOptions, build_zoo
from cascade.zoo.datasets import available_datasets, read_dataset

__all__ = ["ensure_models"]


def _ensure_ranking(
    loaded: PolicyFile, missing: dict[str, Path], out: Path, *, progress: bool
) -> list[Path]:
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


def ensure_models(loaded: PolicyFile, *, progress: bool = True) -> list[Path]:
    """Build the missing model files of a policy that names a bundled dataset.

    Returns the files built (empty when all were there). Tiers are built where the policy
    expects them; the student variants are built only when the policy refers to one.
    """
    policy = loaded.policy
    local = {name: loaded.model_path(name) for name, t in policy.tiers.items() if not t.is_remote}
    missing = {name: path for name, path in local.items() if not path.is_file()}
    if not missing:
        return []
    if policy.dataset is None or policy.dataset not in (*available_datasets(), *RANKING_DATASETS):
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
    if policy.dataset in RANKING_DATASETS:  # ranking scorers, not classifier tiers
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
    dataset = read_dataset(policy.dataset)
    if dataset.kind == "text":  # text tiers build one by one: only the missing ones
        wanted = [p.name.removesuffix(".onnx") for p in missing.values()]
        build_text_zoo(dataset, out, progress=progress, tiers=tuple(wanted))
    else:
        build_zoo(dataset, out, compression=options, progress=progress)
    still = [str(p) for p in missing.values() if not p.is_file()]
    if still:
        raise PolicyError(f"{loaded.path}: building {policy.dataset} did not produce {still}")
    return list(missing.values())
