"""Model zoo: real datasets → trained, compressed tiers → ONNX files + model cards.

Names load on first use: a serving process reads model cards without importing
scikit-learn, pandas and skl2onnx (about 140 MB of RSS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cascade._lazy import lazy_exports

if TYPE_CHECKING:
    from cascade.zoo.build import CompressionOptions, build_zoo
    from cascade.zoo.cards import ModelCard, format_cards, read_cards
    from cascade.zoo.datasets import Dataset, Split, available_datasets, load_dataset, load_table

_LAZY = {
    "CompressionOptions": "cascade.zoo.build",
    "build_zoo": "cascade.zoo.build",
    "ModelCard": "cascade.zoo.cards",
    "format_cards": "cascade.zoo.cards",
    "read_cards": "cascade.zoo.cards",
    "Dataset": "cascade.zoo.datasets",
    "Split": "cascade.zoo.datasets",
    "available_datasets": "cascade.zoo.datasets",
    "load_dataset": "cascade.zoo.datasets",
    "load_table": "cascade.zoo.datasets",
}

__all__ = [
    "CompressionOptions",
    "Dataset",
    "ModelCard",
    "Split",
    "available_datasets",
    "build_zoo",
    "format_cards",
    "load_dataset",
    "load_table",
    "read_cards",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
