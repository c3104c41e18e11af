"""Which labelled rows an evaluation or calibration runs on, and how to say which."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cascade.errors import PolicyError
from cascade.policy import PolicyFile

__all__ = ["LabelledRows", "SplitName", "labelled_rows", "labelled_split", "model_classes"]

SplitName = Literal["train", "calibration", "test"]


@dataclass(frozen=True, eq=False)
class LabelledRows:
    """Rows ``X``, class indices ``y`` and where they come from.

    ``source`` is the file as given (``--data``) or the bundled dataset's name; ``split`` is
    the part of it these rows are, ``None`` when they are all of it; ``total`` counts the
    rows of the whole source.

    Example::

        >>> rows = labelled_rows(loaded, split=None, data=Path("held_out.csv"),
        ...                      label_column="label")
        >>> rows.description
        'held_out.csv (all 3,080 rows)'
    """

    X: np.ndarray
    y: np.ndarray
    source: str
    split: SplitName | None
    total: int

    @property
    def label(self) -> str:
        """Short name: ``digits/test``, or the file alone when read whole."""
        return self.source if self.split is None else f"{self.source}/{self.split}"

    @property
    def rows(self) -> str:
        """Which rows, in words: ``all 3,080 rows`` or ``test split, 616 of 3,080 rows``."""
        if self.split is None:
            return f"all {self.total:,} rows"
        return f"{self.split} split, {len(self.y):,} of {self.total:,} rows"

    @property
    def description(self) -> str:
        """Source and rows: ``held_out.csv (test split, 616 of 3,080 rows)``."""
        return f"{self.source} ({self.rows})"

    def to_dict(self) -> dict[str, Any]:
        """``data``, ``split`` (``all`` when whole), ``rows`` scored and ``data_rows`` in all."""
        return {"data": self.source, "split": self.split or "all", "rows": len(self.y),
                "data_rows": self.total}  # fmt: skip


def model_classes(loaded: PolicyFile) -> tuple[str, ...] | None:
    """The class order of the policy's models (their cards' ``classes``), or ``None``
    when no local tier has a card. Labels of a user's table are encoded into this order,
    so that they line up with the probability columns the tiers answer.

    Example::

        >>> model_classes(read_policy("policies/digits.yaml"))[:3]
        ('0', '1', '2')
    """
    from cascade.catalog import read_card

    found: dict[str, tuple[str, ...]] = {}
    for name, tier in loaded.policy.tiers.items():
        if tier.is_remote:
            continue
        path = loaded.model_path(name)
        card = read_card(path) if path.is_file() else None
        if card is not None:
            found[name] = tuple(card.classes)
    orders = set(found.values())
    if len(orders) > 1:
        listed = "; ".join(
            f"{name}: {len(c)} classes {', '.join(c[:5])}{', ...' if len(c) > 5 else ''}"
            for name, c in found.items()
        )
        raise PolicyError(
            f"{loaded.path or loaded.policy.name}: the tiers' model cards disagree on the "
            f"classes ({listed}); their answers cannot be scored against one label column"
        )
    return orders.pop() if orders else None


def labelled_rows(
    loaded: PolicyFile,
    *,
    split: SplitName | None,
    data: Path | None = None,
    label_column: str | None = None,
    text_column: str | None = None,
) -> LabelledRows:
    """Labelled rows from ``--data FILE`` or the policy's bundled dataset, and which they are.

    With ``split`` a user's table is split exactly as `cascade models build --data` splits
    it (seeded, stratified 60/20/20), so its calibration and test rows are the ones tiers
    built from that file never saw; with ``split=None`` every row of the file is returned,
    unsplit (a held-out file). Labels of a file are encoded into the models' class order
    (:func:`model_classes`), identically in both cases. The bundled dataset is always read by
    split.

    Example::

        >>> rows = labelled_rows(loaded, split="test")
        >>> rows.description
        'digits (test split, 360 of 1,797 rows)'
    """
    from cascade.zoo.datasets import read_dataset, read_table, read_table_rows

    if data is not None:
        if label_column is None:
            raise PolicyError("--data needs --label-column COL")
        classes = model_classes(loaded)
        if split is None:
            table = read_table_rows(
                data, label_column=label_column, text_column=text_column, classes=classes
            )
            X, y = table.rows.X, table.rows.y
            return LabelledRows(np.asarray(X), np.asarray(y), str(data), None, len(y))
        dataset = read_table(
            data, label_column=label_column, text_column=text_column, classes=classes
        )
        source = str(data)
    elif loaded.policy.dataset is not None:
        if split is None:
            raise PolicyError(
                f"{loaded.path or loaded.policy.name}: the bundled dataset "
                f"{loaded.policy.dataset!r} is read by split (train, calibration or test)"
            )
        dataset = read_dataset(loaded.policy.dataset)
        source = dataset.name
    else:
        raise PolicyError(
            f"{loaded.path or loaded.policy.name}: the policy names no `dataset`; "
            "give labelled data with --data FILE --label-column COL"
        )
    part = getattr(dataset, split)
    total = sum(dataset.split_sizes().values())
    return LabelledRows(np.asarray(part.X), np.asarray(part.y), source, split, total)


def labelled_split(
    loaded: PolicyFile,
    *,
    split: SplitName | None,
    data: Path | None = None,
    label_column: str | None = None,
    text_column: str | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows, labels and a short label (``digits/calibration``): :func:`labelled_rows` as a
    tuple; ``split=None`` reads all of ``data``.

    Example::

        >>> X, y, label = labelled_split(loaded, split="calibration")
        >>> label, len(y)
        ('digits/calibration', 359)
    """
    rows = labelled_rows(
        loaded, split=split, data=data, label_column=label_column, text_column=text_column
    )
    return rows.X, rows.y, rows.label
