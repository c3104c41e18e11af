"""The `cascade` command line, run in-process through `main(argv)`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sklearn.datasets import load_wine

from cascade.catalog import ModelCard
from cascade.cli import main


def test_card_prints_the_table_and_json(
    digits_zoo: tuple[Path, list[ModelCard]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "card", str(digits_zoo[0])]) == 0
    out = capsys.readouterr().out
    assert "dataset digits" in out and "\nlarge " in out
    assert "compression" in out and "student.int8-static" in out
    assert main(["models", "card", str(digits_zoo[0]), "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert {c["name"] for c in cards} >= {"tiny", "small", "large"}


def test_datasets_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets"]) == 0
    assert capsys.readouterr().out.split() == ["clinc150", "covertype", "digits"]


def test_unknown_dataset_fails_with_the_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "build", "mnist", "--out", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cascade: error: unknown dataset 'mnist' (available: clinc150, covertype, digits)" in err


def test_build_from_a_users_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wine = load_wine(as_frame=True).frame  # real data, 178 rows, 3 classes
    wine["target"] = wine["target"].map({0: "barolo", 1: "grignolino", 2: "barbera"})
    path = tmp_path / "wine.csv"
    wine.to_csv(path, index=False)
    out = tmp_path / "zoo"
    argv = [
        "models",
        "build",
        "--data",
        str(path),
        "--label-column",
        "target",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "dataset wine" in printed and f"wrote 3 models and cards to {out}/" in printed
    card = json.loads((out / "large.card.json").read_text())
    assert card["classes"] == ["barbera", "barolo", "grignolino"]
    assert card["dataset_source"].endswith("wine.csv")


def test_malformed_user_table_names_file_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    pd.DataFrame({"x": [1.0, 2.0], "y": [0, 1]}).to_csv(path, index=False)
    assert main(["models", "build", "--data", str(path), "--label-column", "label"]) == 1
    assert "bad.csv: label column 'label' not found (columns: x, y)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "build", "--data", "x.csv"], "--data needs --label-column COL"),
        (
            ["models", "build", "digits", "--data", "x.csv", "--label-column", "y"],
            "give either DATASET or --data FILE, not both",
        ),
        (["models", "build", "--label-column", "y"], "--label-column only goes with --data FILE"),
        (["models", "build", "--prune", "1.5"], "argument --prune: must be in (0, 1), got 1.5"),
        (["models", "build", "--quantize", "fp8"], "argument --quantize: unknown mode ['fp8']"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
