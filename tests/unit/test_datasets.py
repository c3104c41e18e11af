from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cascade.errors import DatasetError
from cascade.zoo import datasets
from cascade.zoo.datasets import (
    DATASETS,
    Dataset,
    available_datasets,
    read_dataset,
    read_table,
)


def _exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def _frame(
    *, rows_per_class: int = 10, labels: tuple[str, ...] = ("cat", "dog", "eel")
) -> pd.DataFrame:
    n = rows_per_class * len(labels)
    return pd.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "a": np.linspace(0.0, 1.0, n),
            "flag": np.arange(n) % 2 == 0,
            "species": [labels[i % len(labels)] for i in range(n)],
        }
    )


def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def _splits(ds: Dataset) -> list[tuple[str, datasets.Split]]:
    return [("train", ds.train), ("calibration", ds.calibration), ("test", ds.test)]


# --- built-in datasets -------------------------------------------------------------------


def test_available_datasets_matches_registry() -> None:
    assert available_datasets() == ["clinc150", "covertype", "digits"]
    assert sorted(DATASETS) == available_datasets()


def test_digits_shapes_and_split_sizes() -> None:
    ds = read_dataset("digits")
    assert (ds.name, ds.kind, ds.seed) == ("digits", "tabular", 0)
    assert ds.split_sizes() == {"train": 1078, "calibration": 359, "test": 360}
    assert ds.n_features == 64
    assert ds.feature_names[0] == "pixel_0_0"
    assert ds.classes == tuple(str(i) for i in range(10))
    assert ds.n_classes == 10
    for _, split in _splits(ds):
        assert split.X.dtype == np.float32
        assert split.X.shape == (len(split.y), 64)
        assert split.y.dtype == np.int64
        assert split.y.min() >= 0 and split.y.max() < 10


def test_same_seed_gives_identical_splits_and_other_seed_differs() -> None:
    first = DATASETS["digits"](seed=0)
    again = DATASETS["digits"](seed=0)
    other = DATASETS["digits"](seed=1)
    for (_, a), (_, b) in zip(_splits(first), _splits(again), strict=True):
        np.testing.assert_array_equal(a.X, b.X)
        np.testing.assert_array_equal(a.y, b.y)
    assert other.split_sizes() == first.split_sizes()
    assert not np.array_equal(first.train.X, other.train.X)


@pytest.mark.parametrize("seed", [0, 7])
def test_split_indices_are_disjoint_and_cover_all_rows(seed: int) -> None:
    y = np.repeat(np.arange(4), [5, 6, 30, 59])
    train, calibration, test = datasets._split_indices(y, seed=seed)
    combined = np.concatenate([train, calibration, test])
    assert len(combined) == len(y)
    np.testing.assert_array_equal(np.sort(combined), np.arange(len(y)))
    for part in (train, calibration, test):
        assert set(y[part]) == {0, 1, 2, 3}


def test_every_class_is_in_every_split() -> None:
    for name in ("digits", "covertype"):
        ds = read_dataset(name)
        for part, split in _splits(ds):
            assert set(split.y.tolist()) == set(range(ds.n_classes)), (name, part)


def test_covertype_shape() -> None:
    ds = read_dataset("covertype")
    assert sum(ds.split_sizes().values()) == 92_962
    assert ds.split_sizes() == {"train": 55_777, "calibration": 18_592, "test": 18_593}
    assert ds.n_features == 54
    assert "Cover_Type" not in ds.feature_names
    assert ds.classes == ("1", "2", "3", "4", "5", "6", "7")
    assert ds.train.X.dtype == np.float32


def test_clinc150_uses_official_splits() -> None:
    ds = read_dataset("clinc150")
    assert ds.kind == "text"
    assert ds.feature_names == ("text",)
    assert ds.n_features == 1
    assert ds.split_sizes() == {"train": 15_100, "calibration": 3_100, "test": 5_500}
    assert ds.n_classes == 151
    assert "oos" in ds.classes
    assert list(ds.classes) == sorted(ds.classes)
    oos = ds.classes.index("oos")
    assert [int((s.y == oos).sum()) for _, s in _splits(ds)] == [100, 100, 1000]
    assert ds.train.X.dtype == object
    assert ds.train.X.shape == (15_100,)
    assert all(isinstance(text, str) for text in ds.test.X)


def test_loaded_datasets_are_cached_and_read_only() -> None:
    ds = read_dataset("digits")
    assert read_dataset("digits") is ds
    assert read_dataset("digits", seed=1) is not ds
    for _, split in _splits(ds):
        assert not split.X.flags.writeable
        assert not split.y.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        ds.train.X[0, 0] = 99.0


def test_unknown_dataset_lists_valid_names() -> None:
    expected = (
        "unknown dataset 'nope' (available: clinc150, covertype, digits); "
        "to use your own table, pass --data FILE --label-column COL"
    )
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_dataset("nope")


# --- user tables: happy paths ------------------------------------------------------------


def test_csv_with_string_labels(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "zoo.csv", _frame())
    ds = read_table(str(path), label_column="species")
    assert (ds.name, ds.kind) == ("zoo", "tabular")
    assert ds.source == str(path.resolve())
    assert ds.feature_names == ("id", "a", "flag")
    assert ds.classes == ("cat", "dog", "eel")
    assert ds.split_sizes() == {"train": 18, "calibration": 6, "test": 6}
    ids = np.concatenate([s.X[:, 0] for _, s in _splits(ds)])
    np.testing.assert_array_equal(np.sort(ids), np.arange(30, dtype=np.float32))
    for _, split in _splits(ds):
        assert split.X.dtype == np.float32
        assert set(np.unique(split.X[:, 2])) <= {0.0, 1.0}
        assert set(split.y.tolist()) == {0, 1, 2}


def test_gzipped_csv_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    frame = _frame(labels=("10", "9", "100")).assign(species=lambda f: f.species.astype(int))
    path = tmp_path / "mydata.csv.gz"
    frame.to_csv(path, index=False)
    ds = read_table(path, label_column="species", seed=3, name="custom")
    assert ds.name == "custom"
    assert ds.seed == 3
    assert ds.classes == ("9", "10", "100")
    assert read_table(path, label_column="species").name == "mydata"


def test_same_table_and_seed_gives_same_splits(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", _frame())
    first = read_table(path, label_column="species", seed=5)
    again = read_table(path, label_column="species", seed=5)
    np.testing.assert_array_equal(first.test.X, again.test.X)
    np.testing.assert_array_equal(first.test.y, again.test.y)


def test_parquet_table(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "zoo.parquet"
    _frame().to_parquet(path)
    ds = read_table(path, label_column="species")
    assert ds.name == "zoo"
    assert ds.n_features == 3
    assert ds.classes == ("cat", "dog", "eel")
    assert sum(ds.split_sizes().values()) == 30


# --- user tables: errors -----------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(DatasetError, match=_exact(f"{path}: no such file")):
        read_table(path, label_column="y")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a,y\n1,2\n")
    expected = f"{path}: unsupported file type '.txt' (allowed: .csv, .csv.gz, .parquet, .pq)"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="y")


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    expected = f"{path}: cannot read table: No columns to parse from file"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="y")


def test_header_only_csv(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("a,y\n")
    with pytest.raises(DatasetError, match=_exact(f"{path}: cannot read table: no data rows")):
        read_table(path, label_column="y")


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}: cannot read table: "):
        read_table(path, label_column="y")


def test_label_column_not_found(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", pd.DataFrame({"a": [1], "b": [2], "c": [3]}))
    expected = f"{path}: label column 'foo' not found (columns: a, b, c)"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="foo")


def test_label_column_list_is_truncated(tmp_path: Path) -> None:
    frame = pd.DataFrame({f"c{i}": [i] for i in range(25)})
    path = _write_csv(tmp_path / "wide.csv", frame)
    shown = ", ".join(f"c{i}" for i in range(20))
    expected = f"{path}: label column 'y' not found (columns: {shown}, ...)"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="y")


def test_non_numeric_column(tmp_path: Path) -> None:
    frame = _frame().assign(colour=["red", "green"] * 15)
    path = _write_csv(tmp_path / "t.csv", frame)
    expected = (
        f"{path}: column 'colour' is not numeric (dtype text, e.g. 'red'); features must be numbers"
    )
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="species")


def test_all_non_numeric_columns_are_named(tmp_path: Path) -> None:
    frame = _frame().assign(colour=["red"] * 30, size=["1"] * 29 + ["L"])
    path = _write_csv(tmp_path / "t.csv", frame)
    expected = (
        f"{path}: columns 'colour' (dtype text, e.g. 'red'), 'size' (dtype text, e.g. 'L') "
        "are not numeric; features must be numbers"
    )
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="species")


def test_missing_feature_values(tmp_path: Path) -> None:
    frame = _frame()
    frame["x"] = 1.0
    frame.loc[[7, 9, 12], "x"] = np.nan
    path = _write_csv(tmp_path / "t.csv", frame)
    expected = f"{path}: column 'x' has 3 missing values (first at row 7)"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="species")


def test_missing_labels_name_the_label_column(tmp_path: Path) -> None:
    frame = _frame()
    frame.loc[2, "species"] = None
    path = _write_csv(tmp_path / "t.csv", frame)
    expected = f"{path}: label column 'species' has 1 missing value (first at row 2)"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="species")


def test_non_finite_values(tmp_path: Path) -> None:
    frame = _frame()
    frame["x"] = 1.0
    frame.loc[4, "x"] = np.inf
    path = _write_csv(tmp_path / "t.csv", frame)
    expected = f"{path}: column 'x' has non-finite values (inf); first at row 4"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="species")


def test_values_too_large_for_float32(tmp_path: Path) -> None:
    frame = _frame()
    frame["x"] = 1.0
    frame.loc[3, "x"] = 1e40
    path = _write_csv(tmp_path / "t.csv", frame)
    expected = f"{path}: column 'x' has values too large for float32 (e.g. 1e+40 at row 3)"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="species")


def test_single_class(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", pd.DataFrame({"a": range(10), "y": [1] * 10}))
    expected = f"{path}: label column 'y' has a single class (1); need at least 2"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="y")


def test_no_feature_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", pd.DataFrame({"y": [1, 2] * 5}))
    expected = f"{path}: no feature columns besides label column 'y'"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="y")


def test_class_too_small_to_stratify(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": range(12), "y": [1] * 10 + [7] * 2})
    path = _write_csv(tmp_path / "t.csv", frame)
    expected = f"{path}: class '7' has 2 rows in label column 'y'; each class needs at least 5"
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="y")


def test_smallest_allowed_classes_reach_every_split(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": range(15), "y": [1] * 5 + [2] * 5 + [3] * 5})
    ds = read_table(_write_csv(tmp_path / "t.csv", frame), label_column="y")
    for _, split in _splits(ds):
        assert set(split.y.tolist()) == {0, 1, 2}


def test_corrupt_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "broken.pq"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}: cannot read table: "):
        read_table(path, label_column="y")


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pyarrow(*args: object, **kwargs: object) -> pd.DataFrame:
        raise ImportError("Missing optional dependency 'pyarrow'.")

    monkeypatch.setattr(pd, "read_parquet", no_pyarrow)
    path = tmp_path / "t.parquet"
    path.write_bytes(b"")
    expected = f'{path}: reading Parquet needs pyarrow; pip install "cascade[parquet]"'
    with pytest.raises(DatasetError, match=_exact(expected)):
        read_table(path, label_column="y")


def test_a_text_table_loads_as_text_and_refuses_empty_texts(tmp_path: Path) -> None:
    import pandas as pd

    from cascade.errors import DatasetError
    from cascade.zoo.datasets import read_table

    rows = [(f"please {verb} my {thing}", verb) for verb in ("pay", "check", "cancel")
            for thing in ("bill", "card", "order", "rent", "loan", "plan")]  # fmt: skip
    path = tmp_path / "intents.csv"
    pd.DataFrame(rows, columns=["query", "intent"]).assign(extra=1).to_csv(path, index=False)
    ds = read_table(path, label_column="intent", text_column="query")
    assert ds.kind == "text" and ds.classes == ("cancel", "check", "pay")
    assert sum(len(s) for s in (ds.train, ds.calibration, ds.test)) == len(rows)
    assert all(isinstance(t, str) for t in ds.train.X)
    with pytest.raises(DatasetError, match="text column 'text' not found"):
        read_table(path, label_column="intent", text_column="text")
    pd.DataFrame([*rows[:-1], ("  ", "pay")], columns=["query", "intent"]).to_csv(path, index=False)
    with pytest.raises(DatasetError, match="1 empty or non-text values"):
        read_table(path, label_column="intent", text_column="query")
