"""Built-in datasets and user tables, split into train / calibration / test.

Built-in datasets (all bundled, no network):

- ``digits``: scikit-learn's 8x8 handwritten digits, 1,797 rows x 64 features, 10 classes.
- ``covertype``: a 92,962-row stratified subset of UCI Covertype, 54 features, 7 classes.
- ``clinc150``: CLINC150 intent queries ("full" variant), short texts, 150 intents + ``oos``.

Split rule for tabular data (digits, covertype and user tables from :func:`read_table`):
stratified 60% train / 20% calibration / 20% test, made by two calls of
:func:`sklearn.model_selection.train_test_split` with ``random_state=seed``: first 40% of the
rows are held out from train, then the held-out rows are halved into calibration and test.
The same seed always gives the same splits; every class has rows in every split.
:func:`read_table_rows` reads a user's table whole instead (a held-out file to score),
with the same checks and the same label encoding, and no split.

CLINC150 keeps its own official splits instead (the seed is recorded but changes nothing):
train = ``train`` + ``oos_train``, calibration = ``val`` + ``oos_val``,
test = ``test`` + ``oos_test``.

All arrays are read-only, because loaded datasets are cached and shared; copy before editing.

Example::

    >>> ds = read_dataset("digits")
    >>> ds.split_sizes()
    {'train': 1078, 'calibration': 359, 'test': 360}
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Sequence
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
    "LabelledTable",
    "Split",
    "available_datasets",
    "read_dataset",
    "read_table",
    "read_table_rows",
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

        >>> split = read_dataset("digits").test
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
    original values (numbers sort numerically), or the order a user's table was read into
    (``read_table(classes=...)``); ``y`` in each split indexes into it.

    Example::

        >>> ds = read_dataset("covertype")
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


def _text_inputs(
    frame: pd.DataFrame, *, where: str, label_column: str, text_column: str
) -> npt.NDArray[Any]:
    """The text column as an object array of ``str``, after the text table's checks."""
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
    X = np.empty(len(texts), dtype=object)
    X[:] = texts.tolist()
    return X


def _encode_labels(labels: npt.NDArray[Any]) -> tuple[tuple[str, ...], npt.NDArray[np.int64]]:
    try:
        values, codes = np.unique(labels, return_inverse=True)
    except TypeError:
        # Mixed label types (e.g. str and int in one Parquet object column) cannot be ordered.
        values, codes = np.unique(labels.astype(str), return_inverse=True)
    return tuple(str(v) for v in values), codes.astype(np.int64).reshape(-1)


def _as_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _relabel(
    own: tuple[str, ...],
    y: npt.NDArray[np.int64],
    classes: Sequence[str],
    *,
    where: str,
    label_column: str,
) -> npt.NDArray[np.int64]:
    """``y`` (indices into the table's own sorted labels ``own``) as indices into ``classes``.

    A label matches a class by its text, else by its number ("1" and "1.0" are one class),
    so a table whose label column reads back as floats still lines up with integer classes.
    """
    exact = {c: i for i, c in enumerate(classes)}
    numbers: dict[float, int] = {}
    for i, c in enumerate(classes):
        value = _as_number(c)
        if value is not None:
            numbers[value] = -1 if value in numbers else i  # -1: two classes, one number
    lookup = np.empty(len(own), dtype=np.int64)
    unknown = []
    for j, label in enumerate(own):
        index = exact.get(label)
        if index is None and (value := _as_number(label)) is not None:
            index = numbers.get(value)
        if index is None or index < 0:
            unknown.append(label)
        else:
            lookup[j] = index
    if unknown:
        shown = _quoted(list(classes)[:_MAX_LISTED_COLUMNS])
        if len(classes) > _MAX_LISTED_COLUMNS:
            shown += ", ..."
        noun = "a label" if len(unknown) == 1 else f"{len(unknown)} labels"
        raise DatasetError(
            f"{where}: label column {label_column!r} has {noun} the model does not know: "
            f"{_quoted(unknown[:_MAX_LISTED_COLUMNS])} (its classes: {shown})"
        )
    return lookup[y]


# --- built-in datasets -------------------------------------------------------------------


def _read_digits(*, seed: int = 0) -> Dataset:
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


def _read_covertype(*, seed: int = 0) -> Dataset:
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


def _read_clinc150(*, seed: int = 0) -> Dataset:
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
    "clinc150": _read_clinc150,
    "covertype": _read_covertype,
    "digits": _read_digits,
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`read_dataset`, sorted.

    Example::

        >>> available_datasets()
        ['clinc150', 'covertype', 'digits']
    """
    return sorted(DATASETS)


@lru_cache(maxsize=16)
def _read_builtin(name: str, seed: int) -> Dataset:
    return DATASETS[name](seed=seed)


def read_dataset(name: str, *, seed: int = 0) -> Dataset:
    """Load a built-in dataset by name; cached per ``(name, seed)``, arrays are read-only.

    Example::

        >>> ds = read_dataset("digits", seed=0)
        >>> ds.n_features, ds.n_classes
        (64, 10)
    """
    if name not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r} (available: {', '.join(available_datasets())}); "
            "to use your own table, pass --data FILE --label-column COL"
        )
    return _read_builtin(name, seed)


# --- user tables -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LabelledTable:
    """Every row of a user's table, unsplit: what :func:`read_table_rows` returns.

    ``rows.y`` indexes into ``classes``: the table's own labels sorted as
    :func:`read_table` sorts them, or the class order passed in (a model's).

    Example::

        >>> table = read_table_rows("held_out.csv", label_column="species")
        >>> len(table), table.classes
        (3080, ('cat', 'dog', 'eel'))
    """

    name: str
    kind: Literal["tabular", "text"]
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    rows: Split
    source: str

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, eq=False)
class _Rows:
    """A table's checked inputs and raw labels, before any encoding or split."""

    name: str
    kind: Literal["tabular", "text"]
    feature_names: tuple[str, ...]
    X: npt.NDArray[Any]
    labels: npt.NDArray[Any]
    where: str
    source: str


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


def _open_table(
    path: str | os.PathLike[str],
    *,
    label_column: str,
    text_column: str | None,
    name: str | None,
) -> _Rows:
    """Read a user's table and check its columns; labels are left raw."""
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
    table_name = name if name is not None else file.name[: -len(suffix)]
    source = str(file.resolve())
    if text_column is not None:
        texts = _text_inputs(frame, where=where, label_column=label_column,
                             text_column=text_column)  # fmt: skip
        return _Rows(name=table_name, kind="text", feature_names=(text_column,), X=texts,
                     labels=frame[label_column].to_numpy(), where=where, source=source)  # fmt: skip
    features = [c for c in columns if c != label_column]
    if not features:
        raise DatasetError(f"{where}: no feature columns besides label column {label_column!r}")

    non_numeric = [c for c in features if not _is_number_column(frame[c])]
    if non_numeric:
        # text columns: "object" on pandas 2, "str" on pandas 3; one word for both
        kinds = {c: "text" if frame[c].dtype.kind in "OSUT" else str(frame[c].dtype)
                 for c in non_numeric}  # fmt: skip
        details = [f"dtype {kinds[c]}, {_first_non_number(frame[c])}" for c in non_numeric]
        if len(non_numeric) == 1:
            problem = f"column {non_numeric[0]!r} is not numeric ({details[0]})"
        else:
            listed = ", ".join(f"{c!r} ({d})" for c, d in zip(non_numeric, details, strict=True))
            problem = f"columns {listed} are not numeric"
        raise DatasetError(f"{where}: {problem}; features must be numbers")

    _check_missing(frame, where=where, label_column=label_column)
    X = _feature_matrix(frame, where=where, features=features)
    return _Rows(name=table_name, kind="tabular", feature_names=tuple(features), X=X,
                 labels=frame[label_column].to_numpy(), where=where, source=source)  # fmt: skip


def _check_splittable(
    rows: _Rows, classes: tuple[str, ...], y: npt.NDArray[np.int64], *, label_column: str
) -> None:
    """Refuse what a stratified 60/20/20 split cannot take: one class, or tiny classes."""
    where = rows.where
    counts = np.bincount(y, minlength=len(classes))
    if rows.kind == "text":
        if len(classes) < 2 or counts.min() < _MIN_ROWS_PER_CLASS:
            worst = int(np.argmin(counts))
            raise DatasetError(
                f"{where}: need at least 2 classes of {_MIN_ROWS_PER_CLASS} rows each in "
                f"{label_column!r}; class {classes[worst]!r} has {counts[worst]}"
            )
        return
    if len(classes) < 2:
        raise DatasetError(
            f"{where}: label column {label_column!r} has a single class ({classes[0]}); "
            "need at least 2"
        )
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


def read_table(
    path: str | os.PathLike[str],
    *,
    label_column: str,
    seed: int = 0,
    name: str | None = None,
    text_column: str | None = None,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """Load a user's CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``) table.

    With ``text_column`` the dataset is of kind ``text``: that column holds the inputs (one
    non-empty string per row) and the other columns besides the label are ignored.

    ``label_column`` holds the classes (strings or numbers); every other column is a feature
    and must be numeric (booleans count as 0/1) with no missing or infinite values. Each class
    needs at least 5 rows. Rows are split 60/20/20 as described in the module docstring.
    ``classes`` (a model's class order, e.g. its card's ``classes``) makes ``y`` index into
    them instead of the table's own sorted labels; the split is the same either way, and a
    label not among them is an error. Parquet needs pyarrow (``pip install
    "cascade[parquet]"``). Every problem raises :class:`~cascade.errors.DatasetError` naming
    the file and the column. To read a table whole, unsplit, use :func:`read_table_rows`.

    Example::

        >>> ds = read_table("flowers.csv", label_column="species")
        >>> ds.name, ds.kind
        ('flowers', 'tabular')
    """
    rows = _open_table(path, label_column=label_column, text_column=text_column, name=name)
    own, y = _encode_labels(rows.labels)
    _check_splittable(rows, own, y, label_column=label_column)
    # Split on the table's own codes, so the rows of each part never depend on ``classes``.
    parts = _split_indices(y, seed=seed)
    if classes is not None:
        y = _relabel(own, y, classes, where=rows.where, label_column=label_column)
    splits = [Split(X=_read_only(rows.X[i]), y=_read_only(y[i])) for i in parts]
    return Dataset(
        name=rows.name, kind=rows.kind, feature_names=rows.feature_names,
        classes=own if classes is None else tuple(classes),
        train=splits[0], calibration=splits[1], test=splits[2], source=rows.source, seed=seed,
    )  # fmt: skip


def read_table_rows(
    path: str | os.PathLike[str],
    *,
    label_column: str,
    name: str | None = None,
    text_column: str | None = None,
    classes: Sequence[str] | None = None,
) -> LabelledTable:
    """Every row of a user's table with its label, unsplit: a held-out file to score whole.

    The file and its columns are checked as :func:`read_table` checks them, and labels are
    encoded the same way (``classes``: a model's class order; default the table's own sorted
    labels), but nothing is split, so any number of classes and of rows per class will do.

    Example::

        >>> table = read_table_rows("held_out.csv", label_column="species",
        ...                         classes=("cat", "dog", "eel"))
        >>> len(table), table.rows.y[:3]
        (3080, array([2, 0, 0]))
    """
    rows = _open_table(path, label_column=label_column, text_column=text_column, name=name)
    own, y = _encode_labels(rows.labels)
    if classes is not None:
        y = _relabel(own, y, classes, where=rows.where, label_column=label_column)
    return LabelledTable(
        name=rows.name, kind=rows.kind, feature_names=rows.feature_names,
        classes=own if classes is None else tuple(classes),
        rows=Split(X=_read_only(rows.X), y=_read_only(y)), source=rows.source,
    )  # fmt: skip
