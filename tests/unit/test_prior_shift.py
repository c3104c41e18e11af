"""The label-shift draw of benchmarks/from_log_shift.py (``--prior``): shares, no replacement."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "from_log_shift.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("from_log_shift", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# 3 classes: a is scarce (40 rows), b and c common; the test split's shares 4 %, 60 %, 36 %
Y = np.repeat(np.arange(3), [40, 600, 360])
CLASSES = ("a", "b", "c")


def test_named_share_others_in_proportion(bench: ModuleType) -> None:
    picked = bench.prior_sample(Y, CLASSES, {"a": 0.2}, seed=0)
    # a is scarcest: all 40 rows, so 200 rows in all; b and c share 160 as 600 : 360
    assert np.bincount(Y[picked]).tolist() == [40, 100, 60]
    assert len(np.unique(picked)) == len(picked)  # without replacement


def test_two_named_and_a_share_of_zero(bench: ModuleType) -> None:
    picked = bench.prior_sample(Y, CLASSES, {"a": 0.1, "c": 0.0}, seed=1)
    assert np.bincount(Y[picked], minlength=3).tolist() == [40, 360, 0]
    # b down to 10 %: a and c share 90 % as 40 : 360, so a and c limit the draw to 444 rows
    picked = bench.prior_sample(Y, CLASSES, {"b": 0.1}, seed=1)
    assert np.bincount(Y[picked]).tolist() == [40, 44, 360]


def test_largest_remainder_rounding_sums_to_the_draw(bench: ModuleType) -> None:
    y = np.repeat(np.arange(4), [7, 50, 50, 50])
    picked = bench.prior_sample(y, ("a", "b", "c", "d"), {"a": 0.5}, seed=0)
    counts = np.bincount(y[picked]).tolist()
    assert sum(counts) == 14 and counts[0] == 7
    assert sorted(counts[1:]) == [2, 2, 3]


def test_seeded_and_shuffled(bench: ModuleType) -> None:
    first = bench.prior_sample(Y, CLASSES, {"a": 0.2}, seed=3)
    assert np.array_equal(first, bench.prior_sample(Y, CLASSES, {"a": 0.2}, seed=3))
    assert not np.array_equal(first, bench.prior_sample(Y, CLASSES, {"a": 0.2}, seed=4))
    assert not np.all(np.diff(Y[first]) >= 0)  # not served class by class


def test_parse_and_refuse(bench: ModuleType) -> None:
    assert bench.parse_prior("oos=0.5") == {"oos": 0.5}
    assert bench.parse_prior("5=0.1, 1=0.8") == {"5": 0.1, "1": 0.8}
    for bad in ("oos", "oos=1.5", "a=0.6,b=0.6", "a=0.1,a=0.2", "=0.1"):
        with pytest.raises(ValueError, match="--prior"):
            bench.parse_prior(bad)
    with pytest.raises(ValueError, match="no class"):
        bench.prior_sample(Y, CLASSES, {"z": 0.5}, seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        bench.prior_sample(Y, CLASSES, {"a": 0.2, "b": 0.2, "c": 0.2}, seed=0)
