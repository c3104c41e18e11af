"""Build a dataset's tiers: train → export to ONNX → check fidelity → measure → write cards.

Compression options add variants of an MLP student beside the three tiers:

- ``student`` distilled from the large tier's probabilities (``--distill``), next to
  ``student.hard`` trained on hard labels only, same architecture and seed;
- ``student.int8`` (dynamic INT8) and ``student.int8-static`` (static INT8, QDQ, calibrated on
  the calibration split) (``--quantize``);
- ``student.pruned``: global magnitude pruning to a target sparsity, then a short masked
  fine-tune (``--prune``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cascade.backends.onnx import OnnxModel
from cascade.catalog import Fidelity, ModelCard, sha256_of, write_card
from cascade.errors import BuildError
from cascade.zoo.datasets import Dataset
from cascade.zoo.export import (
    FIDELITY_TOLERANCE,
    check_fidelity,
    library_versions,
    onnx_probabilities,
    sklearn_to_onnx,
)
from cascade.zoo.measure import measure_latency, progress_steps, with_relative_costs
from cascade.zoo.tiers import TierRecipe, recipes_for

__all__ = ["CompressionOptions", "build_zoo"]

QuantizeMode = Literal["dynamic", "static"]


@dataclass(frozen=True)
class CompressionOptions:
    """Which compressed variants to build, and how.

    Example::

        CompressionOptions(distill=True, quantize=("dynamic", "static"), prune=0.8)
    """

    distill: bool = False
    alpha: float = 0.5
    temperature: float = 2.0
    quantize: tuple[QuantizeMode, ...] = ()
    prune: float | None = None
    student_hidden: tuple[int, ...] = (256, 128)
    student_epochs: int = 60
    finetune_epochs: int = 15

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise BuildError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise BuildError(f"temperature must be > 0, got {self.temperature}")
        if self.prune is not None and not 0.0 < self.prune < 1.0:
            raise BuildError(f"prune sparsity must be in (0, 1), got {self.prune}")
        unknown = set(self.quantize) - {"dynamic", "static"}
        if unknown:
            raise BuildError(f"unknown quantize mode {sorted(unknown)} (allowed: dynamic, static)")

    @property
    def wants_student(self) -> bool:
        return self.distill or bool(self.quantize) or self.prune is not None


@dataclass
class _Context:
    dataset: Dataset
    out: Path
    seed: int
    step: Callable[[str], None]
    latency_rows: np.ndarray
    cards: list[ModelCard] = field(default_factory=list)


def _accuracy(probabilities: np.ndarray, y: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == y).mean())


def _card(
    ctx: _Context,
    path: Path,
    *,
    tier: str,
    variant: str | None,
    build: dict[str, Any],
    fidelity: Fidelity | None,
    compression: dict[str, Any] | None = None,
) -> ModelCard:
    """Load ``path`` as cascade will serve it, score it on every split and time it."""
    ds = ctx.dataset
    model = OnnxModel(path, intra_op_threads=1)
    accuracy = {
        "test": _accuracy(model.predict_sync(ds.test.X), ds.test.y),
        "calibration": _accuracy(model.predict_sync(ds.calibration.X), ds.calibration.y),
    }
    card = ModelCard(
        name=path.name.removesuffix(".onnx"),
        tier=tier,
        variant=variant,
        file=path.name,
        dataset=ds.name,
        dataset_source=ds.source,
        seed=ctx.seed,
        split_sizes=ds.split_sizes(),
        n_features=ds.n_features,
        input_name=model.input_spec.name,
        classes=list(ds.classes),
        accuracy=accuracy,
        size_bytes=path.stat().st_size,
        sha256=sha256_of(path),
        latency=measure_latency(model, ctx.latency_rows),
        fidelity=fidelity,
        build=build,
        compression=compression,
    )
    ctx.cards.append(card)
    return card


def _build_tier(ctx: _Context, recipe: TierRecipe) -> Any:
    ds = ctx.dataset
    ctx.step(f"{recipe.tier}: training {recipe.family}")
    began = time.perf_counter()
    estimator = recipe.make(seed=ctx.seed)
    estimator.fit(ds.train.X, ds.train.y)
    train_seconds = time.perf_counter() - began
    ctx.step(f"{recipe.tier}: exporting to ONNX")
    graph = sklearn_to_onnx(
        estimator,
        n_features=ds.n_features,
        metadata={"tier": recipe.tier, "dataset": ds.name, "classes": list(ds.classes)},
    )
    worst = check_fidelity(
        onnx_probabilities(graph, ds.test.X),
        estimator.predict_proba(ds.test.X),
        what=f"{ds.name}/{recipe.tier}",
    )
    path = ctx.out / f"{recipe.tier}.onnx"
    path.write_bytes(graph.SerializeToString())
    ctx.step(f"{recipe.tier}: measuring")
    _card(
        ctx,
        path,
        tier=recipe.tier,
        variant=None,
        build={**recipe.describe(), "train_seconds": round(train_seconds, 3)},
        fidelity=Fidelity(
            reference="scikit-learn predict_proba",
            max_abs_diff=worst,
            tolerance=FIDELITY_TOLERANCE,
        ),
    )
    return estimator


def _save_student(
    ctx: _Context,
    mlp: Any,
    name: str,
    *,
    variant: str | None,
    build: dict[str, Any],
    compression: dict[str, Any] | None,
) -> Path:
    from cascade.zoo.student import student_to_onnx

    ds = ctx.dataset
    graph = student_to_onnx(mlp)
    worst = check_fidelity(
        onnx_probabilities(graph, ds.test.X),
        mlp.predict_proba(ds.test.X),
        what=f"{ds.name}/{name}",
    )
    path = ctx.out / f"{name}.onnx"
    path.write_bytes(graph.SerializeToString())
    _card(
        ctx,
        path,
        tier="student",
        variant=variant,
        build=build,
        fidelity=Fidelity(
            reference="numpy MLP forward pass", max_abs_diff=worst, tolerance=FIDELITY_TOLERANCE
        ),
        compression=compression,
    )
    return path


def _student_batch_size(n_train: int) -> int:
    """At least ~200 Adam steps per epoch on small data, batches of 32..256.

    With a fixed 256, digits' 1,078 rows gave 5 steps an epoch and an under-trained student
    (0.94 against 0.97 with batches of 32).
    """
    return int(min(256, max(32, 2 ** int(np.log2(max(n_train / 200, 1))))))


def _build_students(ctx: _Context, teacher: Any, options: CompressionOptions) -> None:
    from cascade.zoo import quantize as q
    from cascade.zoo.student import TrainConfig, magnitude_prune, train_student

    ds = ctx.dataset
    batch_size = _student_batch_size(len(ds.train.y))
    config = TrainConfig(
        hidden=options.student_hidden,
        epochs=options.student_epochs,
        batch_size=batch_size,
        seed=ctx.seed,
    )
    base_build = {"family": "mlp", "params": {**asdict(config), "hidden": list(config.hidden)}}

    ctx.step("student: training on hard labels")
    hard = train_student(ds.train.X, ds.train.y, n_classes=ds.n_classes, config=config)
    hard_name = "student.hard" if options.distill else "student"
    _save_student(
        ctx,
        hard,
        hard_name,
        variant="hard" if options.distill else None,
        build=base_build,
        compression={"method": "hard-label training", "teacher": None},
    )
    student = hard
    student_name = hard_name
    if options.distill:
        ctx.step("student: distilling from the large tier")
        soft = train_student(
            ds.train.X,
            ds.train.y,
            n_classes=ds.n_classes,
            config=config,
            teacher_proba=teacher.predict_proba(ds.train.X),
            alpha=options.alpha,
            temperature=options.temperature,
        )
        hard_card = ctx.cards[-1]
        _save_student(
            ctx,
            soft,
            "student",
            variant=None,
            build=base_build,
            compression={
                "method": "distillation",
                "teacher": "large",
                "alpha": options.alpha,
                "temperature": options.temperature,
                "baseline": hard_card.name,
                "baseline_test_accuracy": hard_card.accuracy["test"],
            },
        )
        student, student_name = soft, "student"

    fp32_card = ctx.cards[-1]
    fp32_path = ctx.out / fp32_card.file
    for mode in options.quantize:
        suffix = "int8" if mode == "dynamic" else "int8-static"
        ctx.step(f"student: INT8 {mode} quantization")
        dst = ctx.out / f"{student_name}.{suffix}.onnx"
        if mode == "dynamic":
            q.quantize_dynamic_int8(fp32_path, dst)
        else:
            q.quantize_static_int8(fp32_path, dst, calibration=ds.calibration.X)
        reference = student.predict_proba(ds.test.X)
        drift = float(np.abs(onnx_probabilities(dst.read_bytes(), ds.test.X) - reference).max())
        _card(
            ctx,
            dst,
            tier="student",
            variant=suffix,
            build=base_build,
            fidelity=None,
            compression={
                "method": f"INT8 {mode} quantization (onnxruntime.quantization)",
                "baseline": fp32_card.name,
                "baseline_test_accuracy": fp32_card.accuracy["test"],
                "baseline_size_bytes": fp32_card.size_bytes,
                "max_abs_diff_vs_fp32": drift,
            },
        )

    if options.prune is not None:
        ctx.step(f"student: pruning to {options.prune:.0%} sparsity")
        pruned, masks = magnitude_prune(student, sparsity=options.prune)
        before = _accuracy(pruned.predict_proba(ds.test.X), ds.test.y)
        tuned = train_student(
            ds.train.X,
            ds.train.y,
            n_classes=ds.n_classes,
            config=replace(config, epochs=options.finetune_epochs),
            teacher_proba=teacher.predict_proba(ds.train.X) if options.distill else None,
            alpha=options.alpha,
            temperature=options.temperature,
            init=pruned,
            masks=masks,
        )
        _save_student(
            ctx,
            tuned,
            f"{student_name}.pruned",
            variant="pruned",
            build=base_build,
            compression={
                "method": "global magnitude pruning + masked fine-tune",
                "target_sparsity": options.prune,
                "sparsity": tuned.sparsity,
                "finetune_epochs": options.finetune_epochs,
                "test_accuracy_before_finetune": before,
                "baseline": fp32_card.name,
                "baseline_test_accuracy": fp32_card.accuracy["test"],
            },
        )


def build_zoo(
    dataset: Dataset,
    out_dir: str | Path,
    *,
    compression: CompressionOptions | None = None,
    recipes: Sequence[TierRecipe] | None = None,
    progress: bool = True,
) -> list[ModelCard]:
    """Build every tier of ``dataset`` into ``out_dir``; return their cards (also written).

    Example::

        cards = build_zoo(read_dataset("digits"), "models/digits")
        print(format_cards(cards))
    """
    if dataset.kind == "text":
        raise BuildError(
            f"dataset '{dataset.name}' holds texts: build its tiers with "
            "cascade.text.build_text_zoo (or `cascade models build`)"
        )
    if dataset.kind != "tabular":
        raise BuildError(f"dataset '{dataset.name}' is {dataset.kind}; no tiers for that kind")
    compression = compression or CompressionOptions()
    recipes = list(recipes) if recipes is not None else recipes_for(dataset.name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    steps = 3 * len(recipes)
    if compression.wants_student:
        steps += 1 + int(compression.distill) + len(compression.quantize)
        steps += int(compression.prune is not None)
    began = time.perf_counter()
    versions = library_versions()
    with progress_steps(steps, progress) as step:
        ctx = _Context(
            dataset=dataset,
            out=out,
            seed=dataset.seed,
            step=step,
            latency_rows=dataset.test.X[:512],
        )
        estimators = {recipe.tier: _build_tier(ctx, recipe) for recipe in recipes}
        if compression.wants_student:
            if "large" not in estimators:
                raise BuildError("compression needs the large tier as teacher; build it too")
            _build_students(ctx, estimators["large"], compression)

    built_at = datetime.now(UTC).isoformat(timespec="seconds")
    cards = with_relative_costs(ctx.cards)
    final = []
    for card in cards:
        card = card.model_copy(
            update={"build": {**card.build, "versions": versions, "built_at": built_at}}
        )
        write_card(card, out)
        final.append(card)
    _ = time.perf_counter() - began
    return final
