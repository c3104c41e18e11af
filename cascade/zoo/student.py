"""A small numpy MLP student: distillation, magnitude pruning and ONNX export.

The student is the compressible tier: it can learn from a teacher's probabilities
(knowledge distillation, Hinton et al. 2015), be pruned to a target sparsity and
fine-tuned with the pruning masks held fixed, and be exported to a self-contained ONNX
graph that :mod:`cascade.zoo.quantize` can turn into INT8.

Example::

    config = TrainConfig(hidden=(64,), epochs=30)
    hard = train_student(X, y, n_classes=10, config=config)
    soft = train_student(X, y, n_classes=10, config=config, teacher_proba=forest.predict_proba(X))
    pruned, masks = magnitude_prune(soft, sparsity=0.8)
    tuned = train_student(X, y, n_classes=10, config=config, init=pruned, masks=masks)
    onnx.save(student_to_onnx(tuned), "student.onnx")
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from threadpoolctl import threadpool_limits

from cascade.errors import BuildError

__all__ = ["MLP", "TrainConfig", "magnitude_prune", "student_to_onnx", "train_student"]

_F32 = np.float32
_ADAM_BETA1 = 0.9
_ADAM_BETA2 = 0.999
_ADAM_EPS = 1e-8
# Teacher probabilities may be exactly 0 (a forest where no tree votes for a class); the
# floor keeps their log finite when they are softened with the temperature.
_TEACHER_FLOOR = 1e-8
_OUTPUT_NAME = "probabilities"
_MIN_OPSET = 13


def _softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


@dataclass(frozen=True, eq=False)
class MLP:
    """A trained multilayer perceptron with its input standardisation.

    ``weights[i]`` has shape ``(in, out)``; hidden layers use ReLU and the output layer a
    softmax. ``mean`` and ``scale`` standardise the raw input and are exported as part of the
    ONNX graph, so the graph takes the same raw features as the other tiers.

    Example::

        mlp = train_student(X, y, n_classes=10)
        mlp.predict_proba(X[:5]).shape   # (5, 10)
        mlp.sparsity                     # 0.0 until pruned
    """

    mean: np.ndarray
    scale: np.ndarray
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if not self.weights or len(self.weights) != len(self.biases):
            raise BuildError(
                f"MLP needs one bias per weight matrix and at least one layer, "
                f"got {len(self.weights)} weight matrices and {len(self.biases)} biases"
            )
        width = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if self.mean.shape != (width,) or self.scale.shape != (width,):
            raise BuildError(
                f"MLP mean and scale must be 1-D of equal length, "
                f"got {self.mean.shape} and {self.scale.shape}"
            )
        if np.any(self.scale == 0):
            raise BuildError("MLP scale must not contain zeros (use 1 for constant features)")
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise BuildError(
                    f"MLP layer {i}: expected weights ({width}, k) and bias (k,), "
                    f"got {w.shape} and {b.shape}"
                )
            width = w.shape[1]
        arrays = (self.mean, self.scale, *self.weights, *self.biases)
        if any(a.dtype != _F32 for a in arrays):
            raise BuildError("MLP arrays must all be float32")

    @property
    def n_features(self) -> int:
        """Width of the raw input."""
        return int(self.mean.shape[0])

    @property
    def n_classes(self) -> int:
        """Number of output classes."""
        return int(self.weights[-1].shape[1])

    @property
    def hidden(self) -> tuple[int, ...]:
        """Widths of the hidden layers."""
        return tuple(int(w.shape[1]) for w in self.weights[:-1])

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros over all weight matrices (biases excluded)."""
        total = sum(w.size for w in self.weights)
        zeros = sum(int(np.count_nonzero(w == 0)) for w in self.weights)
        return zeros / total

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Pre-softmax scores, float32 ``(n, n_classes)``, for raw features ``X``."""
        h: np.ndarray = (np.asarray(X, dtype=_F32) - self.mean) / self.scale
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < last:
                h = np.maximum(h, 0)
        return h

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, float32 ``(n, n_classes)``; rows sum to 1."""
        return _softmax(self.logits(X)).astype(_F32, copy=False)


@dataclass(frozen=True)
class TrainConfig:
    """How to train a student: architecture, Adam schedule and seed.

    ``weight_decay`` is an L2 penalty on the weight matrices (not the biases) added to the
    gradient, as in ``torch.optim.Adam``. ``hidden`` is ignored when training continues
    from an existing MLP.

    Example::

        TrainConfig(hidden=(128, 64), epochs=50, batch_size=128, seed=1)
    """

    hidden: tuple[int, ...] = (64,)
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if any(h < 1 for h in self.hidden):
            raise BuildError(f"hidden layer widths must be >= 1, got {self.hidden}")
        if self.epochs < 1:
            raise BuildError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise BuildError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise BuildError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise BuildError(f"weight_decay must be >= 0, got {self.weight_decay}")


def _soften(teacher_proba: np.ndarray, temperature: float) -> np.ndarray:
    # The teacher may be a forest, whose outputs are probabilities rather than logits, so
    # its log-probabilities stand in for logits before the temperature is applied.
    log_p = np.log(teacher_proba.astype(np.float64) + _TEACHER_FLOOR)
    return _softmax(log_p / temperature).astype(_F32)


def _loss_and_grad(
    logits: np.ndarray,
    y: np.ndarray,
    soft_targets: np.ndarray | None,
    *,
    alpha: float,
    temperature: float,
) -> tuple[float, np.ndarray]:
    """Batch-mean loss and its gradient with respect to the logits.

    ``alpha * CE(y, softmax(z)) + (1 - alpha) * T**2 * KL(soft_targets || softmax(z / T))``;
    with ``soft_targets=None`` only the hard-label cross-entropy is used.
    """
    n = logits.shape[0]
    rows = np.arange(n)
    log_p = _log_softmax(logits)
    grad = np.exp(log_p)
    grad[rows, y] -= 1
    ce = float(-log_p[rows, y].mean())
    if soft_targets is None:
        return ce, grad / n
    t = temperature
    log_q_t = _log_softmax(logits / t)
    entropy_terms = soft_targets * np.log(np.maximum(soft_targets, np.finfo(_F32).tiny))
    kl = float((entropy_terms - soft_targets * log_q_t).sum(axis=1).mean())
    # d/dz of T**2 * KL(p || softmax(z / T)) is T * (softmax(z / T) - p).
    grad = alpha * grad + (1 - alpha) * t * (np.exp(log_q_t) - soft_targets)
    return alpha * ce + (1 - alpha) * t * t * kl, grad / n


def _validate_data(X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if n_classes < 2:
        raise BuildError(f"n_classes must be >= 2, got {n_classes}")
    X = np.asarray(X, dtype=_F32)
    y = np.asarray(y)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise BuildError(f"X must be a non-empty 2-D array, got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise BuildError(f"y must have shape ({X.shape[0]},) to match X, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise BuildError(f"y must hold integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= n_classes:
        raise BuildError(
            f"y must hold class indices in [0, {n_classes}), got [{y.min()}, {y.max()}]"
        )
    if not np.isfinite(X).all():
        raise BuildError("X contains NaN or infinite values")
    return X, y.astype(np.intp)


def _validate_teacher(teacher_proba: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    p = np.asarray(teacher_proba, dtype=np.float64)
    if p.shape != (n, n_classes):
        raise BuildError(f"teacher_proba must have shape ({n}, {n_classes}), got {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0:
        raise BuildError("teacher_proba must hold finite, non-negative probabilities")
    return p


def _standardisation(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0, dtype=np.float64)
    std = X.std(axis=0, dtype=np.float64)
    varying = std[std > np.finfo(_F32).tiny]
    # Rare features (a one-hot soil type, an edge pixel) have a tiny std, so dividing by it
    # turns their rare 1s into values of 30-190 that dominate activation ranges: INT8
    # dynamic quantization of the covertype student then lost 2.1 points. Flooring every
    # scale at the median std keeps them in range (int8 loss 0.1 points, fp32 unchanged).
    floor = float(np.median(varying)) if varying.size else 1.0
    scale = np.maximum(std, floor)
    return mean.astype(_F32), scale.astype(_F32)


def _he_init(
    rng: np.random.Generator, widths: tuple[int, ...]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    weights = [
        (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)).astype(_F32)
        for fan_in, fan_out in itertools.pairwise(widths)
    ]
    biases = [np.zeros(fan_out, dtype=_F32) for fan_out in widths[1:]]
    return weights, biases


def _check_masks(masks: tuple[np.ndarray, ...], weights: list[np.ndarray]) -> list[np.ndarray]:
    if len(masks) != len(weights):
        raise BuildError(f"expected {len(weights)} masks, one per weight matrix, got {len(masks)}")
    out = []
    for i, (m, w) in enumerate(zip(masks, weights, strict=True)):
        if m.shape != w.shape or m.dtype != np.bool_:
            raise BuildError(
                f"mask {i} must be boolean with shape {w.shape}, got {m.dtype} {m.shape}"
            )
        out.append(m.astype(_F32))
    return out


def _adam(
    *,
    Xs: np.ndarray,
    y: np.ndarray,
    soft_targets: np.ndarray | None,
    weights: list[np.ndarray],
    biases: list[np.ndarray],
    keep: list[np.ndarray] | None,
    config: TrainConfig,
    rng: np.random.Generator,
    alpha: float,
    temperature: float,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Minibatch Adam on standardised inputs; updates ``weights`` and ``biases`` in place."""
    params = [*weights, *biases]
    m1 = [np.zeros_like(p) for p in params]
    m2 = [np.zeros_like(p) for p in params]
    n_layers = len(weights)
    n = Xs.shape[0]
    step = 0
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            acts = [Xs[idx]]
            for i in range(n_layers - 1):
                acts.append(np.maximum(acts[-1] @ weights[i] + biases[i], 0))
            z = acts[-1] @ weights[-1] + biases[-1]
            st = None if soft_targets is None else soft_targets[idx]
            _, g = _loss_and_grad(z, y[idx], st, alpha=alpha, temperature=temperature)

            grads_w: list[np.ndarray] = []
            grads_b: list[np.ndarray] = []
            for i in reversed(range(n_layers)):
                grads_w.insert(0, acts[i].T @ g + config.weight_decay * weights[i])
                grads_b.insert(0, g.sum(axis=0))
                if i > 0:
                    g = (g @ weights[i].T) * (acts[i] > 0)
            if keep is not None:
                # Zeroing the masked gradients keeps Adam's moments for pruned weights at zero.
                for gw, k in zip(grads_w, keep, strict=True):
                    gw *= k

            step += 1
            lr_t = config.learning_rate * math.sqrt(1 - _ADAM_BETA2**step) / (1 - _ADAM_BETA1**step)
            for p, grad, a, b in zip(params, [*grads_w, *grads_b], m1, m2, strict=True):
                a *= _ADAM_BETA1
                a += (1 - _ADAM_BETA1) * grad
                b *= _ADAM_BETA2
                b += (1 - _ADAM_BETA2) * grad * grad
                p -= (lr_t * a / (np.sqrt(b) + _ADAM_EPS)).astype(_F32, copy=False)
            if keep is not None:
                for w, k in zip(weights, keep, strict=True):
                    w *= k
        if progress is not None:
            progress(epoch + 1, config.epochs)


def train_student(
    X: np.ndarray,
    y: np.ndarray,
    *,
    n_classes: int,
    config: TrainConfig = TrainConfig(),
    teacher_proba: np.ndarray | None = None,
    alpha: float = 0.5,
    temperature: float = 4.0,
    init: MLP | None = None,
    masks: tuple[np.ndarray, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MLP:
    """Train an MLP on ``(X, y)``, optionally distilling from a teacher's probabilities.

    With ``teacher_proba`` (rows aligned with ``X``) the loss is
    ``alpha * CE(y, softmax(z)) + (1 - alpha) * T**2 * KL(p_T || softmax(z / T))``, where
    ``p_T = softmax(log(teacher_proba + 1e-8) / T)``. Without it, or with ``alpha=1``, the
    student learns from the hard labels only. ``init`` continues training from an existing
    MLP (its standardisation and architecture are kept); ``masks`` (``True`` = keep) pin the
    masked weights at exactly zero throughout. ``progress(epoch, epochs)`` is called after
    each epoch with ``epoch`` counting from 1. The result depends only on the inputs and
    ``config.seed``.

    Example::

        forest = RandomForestClassifier(random_state=0).fit(X, y)
        mlp = train_student(X, y, n_classes=10, teacher_proba=forest.predict_proba(X),
                            alpha=0.5, temperature=4.0)
    """
    if not (math.isfinite(alpha) and 0 <= alpha <= 1):
        raise BuildError(f"alpha must be in [0, 1], got {alpha}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise BuildError(f"temperature must be > 0, got {temperature}")
    X, y = _validate_data(X, y, n_classes)
    n, n_features = X.shape
    soft_targets = None
    if teacher_proba is not None:
        p = _validate_teacher(teacher_proba, n, n_classes)
        if alpha < 1:
            soft_targets = _soften(p, temperature)

    rng = np.random.default_rng(config.seed)
    if init is None:
        mean, scale = _standardisation(X)
        weights, biases = _he_init(rng, (n_features, *config.hidden, n_classes))
    else:
        if (init.n_features, init.n_classes) != (n_features, n_classes):
            raise BuildError(
                f"init MLP maps {init.n_features} features to {init.n_classes} classes, "
                f"but the data has {n_features} features and {n_classes} classes"
            )
        mean, scale = init.mean, init.scale
        weights = [w.copy() for w in init.weights]
        biases = [b.copy() for b in init.biases]
    keep = None if masks is None else _check_masks(masks, weights)
    if keep is not None:
        for w, k in zip(weights, keep, strict=True):
            w *= k

    # Minibatch matrices are small: a multi-threaded BLAS spends more time handing work
    # between threads than computing, and on a busy 2-core machine it was up to 100x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        _adam(
            Xs=(X - mean) / scale,
            y=y,
            soft_targets=soft_targets,
            weights=weights,
            biases=biases,
            keep=keep,
            config=config,
            rng=rng,
            alpha=alpha,
            temperature=temperature,
            progress=progress,
        )
    return MLP(mean=mean, scale=scale, weights=tuple(weights), biases=tuple(biases))


def magnitude_prune(mlp: MLP, *, sparsity: float) -> tuple[MLP, tuple[np.ndarray, ...]]:
    """Zero the smallest-magnitude weights across all layers, reaching ``sparsity``.

    Pruning is global: one magnitude ranking over every weight matrix (biases are never
    pruned), so layers with many small weights lose more. Returns the pruned MLP and boolean
    keep-masks (``True`` = kept) to pass to :func:`train_student` for fine-tuning.

    Example::

        pruned, masks = magnitude_prune(mlp, sparsity=0.8)
        pruned.sparsity    # 0.8 (to within one weight)
        tuned = train_student(X, y, n_classes=10, init=pruned, masks=masks)
    """
    if not (math.isfinite(sparsity) and 0 <= sparsity < 1):
        raise BuildError(f"sparsity must be in [0, 1), got {sparsity}")
    flat = np.concatenate([np.abs(w).ravel() for w in mlp.weights])
    n_prune = round(sparsity * flat.size)
    # A stable sort breaks ties by position, so the count pruned is exact and repeatable.
    keep_flat = np.ones(flat.size, dtype=np.bool_)
    keep_flat[np.argsort(flat, kind="stable")[:n_prune]] = False
    masks: list[np.ndarray] = []
    offset = 0
    for w in mlp.weights:
        masks.append(keep_flat[offset : offset + w.size].reshape(w.shape))
        offset += w.size
    weights = tuple(np.where(m, w, _F32(0)) for w, m in zip(mlp.weights, masks, strict=True))
    pruned = MLP(mean=mlp.mean, scale=mlp.scale, weights=weights, biases=mlp.biases)
    return pruned, tuple(masks)


def student_to_onnx(mlp: MLP, *, input_name: str = "input", opset: int = 17) -> onnx.ModelProto:
    """Export an MLP to a self-contained ONNX graph with a single ``"probabilities"`` output.

    The graph takes raw float32 features ``[N, n_features]``, standardises them, runs the
    MatMul/Add/Relu layers and ends in ``Softmax(axis=-1)``, giving float32
    ``[N, n_classes]``. The model is checked with ``onnx.checker`` before it is returned.

    Example::

        model = student_to_onnx(mlp)
        onnx.save(model, "student.onnx")
        session = onnxruntime.InferenceSession("student.onnx")
        session.run(["probabilities"], {"input": X[:5]})[0].shape   # (5, n_classes)
    """
    if not input_name or input_name == _OUTPUT_NAME:
        raise BuildError(f"input_name must be non-empty and not {_OUTPUT_NAME!r}")
    latest = onnx.defs.onnx_opset_version()
    if not _MIN_OPSET <= opset <= latest:
        raise BuildError(f"opset must be in [{_MIN_OPSET}, {latest}], got {opset}")

    initializers = [
        numpy_helper.from_array(mlp.mean, "mean"),
        numpy_helper.from_array(mlp.scale, "scale"),
    ]
    nodes = [
        helper.make_node("Sub", [input_name, "mean"], ["centered"], name="center"),
        helper.make_node("Div", ["centered", "scale"], ["h0"], name="standardize"),
    ]
    last = len(mlp.weights) - 1
    h = "h0"
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        initializers += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes += [
            helper.make_node("MatMul", [h, f"W{i}"], [f"mm{i}"], name=f"matmul{i}"),
            helper.make_node("Add", [f"mm{i}", f"B{i}"], [f"z{i}"], name=f"add{i}"),
        ]
        if i < last:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i + 1}"], name=f"relu{i}"))
            h = f"h{i + 1}"
    nodes.append(helper.make_node("Softmax", [f"z{last}"], [_OUTPUT_NAME], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes,
        "cascade_student_mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", mlp.n_features])],
        [helper.make_tensor_value_info(_OUTPUT_NAME, TensorProto.FLOAT, ["N", mlp.n_classes])],
        initializer=initializers,
    )
    model = helper.make_model_gen_version(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="cascade",
        doc_string=(
            f"cascade MLP student: {mlp.n_features} features -> hidden {list(mlp.hidden)} "
            f"-> {mlp.n_classes} class probabilities"
        ),
    )
    helper.set_model_props(
        model,
        {
            "cascade.kind": "mlp_student",
            "cascade.n_features": str(mlp.n_features),
            "cascade.n_classes": str(mlp.n_classes),
            "cascade.hidden": ",".join(str(w) for w in mlp.hidden),
            "cascade.sparsity": f"{mlp.sparsity:.6f}",
        },
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise BuildError(f"exported student graph is invalid: {exc}") from exc
    return model
