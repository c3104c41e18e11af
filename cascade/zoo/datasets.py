"""Built-in datasets and user tables, split into train / calibration / test.

Built-in datasets (all bundled, no network):

- ``digits``: scikit-learn's 8x8 handwritten digits, 1,797 rows x 64 features, 10 classes.
- ``covertype``: a 92,962-row stratified subset of UCI Covertype, 54 features, 7 classes.
- ``clinc150``: CLINC150 intent queries ("full" variant), short texts, 150 intents + ``oos``.

Split rule for tabular data (digits, covertype and user tables from :func:`load_table`):
stratified 60% train / 20% calibration / 20% test, made by two calls of
:func:`sklearn.model_selection.train_test_split` with ``random_state=seed``: first 40% of the
rows are held out from train, then the held-out rows are halved into calibration and test.
The same seed always gives the same splits; every class has rows in every split.

CLINC150 keeps its own official splits instead (the seed is recorded but changes nothing):
train = ``train`` + ``oos_train``, calibration = ``val`` + ``oos_val``,
test = ``test`` + ``oos_test``.

All arrays are read-only, because loaded datasets are cached and shared; copy before editing.

Example::

    >>> ds = load_dataset("digits")
    >>> ds.split_sizes()
    {'train': 1078, 'calibration': 359, 'test': 360}
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from cascade.errors import DatasetError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DATASETS",
    "Dataset",
    "Split",
    "available_datasets",
    "load_dataset",
    "load_table",
]

_DATA_DIR = Path(__file__).with_name("data")


def _pandas() -> Any:
    """pandas, imported on first use: policy checks read dataset names, not tables, and a
    serving process should not pay pandas's memory for that."""
    import pandas

    return pandas


_COVERTYPE_FILE = _DATA_DIR / "covertype" / "covtype_ramp_subset.csv.gz"
_CLINC150_FILE = _DATA_DIR / "clinc150" / "data_full.json.gz"

_CALIBRATION_FRACTION = 0.2
_TEST_FRACTION = 0.2
# Stratifying 60/20/20 needs a couple of rows per class in each split; 5 guarantees at
# least one row per class in calibration and test and two or more in train.
_MIN_ROWS_PER_CLASS = 5
_MAX_LISTED_COLUMNS = 20
_TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


@dataclass(frozen=True, eq=False)
class Split:
    """One part of a dataset: features ``X`` and class indices ``y``.

    ``X`` is float32 with shape ``(n, n_features)`` for tabular data, or an object array of
    ``str`` with shape ``(n,)`` for text. ``y`` holds int64 indices into ``Dataset.classes``.

    Example::

        >>> split = load_dataset("digits").test
        >>> split.X.shape, split.y.shape
        ((360, 64), (360,))
    """

    X: npt.NDArray[Any]
    y: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        if len(self.X) != len(self.y):
            raise DatasetError(f"split has {len(self.X)} rows in X but {len(self.y)} labels in y")

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset split into train, calibration and test.

    ``classes`` are the original label values as strings, in ``np.unique`` order of the
    original values (numbers sort numerically); ``y`` in each split indexes into it.

    Example::

        >>> ds = load_dataset("covertype")
        >>> ds.n_features, ds.n_classes, ds.classes[:3]
        (54, 7, ('1', '2', '3'))
    """

    name: str
    kind: Literal["tabular", "text"]
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    train: Split
    calibration: Split
    test: Split
    source: str
    seed: int

    @property
    def n_features(self) -> int:
        """Number of input columns (1 for text)."""
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        """Number of distinct classes."""
        return len(self.classes)

    def split_sizes(self) -> dict[str, int]:
        """Rows per split, e.g. ``{"train": 1078, "calibration": 359, "test": 360}``."""
        return {
            "train": len(self.train),
            "calibration": len(self.calibration),
            "test": len(self.test),
        }


def _read_only(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array.flags.writeable = False
    return array


def _split_indices(
    y: npt.NDArray[Any], *, seed: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Stratified 60/20/20 row indices (train, calibration, test); see the module docstring."""
    rows = np.arange(len(y))
    held_out = _CALIBRATION_FRACTION + _TEST_FRACTION
    from sklearn.model_selection import train_test_split

    train, rest = train_test_split(rows, test_size=held_out, stratify=y, random_state=seed)
    calibration, test = train_test_split(
        rest, test_size=_TEST_FRACTION / held_out, stratify=y[rest], random_state=seed
    )
    return np.sort(train), np.sort(calibration), np.sort(test)


def _tabular(
    *,
    name: str,
    X: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    feature_names: tuple[str, ...],
    classes: tuple[str, ...],
    source: str,
    seed: int,
) -> Dataset:
    parts = [
        Split(X=_read_only(X[rows]), y=_read_only(y[rows])) for rows in _split_indices(y, seed=seed)
    ]
    return Dataset(
        name=name,
        kind="tabular",
        feature_names=feature_names,
        classes=classes,
        train=parts[0],
        calibration=parts[1],
        test=parts[2],
        source=source,
        seed=seed,
    )


def _text_table(
    frame: pd.DataFrame,
    *,
    where: str,
    label_column: str,
    text_column: str,
    name: str,
    source: str,
    seed: int,
) -> Dataset:
    if text_column not in frame.columns:
        shown = ", ".join(list(frame.columns)[:_MAX_LISTED_COLUMNS])
        raise DatasetError(f"{where}: text column {text_column!r} not found (columns: {shown})")
    if text_column == label_column:
        raise DatasetError(f"{where}: the text and label columns must differ")
    texts = frame[text_column]
    bad = [i for i, t in enumerate(texts.tolist()) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DatasetError(
            f"{where}: text column {text_column!r} has {len(bad)} empty or non-text values "
            f"(first at row {bad[0]})"
        )
    labels = frame[label_column]
    if labels.isna().any():
        first = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise DatasetError(f"{where}: label column {label_column!r} is missing at row {first}")
    classes, y = _encode_labels(labels.to_numpy())
    counts = np.bincount(y, minlength=len(classes))
    if len(classes) < 2 or counts.min() < _MIN_ROWS_PER_CLASS:
        worst = int(np.argmin(counts))
        raise DatasetError(
            f"{where}: need at least 2 classes of {_MIN_ROWS_PER_CLASS} rows each in "
            f"{label_column!r}; class {classes[worst]!r} has {counts[worst]}"
        )
    X = np.empty(len(texts), dtype=object)
    X[:] = texts.tolist()
    parts = [
        Split(X=_read_only(X[rows]), y=_read_only(y[rows])) for rows in _split_indices(y, seed=seed)
    ]
    return Dataset(
        name=name, kind="text", feature_names=(text_column,), classes=classes,
        train=parts[0], calibration=parts[1], test=parts[2], source=source, seed=seed,
    )  # fmt: skip


def _encode_labels(labels: npt.NDArray[Any]) -> tuple[tuple[str, ...], npt.NDArray[np.int64]]:
    try:
        values, codes = np.unique(labels, return_inverse=True)
    except TypeError:
        # Mixed label types (e.g. str and int in one Parquet object column) cannot be ordered.
        values, codes = np.unique(labels.astype(str), return_inverse=True)
    return tuple(str(v) for v in values), codes.astype(np.int64).reshape(-1)


# --- built-in datasets -------------------------------------------------------------------


def _load_digits(*, seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    classes, y = _encode_labels(np.asarray(bunch.target))
    return _tabular(
        name="digits",
        X=np.asarray(bunch.data, dtype=np.float32),
        y=y,
        feature_names=tuple(str(n) for n in bunch.feature_names),
        classes=classes,
        source="scikit-learn load_digits: UCI Optical Recognition of Handwritten Digits, CC BY 4.0",
        seed=seed,
    )


@lru_cache(maxsize=1)
def _covertype_arrays() -> tuple[npt.NDArray[np.float32], npt.NDArray[Any], tuple[str, ...]]:
    frame = _pandas().read_csv(_COVERTYPE_FILE, dtype=np.float32)
    labels = frame.pop("Cover_Type").to_numpy().astype(np.int64)
    X = _read_only(np.ascontiguousarray(frame.to_numpy(dtype=np.float32)))
    return X, _read_only(labels), tuple(str(c) for c in frame.columns)


def _load_covertype(*, seed: int = 0) -> Dataset:
    X, labels, feature_names = _covertype_arrays()
    classes, y = _encode_labels(labels)
    return _tabular(
        name="covertype",
        X=X,
        y=y,
        feature_names=feature_names,
        classes=classes,
        source=(
            "UCI Covertype (Blackard & Dean), 92,962-row subset from ramp-kits/covertype, CC BY 4.0"
        ),
        seed=seed,
    )


@lru_cache(maxsize=1)
def _clinc150_raw() -> dict[str, list[list[str]]]:
    with gzip.open(_CLINC150_FILE, "rt", encoding="utf-8") as handle:
        raw: dict[str, list[list[str]]] = json.load(handle)
    return raw


def _load_clinc150(*, seed: int = 0) -> Dataset:
    raw = _clinc150_raw()
    parts = {
        "train": raw["train"] + raw["oos_train"],
        "calibration": raw["val"] + raw["oos_val"],
        "test": raw["test"] + raw["oos_test"],
    }
    classes = np.unique([intent for pairs in parts.values() for _, intent in pairs])
    splits: dict[str, Split] = {}
    for part, pairs in parts.items():
        X = np.empty(len(pairs), dtype=object)
        X[:] = [text for text, _ in pairs]
        y = np.searchsorted(classes, [intent for _, intent in pairs]).astype(np.int64)
        splits[part] = Split(X=_read_only(X), y=_read_only(y))
    return Dataset(
        name="clinc150",
        kind="text",
        feature_names=("text",),
        classes=tuple(str(c) for c in classes),
        train=splits["train"],
        calibration=splits["calibration"],
        test=splits["test"],
        source="CLINC150 (Larson et al. 2019, github.com/clinc/oos-eval), data_full, CC BY 3.0",
        seed=seed,
    )


DATASETS: dict[str, Callable[..., Dataset]] = {
    "clinc150": _load_clinc150,
    "covertype": _load_covertype,
    "digits": _load_digits,
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted.

    Example::

        >>> available_datasets()
        ['clinc150', 'covertype', 'digits']
    """
    return sorted(DATASETS)


@lru_cache(maxsize=16)
def _load_builtin(name: str, seed: int) -> Dataset:
    return DATASETS[name](seed=seed)


def load_dataset(name: str, *, seed: int = 0) -> Dataset:
    """Load a built-in dataset by name; cached per ``(name, seed)``, arrays are read-only.

    Example::

        >>> ds = load_dataset("digits", seed=0)
        >>> ds.n_features, ds.n_classes
        (64, 10)
    """
    if name not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r} (available: {', '.join(available_datasets())}); "
            "to use your own table, pass --data FILE --label-column COL"
        )
    return _load_builtin(name, seed)


# --- user tables -------------------------------------------------------------------------


def _table_suffix(path: Path) -> str | None:
    lowered = path.name.lower()
    return next((s for s in _TABLE_SUFFIXES if lowered.endswith(s)), None)


def _shown_suffix(path: Path) -> str:
    suffixes = path.suffixes
    if not suffixes:
        return "(no extension)"
    if suffixes[-1].lower() == ".gz" and len(suffixes) > 1:
        return repr("".join(suffixes[-2:]))
    return repr(suffixes[-1])


def _read_table(path: Path, *, where: str, suffix: str) -> pd.DataFrame:
    frame: pd.DataFrame
    try:
        if suffix in (".parquet", ".pq"):
            frame = _pandas().read_parquet(path, engine="pyarrow")
        else:
            frame = _pandas().read_csv(path)
    except ImportError as exc:
        raise DatasetError(
            f'{where}: reading Parquet needs pyarrow; pip install "cascade[parquet]"'
        ) from exc
    # Readers raise many unrelated types (pandas parser errors, pyarrow, gzip, zlib, codecs);
    # all of them mean the same thing to the user.
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"{where}: cannot read table: {reason}") from exc
    if len(frame.columns) == 0:
        raise DatasetError(f"{where}: cannot read table: no columns")
    if len(frame) == 0:
        raise DatasetError(f"{where}: cannot read table: no data rows")
    return frame


def _is_number_column(column: pd.Series[Any]) -> bool:
    return _pandas().api.types.is_bool_dtype(column) or (
        _pandas().api.types.is_numeric_dtype(column)
        and not _pandas().api.types.is_complex_dtype(column)
    )


def _first_non_number(column: pd.Series[Any]) -> str:
    bad = column.notna() & _pandas().to_numeric(column, errors="coerce").isna()
    if not bad.any():
        return "all missing" if column.isna().all() else f"e.g. {str(column.dropna().iloc[0])!r}"
    return f"e.g. {str(column[bad].iloc[0])!r}"


def _quoted(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _check_missing(frame: pd.DataFrame, *, where: str, label_column: str) -> None:
    missing = frame.isna()
    counts = missing.sum()
    columns = [str(c) for c in frame.columns if counts[c] > 0]
    if not columns:
        return
    first = columns[0]
    count = int(counts[first])
    row = int(np.flatnonzero(missing[first].to_numpy())[0])
    what = "label column" if first == label_column else "column"
    noun = "value" if count == 1 else "values"
    message = f"{where}: {what} {first!r} has {count} missing {noun} (first at row {row})"
    if len(columns) > 1:
        message += f"; also missing in {_quoted(columns[1:])}"
    raise DatasetError(message)


def _feature_matrix(
    frame: pd.DataFrame, *, where: str, features: list[str]
) -> npt.NDArray[np.float32]:
    values = frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    if not finite.all():
        col = int(np.flatnonzero(~finite.all(axis=0))[0])
        bad = values[~finite[:, col], col]
        kinds = ", ".join(k for k, hit in (("inf", bad > 0), ("-inf", bad < 0)) if hit.any())
        row = int(np.flatnonzero(~finite[:, col])[0])
        raise DatasetError(
            f"{where}: column {features[col]!r} has non-finite values ({kinds}); first at row {row}"
        )
    too_big = np.abs(values) > np.finfo(np.float32).max
    if too_big.any():
        row, col = (int(i) for i in np.argwhere(too_big)[0])
        raise DatasetError(
            f"{where}: column {features[col]!r} has values too large for float32 "
            f"(e.g. {values[row, col]:g} at row {row})"
        )
    return np.ascontiguousarray(values, dtype=np.float32)


def load_table(
    path: str | os.PathLike[str],
    *,
    label_column: str,
    seed: int = 0,
    name: str | None = None,
    text_column: str | None = None,
) -> Dataset:
    """Load a user's CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``) table.

    With ``text_column`` the dataset is of kind ``text``: that column holds the inputs (one
    non-empty string per row) and the other columns besides the label are ignored.

    ``label_column`` holds the classes (strings or numbers); every other column is a feature
    and must be numeric (booleans count as 0/1) with no missing or infinite values. Each class
    needs at least 5 rows. Rows are split 60/20/20 as described in the module docstring.
    Parquet needs pyarrow (``pip install "cascade[parquet]"``). Every problem raises
    :class:`~cascade.errors.DatasetError` naming the file and the column.

    Example::

        >>> ds = load_table("flowers.csv", label_column="species")
        >>> ds.name, ds.kind
        ('flowers', 'tabular')
    """
    file = Path(path)
    where = str(path)
    if not file.exists():
        raise DatasetError(f"{where}: no such file")
    suffix = _table_suffix(file)
    if suffix is None:
        allowed = ", ".join(_TABLE_SUFFIXES)
        raise DatasetError(
            f"{where}: unsupported file type {_shown_suffix(file)} (allowed: {allowed})"
        )
    if not file.is_file():
        raise DatasetError(f"{where}: not a file")

    frame = _read_table(file, where=where, suffix=suffix)
    columns = [str(c) for c in frame.columns]
    frame.columns = _pandas().Index(columns)
    if label_column not in columns:
        shown = ", ".join(columns[:_MAX_LISTED_COLUMNS])
        if len(columns) > _MAX_LISTED_COLUMNS:
            shown += ", ..."
        raise DatasetError(f"{where}: label column {label_column!r} not found (columns: {shown})")
    if text_column is not None:
        return _text_table(
            frame, where=where, label_column=label_column, text_column=text_column,
            name=name if name is not None else file.name[: -len(suffix)],
            source=str(file.resolve()), seed=seed,
        )  # fmt: skip
    features = [c for c in columns if c != label_column]
    if not features:
        raise DatasetError(f"{where}: no feature columns besides label column {label_column!r}")

    non_numeric = [c for c in features if not _is_number_column(frame[c])]
    if non_numeric:
        details = [f"dtype {frame[c].dtype}, {_first_non_number(frame[c])}" for c in non_numeric]
        if len(non_numeric) == 1:
            problem = f"column {non_numeric[0]!r} is not numeric ({details[0]})"
        else:
            listed = ", ".join(f"{c!r} ({d})" for c, d in zip(non_numeric, details, strict=True))
            problem = f"columns {listed} are not numeric"
        raise DatasetError(f"{where}: {problem}; features must be numbers")

    _check_missing(frame, where=where, label_column=label_column)
    X = _feature_matrix(frame, where=where, features=features)

    classes, y = _encode_labels(frame[label_column].to_numpy())
    if len(classes) < 2:
        raise DatasetError(
            f"{where}: label column {label_column!r} has a single class ({classes[0]}); "
            "need at least 2"
        )
    counts = np.bincount(y, minlength=len(classes))
    small = [i for i in range(len(classes)) if counts[i] < _MIN_ROWS_PER_CLASS]
    if small:
        first = small[0]
        message = (
            f"{where}: class {classes[first]!r} has {counts[first]} "
            f"{'row' if counts[first] == 1 else 'rows'} in label column {label_column!r}; "
            f"each class needs at least {_MIN_ROWS_PER_CLASS}"
        )
        if len(small) > 1:
            message += f" (also too small: {_quoted([classes[i] for i in small[1:]])})"
        raise DatasetError(message)

    return _tabular(
        name=name if name is not None else file.name[: -len(suffix)],
        X=X,
        y=y,
        feature_names=tuple(features),
        classes=classes,
        source=str(file.resolve()),
        seed=seed,
    )
