"""Model zoo: real datasets → trained, compressed tiers → ONNX files + model cards."""

from cascade.zoo.build import CompressionOptions, build_zoo
from cascade.zoo.cards import ModelCard, format_cards, read_cards
from cascade.zoo.datasets import Dataset, Split, available_datasets, load_dataset, load_table

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
