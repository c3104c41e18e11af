"""Model cards: what each tier is, how accurate, how big and how costly, as measured here.

A card is a JSON file beside its model (``tiny.onnx`` → ``tiny.card.json``; a ranking stage's
``coarse.onnx`` → ``coarse.scorer.json``). Routing reads tier costs from cards, so cost numbers
are measured the same way for every tier: onnxruntime, one intra-op thread, after warm-up, on
rows of the dataset's test split. The workshop writes cards; both wings read them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cascade._files import CARD_SUFFIX, SCORER_CARD_SUFFIX
from cascade._table import table
from cascade.errors import CascadeError

__all__ = [
    "BATCH_SIZES",
    "COST_BATCH",
    "SCORER_COST_ROWS",
    "Fidelity",
    "Latency",
    "ModelCard",
    "ScorerCard",
    "format_cards",
    "read_cards",
    "read_scorer_cards",
    "sha256_of",
    "write_card",
]

BATCH_SIZES = (1, 32, 256)
COST_BATCH = 256
"""Relative cost compares per-row cost at this batch size, where per-call overhead is amortised
and the model's own compute shows; batch-1 ratios are kept beside it."""
SCORER_COST_ROWS = 1000
"""A ranking scorer's per-row cost is measured on batches of this many rows (a typical
candidate set)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latency(_Frozen):
    """Timings of one model, in microseconds."""

    threads: int = Field(description="onnxruntime intra-op threads used while measuring")
    p50_us: float = Field(description="single-row latency, median")
    p99_us: float = Field(description="single-row latency, 99th percentile")
    per_row_us: dict[int, float] = Field(
        description="per-row cost at each batch size: median call time / batch size"
    )


class Fidelity(_Frozen):
    """How closely the ONNX graph reproduces the model it was exported from."""

    reference: str = Field(description="what the ONNX output was compared with")
    max_abs_diff: float = Field(description="largest |p_onnx - p_reference| on the test split")
    tolerance: float = Field(description="the build fails above this")


class ModelCard(_Frozen):
    """Everything measured about one ONNX model of the zoo."""

    card_version: int = 1
    name: str = Field(description="file stem: tier plus variant, e.g. 'small' or 'student.int8'")
    tier: str = Field(description="tiny | small | large | student")
    variant: str | None = Field(None, description="compression variant, None for the base model")
    file: str = Field(description="ONNX file name, relative to the card")
    dataset: str
    dataset_source: str
    seed: int = Field(description="seed of the splits and of training")
    split_sizes: dict[str, int]
    n_features: int
    input_name: str
    classes: list[str] = Field(description="class labels, in probability-column order")
    accuracy: dict[str, float] = Field(description="accuracy of the ONNX model per split")
    size_bytes: int
    sha256: str
    latency: Latency
    relative_cost: float | None = Field(
        default=None, description=f"per-row cost at batch {COST_BATCH} relative to the large tier"
    )
    relative_cost_by_batch: dict[int, float] = Field(default_factory=dict)
    fidelity: Fidelity | None = None
    build: dict[str, Any] = Field(description="family, parameters, library versions, timing")
    compression: dict[str, Any] | None = Field(
        None, description="how this variant was made from which model, and how it compares"
    )

    @property
    def cost_us(self) -> float:
        """Per-row cost at the reference batch size, in microseconds."""
        return self.latency.per_row_us[COST_BATCH]


class ScorerCard(_Frozen):
    """What one ranking stage's ONNX scorer is, how faithful and how costly, as measured."""

    card_version: int = 1
    name: str = Field(description="file stem, e.g. 'coarse'")
    stage: Literal["filter", "coarse", "fine"] = Field(description="filter | coarse | fine")
    file: str = Field(description="ONNX file name, relative to the card")
    dataset: str
    dataset_source: str
    seed: int = Field(description="seed of sampling and training")
    input_name: str = Field(description="the graph's one input, float32 [None, n_features]")
    output_name: str = Field(description="the graph's one output, float32 [None, 1]")
    n_features: int
    feature_names: list[str] = Field(description="every column of the input, in order")
    used_features: list[str] = Field(description="the columns this scorer reads")
    threshold: float | None = Field(
        None, description="filters only: a candidate is kept when its score >= threshold"
    )
    family: str = Field(description="estimator, e.g. 'LogisticRegression'")
    size_bytes: int
    sha256: str
    latency: Latency
    cost_us: float = Field(description=f"per-row cost at a batch of {SCORER_COST_ROWS} rows, µs")
    relative_cost: float | None = Field(None, description="cost_us over the fine scorer's")
    fidelity: Fidelity
    build: dict[str, Any] = Field(description="parameters, training rows, timing, versions")


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_card(card: ModelCard, directory: Path) -> Path:
    """Write ``card`` as ``{name}.card.json`` in ``directory`` and return the path."""
    path = directory / f"{card.name}{CARD_SUFFIX}"
    path.write_text(card.model_dump_json(indent=2) + "\n")
    return path


def _order(card: ModelCard) -> tuple[int, str]:
    tiers = ("tiny", "small", "large", "student")
    rank = tiers.index(card.tier) if card.tier in tiers else len(tiers)
    return (rank, card.name)


def read_cards(directory: str | Path) -> list[ModelCard]:
    """Read every ``*.card.json`` in ``directory``, base tiers first.

    Example::

        cards = read_cards("models/digits")
        print(format_cards(cards))
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CascadeError(f"{directory}: no such directory")
    paths = sorted(directory.glob(f"*{CARD_SUFFIX}"))
    if not paths:
        raise CascadeError(
            f"{directory}: no model cards (*{CARD_SUFFIX}); build some with `cascade models build`"
        )
    cards = []
    for path in paths:
        try:
            cards.append(ModelCard.model_validate_json(path.read_text()))
        except ValidationError as exc:
            raise CascadeError(f"{path}: not a valid model card: {exc}") from exc
    return sorted(cards, key=_order)


def read_scorer_cards(directory: str | os.PathLike[str]) -> dict[str, ScorerCard]:
    """Read the ``{stage}.scorer.json`` cards of a built ranking cascade, by stage.

    Example::

        costs = {s: c.cost_us for s, c in read_scorer_cards("models/ltr").items()}
    """
    directory = Path(directory)
    paths = sorted(directory.glob(f"*{SCORER_CARD_SUFFIX}"))
    if not paths:
        raise CascadeError(
            f"{directory}: no scorer cards (*{SCORER_CARD_SUFFIX}); build them with "
            "cascade.ranking.build_movielens or build_ltr"
        )
    cards: dict[str, ScorerCard] = {}
    for path in paths:
        try:
            card = ScorerCard.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise CascadeError(f"{path}: not a valid scorer card: {exc}") from exc
        cards[card.stage] = card
    return cards


def _size(n_bytes: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes = n_bytes / 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def format_cards(cards: Sequence[ModelCard]) -> str:
    """A plain-text table of the cards: accuracy, size, latency, relative cost, fidelity."""
    if not cards:
        return "(no models)"
    first = cards[0]
    title = (
        f"dataset {first.dataset} — splits "
        + " / ".join(f"{k} {v}" for k, v in first.split_sizes.items())
        + f" — {first.n_features} features, {len(first.classes)} classes"
    )
    header = [
        "model",
        "test acc",
        "cal acc",
        "size",
        "p50 1-row",
        "p99 1-row",
        *[f"µs/row @{b}" for b in BATCH_SIZES],
        "rel cost",
        "fidelity",
    ]
    rows = []
    for card in cards:
        per_row = card.latency.per_row_us
        rows.append(
            [
                card.name,
                f"{card.accuracy['test']:.4f}",
                f"{card.accuracy['calibration']:.4f}",
                _size(card.size_bytes),
                f"{card.latency.p50_us:.1f} µs",
                f"{card.latency.p99_us:.1f} µs",
                *[f"{per_row[b]:.2f}" if b in per_row else "-" for b in BATCH_SIZES],
                f"{card.relative_cost:.3f}" if card.relative_cost is not None else "-",
                f"{card.fidelity.max_abs_diff:.1e}" if card.fidelity else "-",
            ]
        )
    return title + "\n" + table(header, rows)
