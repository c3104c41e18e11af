"""Which labelled rows an evaluation or calibration runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from cascade.errors import PolicyError
from cascade.policy import LoadedPolicy

__all__ = ["SplitName", "labelled_split"]

SplitName = Literal["train", "calibration", "test"]


def labelled_split(
    loaded: LoadedPolicy,
    *,
    split: SplitName,
    data: Path | None = None,
    label_column: str | None = None,
    text_column: str | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows, labels and a description: from ``--data FILE`` or the policy's bundled dataset.

    A user's table is split exactly as `cascade models build --data` splits it (seeded,
    stratified 60/20/20), so calibration and test rows are the ones the tiers never saw.
    """
    from cascade.zoo.datasets import load_dataset, load_table

    if data is not None:
        if label_column is None:
            raise PolicyError("--data needs --label-column COL")
        dataset = load_table(data, label_column=label_column, text_column=text_column)
        label = str(data)
    elif loaded.policy.dataset is not None:
        dataset = load_dataset(loaded.policy.dataset)
        label = dataset.name
    else:
        raise PolicyError(
            f"{loaded.path or loaded.policy.name}: the policy names no `dataset`; "
            "give labelled data with --data FILE --label-column COL"
        )
    part = getattr(dataset, split)
    return np.asarray(part.X), np.asarray(part.y), f"{label}/{split}"
