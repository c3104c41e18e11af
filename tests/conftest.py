"""Shared fixtures: real models built once per test session from real data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cascade.catalog import ModelCard
from cascade.zoo import CompressionOptions, build_zoo, read_dataset

DIGITS_COMPRESSION = CompressionOptions(distill=True, quantize=("dynamic", "static"), prune=0.8)


@pytest.fixture(scope="session")
def digits_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ModelCard]]:
    """The digits tiers plus every compression variant, built once (≈15 s on 2 cores)."""
    out = tmp_path_factory.mktemp("digits-zoo")
    cards = build_zoo(read_dataset("digits"), out, compression=DIGITS_COMPRESSION, progress=False)
    return out, cards


@pytest.fixture
def policy_dir(digits_zoo: tuple[Path, list[ModelCard]], tmp_path: Path) -> Path:
    """A private copy of the digits tiers (and cards), so calibration may write beside them."""
    for path in digits_zoo[0].iterdir():
        if path.name.startswith(("tiny", "small", "large")):
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


@pytest.fixture(scope="session")
def digits_policy_models() -> Path:
    """``policies/models/digits``, built if missing, as `cascade serve` builds it before it
    starts a host (a host never builds models)."""
    from cascade.evaluate import ensure_models
    from cascade.policy import read_policy

    policy = Path(__file__).resolve().parents[1] / "policies" / "digits.yaml"
    ensure_models(read_policy(policy), progress=False)
    return policy.parent / "models" / "digits"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's files, fetched once into the cache; skips where that cannot be done."""
    from cascade.errors import BuildError
    from cascade.text import fetch_minilm

    try:
        return fetch_minilm()
    except BuildError as exc:
        pytest.skip(f"all-MiniLM-L6-v2 is not cached and cannot be downloaded: {exc}")
