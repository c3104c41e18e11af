"""`cascade models build|card` and `cascade datasets`: the model zoo from the command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_models_commands", "run_build", "run_card", "run_datasets"]

DEFAULT_DATASET = "digits"


def _sparsity(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in ("dynamic", "static")]
    if bad or not modes:
        raise argparse.ArgumentTypeError(
            f"unknown mode {bad or text!r} (allowed: dynamic, static, or dynamic,static)"
        )
    return modes


def add_models_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="build and inspect the model zoo")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    build = model_commands.add_parser(
        "build",
        help="train the tiny/small/large tiers, export them to ONNX and write model cards",
        description="Train the tiny/small/large tiers of a dataset, export each to ONNX, check it "
        "against scikit-learn, measure it and write a model card beside it.",
    )
    build.add_argument(
        "dataset",
        nargs="?",
        default=None,
        help=f"built-in dataset (default: {DEFAULT_DATASET}); see `cascade datasets`",
    )
    build.add_argument("--data", type=Path, help="your own labelled table (CSV or Parquet)")
    build.add_argument("--label-column", help="the label column of --data")
    build.add_argument(
        "--text-column", help="the text column of --data: build text tiers (tiny/small/MiniLM)"
    )
    build.add_argument("--out", type=Path, help="output directory (default: models/DATASET)")
    build.add_argument("--seed", type=int, default=0, help="seed of splits and training")
    build.add_argument(
        "--distill",
        action="store_true",
        help="also build an MLP student distilled from the large tier (and its hard-label twin)",
    )
    build.add_argument(
        "--alpha",
        type=float,
        help="distillation: weight of the hard-label loss (default 0.5)",
    )
    build.add_argument(
        "--temperature",
        type=float,
        help="distillation: softening temperature (default 2)",
    )
    build.add_argument(
        "--quantize",
        type=_modes,
        default=(),
        metavar="MODES",
        help="INT8 variants of the student: dynamic, static or dynamic,static",
    )
    build.add_argument(
        "--prune",
        type=_sparsity,
        metavar="SPARSITY",
        help="magnitude-prune the student's weights to this sparsity, e.g. 0.8",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.add_argument("--json", action="store_true", help="print the cards as JSON")
    build.set_defaults(run=lambda args: run_build(args, build))

    card = model_commands.add_parser("card", help="print the model cards found in a directory")
    card.add_argument("directory", type=Path)
    card.add_argument("--json", action="store_true", help="print the cards as JSON")
    card.set_defaults(run=run_card)

    datasets = commands.add_parser("datasets", help="list the built-in datasets")
    datasets.set_defaults(run=run_datasets)


def run_datasets(args: argparse.Namespace) -> int:
    from cascade.zoo.datasets import available_datasets

    for name in available_datasets():
        print(name)
    return 0


def run_card(args: argparse.Namespace) -> int:
    from cascade.catalog import read_cards

    _print_cards(read_cards(args.directory), as_json=args.json)
    return 0


def _print_cards(cards: Sequence[object], *, as_json: bool) -> None:
    from cascade.catalog import ModelCard, format_cards
    from cascade.zoo.report import format_compression

    typed = [c for c in cards if isinstance(c, ModelCard)]
    if as_json:
        print(json.dumps([c.model_dump(mode="json") for c in typed], indent=2))
        return
    print(format_cards(typed))
    compression = format_compression(typed)
    if compression:
        print()
        print(compression)


def run_build(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from cascade.text.build import build_text_zoo
    from cascade.zoo.build import CompressionOptions, build_zoo
    from cascade.zoo.datasets import read_dataset, read_table

    if args.dataset in ("ltr", "movielens"):
        return _build_ranking(args, parser)
    if args.data is not None:
        if args.dataset is not None:
            parser.error("give either DATASET or --data FILE, not both")
        if not args.label_column:
            parser.error("--data needs --label-column COL")
        dataset = read_table(
            args.data, label_column=args.label_column, seed=args.seed, text_column=args.text_column
        )
    else:
        if args.label_column:
            parser.error("--label-column only goes with --data FILE")
        dataset = read_dataset(args.dataset or DEFAULT_DATASET, seed=args.seed)
    given = {"alpha": args.alpha, "temperature": args.temperature}  # else the defaults
    options = CompressionOptions(
        distill=args.distill,
        quantize=args.quantize,
        prune=args.prune,
        **{key: value for key, value in given.items() if value is not None},
    )
    out = args.out or Path("models") / dataset.name
    if dataset.kind == "text":  # hashed char-grams, TF-IDF, MiniLM (and an oos filter)
        if options.wants_student:
            parser.error(
                "--distill / --quantize / --prune apply to tabular tiers; the text tiers ship "
                "their own INT8 MiniLM"
            )
        tiers = ("tiny", "small", "large", *(("oos",) if "oos" in dataset.classes else ()))
        cards = build_text_zoo(dataset, out, progress=not args.no_progress, tiers=tiers)
    else:
        cards = build_zoo(dataset, out, compression=options, progress=not args.no_progress)
    _print_cards(cards, as_json=args.json)
    if not args.json:
        print(f"\nwrote {len(cards)} models and cards to {out}/")
    if dataset.kind == "text" and args.data is not None:
        policy = _calibrated_text_policy(dataset, out, data=args.data)
        if not args.json:
            print(f"wrote a calibrated policy: {policy}")
    return 0


def _calibrated_text_policy(dataset: Any, out: Path, *, data: Path) -> Path:
    """``OUT/NAME.yaml``: tiny -> MiniLM, thresholds fitted on the table's calibration rows."""
    from cascade.evaluate import Target, calibrate_policy
    from cascade.policy import read_policy

    path = out / f"{dataset.name}.yaml"
    path.write_text(
        f"# Built by `cascade models build --data {data}`: tiny (hashed char-grams) answers\n"
        "# the confident rows, MiniLM the rest; thresholds fitted on the table's calibration\n"
        "# rows (20 %) to 0.99 of always-MiniLM's accuracy at confidence 0.8.\n"
        f"name: {dataset.name}\ntiers:\n"
        "  tiny: {model: tiny.onnx}\n  small: {model: small.onnx}\n"
        "  large: {model: large.onnx, placement: deployment}\n"
        "routing:\n  kind: confidence\n  measure: margin\n  chain:\n"
        "    - {tier: tiny, threshold: 0.5}\n    - {tier: large}\n"
    )
    loaded = read_policy(path)
    result = calibrate_policy(
        loaded,
        np.asarray(dataset.calibration.X),
        np.asarray(dataset.calibration.y),
        target=Target(relative_accuracy=0.99, confidence=0.8),
        data_label=f"{data} (calibration rows)",
        write=True,
    )
    if result.chosen is None:
        why = "; ".join(result.notes) or "no setting met it"
        print(f"the calibration target was not met ({why}): {path.name} keeps its placeholder "
              "thresholds; run `cascade calibrate` with a looser target or more rows")  # fmt: skip
    return path


def _build_ranking(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Ranking scorers: ``ltr`` (bundled) or ``movielens --data PATH`` (GroupLens terms)."""
    from cascade.ranking.ltr import build_ltr
    from cascade.ranking.movielens import DEFAULT_MOVIELENS_PATH, build_movielens

    if args.label_column:
        parser.error(f"{args.dataset} is a ranking dataset: --label-column does not apply")
    out = args.out or Path("models") / args.dataset
    if args.dataset == "ltr":
        if args.data is not None:
            parser.error("ltr is bundled: --data does not apply")
        build = build_ltr(out, progress=not args.no_progress, seed=args.seed)
    else:
        data = args.data or DEFAULT_MOVIELENS_PATH
        build = build_movielens(data, out, progress=not args.no_progress, seed=args.seed)
    if args.json:
        print(json.dumps({s: c.model_dump(mode="json") for s, c in build.cards.items()}))
        return 0
    from cascade._table import table

    rows = [
        [stage, card.family, f"{card.cost_us:.3f}", f"{card.relative_cost or 1:.4f}",
         ", ".join(card.used_features[:4]) + (" …" if len(card.used_features) > 4 else "")]
        for stage, card in build.cards.items()
    ]  # fmt: skip
    print(table(["stage", "model", "µs/row", "relative cost", "features"], rows))
    print(f"\nwrote {len(build.cards)} scorers and cards to {out}/")
    return 0
