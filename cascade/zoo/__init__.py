"""Model zoo: real datasets → trained, compressed tiers → ONNX files + model cards.

The workshop: it imports scikit-learn, pandas and skl2onnx. The request path never imports
it; model cards, which both read, are in :mod:`cascade.catalog`.
"""

from __future__ import annotations

from cascade.zoo.build import CompressionOptions, build_zoo
from cascade.zoo.datasets import (
    Dataset,
    LabelledTable,
    Split,
    available_datasets,
    read_dataset,
    read_table,
    read_table_rows,
)

__all__ = [
    "CompressionOptions",
    "Dataset",
    "LabelledTable",
    "Split",
    "available_datasets",
    "build_zoo",
    "read_dataset",
    "read_table",
    "read_table_rows",
]
