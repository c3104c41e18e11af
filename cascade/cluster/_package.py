"""A policy package: policy files and exactly the model files they read, in one zip.

A Serve config's ``runtime_env.working_dir`` may name such a zip (``file://`` on a shared
filesystem, or ``s3://``, ``gs://``, ``https://`` after an upload): every replica, on every
node, then finds the policies and their models at the same relative paths. The package is
checked before it is handed out: each policy loads from a fresh extraction of it.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cascade.catalog import companions
from cascade.errors import PolicyError
from cascade.policy import ComplexityRouting, PolicyFile, read_policy

__all__ = ["PACKAGE_TOP", "PolicyPackage", "build_package"]

PACKAGE_TOP = "cascade-app"  # Ray strips a zip's single top-level folder


@dataclass(frozen=True)
class PolicyPackage:
    """What :func:`build_package` wrote: the zip, the policies' paths inside it, its files."""

    path: Path
    policies: list[str]
    files: list[str]
    size_bytes: int


def _path(loaded: PolicyFile) -> Path:
    assert loaded.path is not None  # loaded from a file
    return loaded.path


def _files(loaded: PolicyFile) -> Iterator[Path]:
    yield _path(loaded)
    for name, tier in loaded.policy.tiers.items():
        if not tier.is_remote:
            yield from companions(loaded.model_path(name))
    routing = loaded.policy.routing
    if isinstance(routing, ComplexityRouting) and routing.scorer.model is not None:
        yield from companions((loaded.base_dir / routing.scorer.model).resolve())
    for step in getattr(routing, "chain", []):
        if step.deferral is not None and step.deferral.model is not None:
            yield from companions((loaded.base_dir / step.deferral.model).resolve())


def build_package(
    policies: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
) -> PolicyPackage:
    """Zip ``policies`` with the files they read into ``out``; paths relative to their folder.

    Policies of bundled datasets whose models are missing get them built first. Every file
    must lie under the policies' common folder (a package is self-contained).

    Example::

        package = build_package(["policies/digits.yaml"], "cascade-app.zip")
        package.policies  # ['digits.yaml']
    """
    from cascade.evaluate import ensure_models

    loaded = [read_policy(p) for p in policies]
    for item in loaded:
        ensure_models(item, progress=False)
    root = Path(os.path.commonpath([_path(item).resolve().parent for item in loaded]))
    files: dict[str, Path] = {}
    for item in loaded:
        for file in _files(item):
            resolved = file.resolve()
            if not resolved.is_relative_to(root):
                raise PolicyError(
                    f"{_path(item)}: {file} lies outside {root}, the policies' common folder; "
                    "a package holds only files under it"
                )
            files[resolved.relative_to(root).as_posix()] = resolved
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.write(files[name], f"{PACKAGE_TOP}/{name}")
    inside = [_path(item).resolve().relative_to(root).as_posix() for item in loaded]
    _check(target, inside)
    return PolicyPackage(target, inside, sorted(files), target.stat().st_size)


def _check(package: Path, policies: list[str]) -> None:
    """Every policy must load, model files included, from the package alone."""
    with tempfile.TemporaryDirectory(prefix="cascade-package-") as tmp:
        with zipfile.ZipFile(package) as archive:
            archive.extractall(tmp)
        for policy in policies:
            try:
                read_policy(Path(tmp) / PACKAGE_TOP / policy)
            except PolicyError as exc:
                raise PolicyError(f"{package}: the package is incomplete: {exc}") from exc
