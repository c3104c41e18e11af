"""Faster variants of the MiniLM graph, and a table of what each costs and loses.

Variants (all take the same inputs and give the same output as the built graph):

- ``fp32``: the graph as :func:`~cascade.text.build_minilm_onnx` wrote it; onnxruntime still
  applies its own graph optimisations (``ORT_ENABLE_ALL``) when a session loads it.
- ``fused``: onnxruntime's transformer optimizer (``model_type="bert"``) rewrites it into
  contrib ops: EmbedLayerNormalization, Attention, BiasGelu, SkipLayerNormalization.
  :func:`fuse_minilm` refuses a result where those fusions did not all happen.
- ``int8``: dynamic INT8 quantization (weights QInt8 per channel, activations per tensor at
  run time) of ``fused``.

Example::

    paths = build_variants("minilm.onnx", "variants/")
    rows = measure_variants(paths, texts, tokenizer)
    print(format_variant_table(rows))
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cascade.backends.tokenize import Tokenizer
from cascade.errors import BuildError

__all__ = [
    "VARIANTS",
    "VariantRow",
    "build_variants",
    "embed_texts",
    "format_variant_table",
    "fuse_minilm",
    "measure_variants",
    "minilm_session",
    "quantize_minilm",
]

VARIANTS = ("fp32", "fused", "int8")
_FUSED_OPS = ("EmbedLayerNormalization", "Attention", "BiasGelu", "SkipLayerNormalization")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute onnxruntime.transformers' advice ("producer not matched", shape inference notes).

    Its fusions log through a dozen module-level loggers that propagate to the root, so a
    filter would have to be set on each; a brief global ``logging.disable`` is narrower in
    practice, since building variants is an offline, single-threaded step.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _count_ops(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node))


def fuse_minilm(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    num_heads: int = 12,
    hidden_size: int = 384,
    num_layers: int = 6,
) -> dict[str, int]:
    """Write the fused graph to ``dst``; return its op counts.

    Symbolic shape inference (it needs sympy) is switched off: the graph's pattern is
    matched without it. Raises :class:`BuildError` when any of EmbedLayerNormalization (1),
    Attention (one per layer), BiasGelu (one per layer) or SkipLayerNormalization (two per
    layer) is missing, so a graph the optimizer no longer recognises fails loudly.

    Example::

        fuse_minilm("minilm.onnx", "minilm.fused.onnx")["Attention"]   # 6
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    source, out = Path(src), Path(dst)
    options = FusionOptions("bert")
    options.enable_shape_inference = False
    try:
        with _quiet():
            model = optimize_model(
                str(source),
                model_type="bert",
                num_heads=num_heads,
                hidden_size=hidden_size,
                optimization_options=options,
                opt_level=0,  # Python fusions only; sessions apply ORT's own passes on load
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            model.save_model_to_file(str(out))
    except Exception as exc:  # the optimizer raises assertion, value and onnx errors alike
        raise BuildError(
            f"{source}: transformer fusion failed: {type(exc).__name__}: {exc}"
        ) from exc
    counts = _count_ops(out)
    wanted = {
        "EmbedLayerNormalization": 1,
        "Attention": num_layers,
        "BiasGelu": num_layers,
        "SkipLayerNormalization": 2 * num_layers,
    }
    missing = {op: n for op, n in wanted.items() if counts.get(op, 0) != n}
    if missing:
        found = {op: counts.get(op, 0) for op in wanted}
        raise BuildError(
            f"{source}: onnxruntime's optimizer did not fuse the expected pattern: "
            f"found {found}, expected {wanted}"
        )
    return counts


def quantize_minilm(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, per_channel: bool = True
) -> Path:
    """Dynamic INT8 quantization (weights QInt8) of a MiniLM graph, fused or not.

    Per-channel weight scales are the default: on CLINC150 queries per-tensor scales left a
    mean cosine to fp32 of 0.963 (min 0.91), per-channel 0.993 (min 0.984). The error is
    spread over every layer and projection, so excluding a few MatMuls does not fix it.
    Writes ``dst`` and returns it; raises :class:`BuildError` naming ``src`` on failure.

    Example::

        quantize_minilm("minilm.fused.onnx", "minilm.int8.onnx")
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, out = Path(src), Path(dst)
    if not source.is_file():
        raise BuildError(f"{source}: no such ONNX file")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet():
            quantize_dynamic(
                source,
                out,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                # onnx's shape inference cannot type the outputs of com.microsoft ops
                # (Attention, SkipLayerNormalization); all activations here are float32.
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
    except Exception as exc:  # onnxruntime.quantization raises RuntimeError, ValueError, ...
        raise BuildError(f"{source}: dynamic INT8 quantization failed: {exc}") from exc
    return out


def build_variants(
    fp32_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    int8_from: Literal["fp32", "fused"] = "fused",
) -> dict[str, Path]:
    """Write the ``fused`` and ``int8`` variants of ``fp32_path`` into ``out_dir``.

    Returns ``{"fp32": fp32_path, "fused": ..., "int8": ...}``.

    Example::

        build_variants("minilm.onnx", "variants/")["int8"]   # variants/minilm.int8.onnx
    """
    fp32 = Path(fp32_path)
    if not fp32.is_file():
        raise BuildError(f"{fp32}: no such ONNX file")
    directory = Path(out_dir)
    stem = fp32.name.removesuffix(".onnx")
    fused = directory / f"{stem}.fused.onnx"
    int8 = directory / f"{stem}.int8.onnx"
    fuse_minilm(fp32, fused)
    quantize_minilm(fused if int8_from == "fused" else fp32, int8)
    return {"fp32": fp32, "fused": fused, "int8": int8}


def minilm_session(path: str | os.PathLike[str], *, threads: int = 1) -> Any:
    """An onnxruntime CPU session with all graph optimisations and ``threads`` intra-op threads.

    Example::

        session = minilm_session("minilm.int8.onnx", threads=2)
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
        raise BuildError(f"{path}: onnxruntime cannot load it: {exc}") from exc


def embed_texts(
    session: Any, tokenizer: Tokenizer, texts: Sequence[str], *, batch_size: int = 32
) -> npt.NDArray[np.float32]:
    """Run ``texts`` through ``session`` in batches; returns its first output, stacked.

    Example::

        vectors = embed_texts(minilm_session("minilm.onnx"), tokenizer, ["hi", "bye"])
    """
    output = session.get_outputs()[0].name
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size])
        parts.append(session.run([output], batch.feeds())[0])
    return np.concatenate(parts).astype(np.float32, copy=False)


@dataclass(frozen=True)
class VariantRow:
    """What one variant costs and how far it drifts from the reference variant.

    Latencies are milliseconds per query: ``b1_ms`` the median single-query call,
    ``b32_ms`` the median batch-of-32 call divided by 32; both keyed by intra-op threads.
    """

    variant: str
    size_bytes: int
    b1_ms: dict[int, float]
    b32_ms: dict[int, float]
    cosine_min: float
    cosine_mean: float
    accuracy: float | None
    ops: dict[str, int] = field(default_factory=dict)


def _p50_per_query(session: Any, batches: Sequence[dict[str, Any]], runs: int) -> float:
    output = session.get_outputs()[0].name
    for feeds in batches[: min(5, len(batches))]:  # warm-up
        session.run([output], feeds)
    times = []
    for i in range(runs):
        feeds = batches[i % len(batches)]
        start = time.perf_counter()
        session.run([output], feeds)
        times.append((time.perf_counter() - start) / len(feeds["input_ids"]))
    return statistics.median(times) * 1e3


def measure_variants(
    paths: Mapping[str, str | os.PathLike[str]],
    texts: Sequence[str],
    tokenizer: Tokenizer,
    *,
    threads: Sequence[int] = (1, 2),
    reference: str = "fp32",
    head: tuple[npt.ArrayLike, npt.ArrayLike] | None = None,
    labels: npt.ArrayLike | None = None,
    single_runs: int = 200,
    batch_runs: int = 20,
) -> list[VariantRow]:
    """Measure each variant on ``texts``; one :class:`VariantRow` per entry of ``paths``.

    Cosine compares each text's embedding with the ``reference`` variant's. With ``head``
    ``(W [384, C], b [C])`` and ``labels``, ``accuracy`` is that of ``argmax(e @ W + b)``.
    Tokenisation is outside the timed calls. The graphs must output embeddings.

    Example::

        rows = measure_variants(paths, test_texts[:200], tokenizer)
    """
    if reference not in paths:
        raise BuildError(f"reference variant {reference!r} is not among {sorted(paths)}")
    if (head is None) != (labels is None):
        raise BuildError("head and labels go together: pass both or neither")
    items = list(texts)
    if len(items) < 32:
        raise BuildError(f"need at least 32 texts to time batches of 32, got {len(items)}")
    singles = [tokenizer([t]).feeds() for t in items]
    batches = [tokenizer(items[i : i + 32]).feeds() for i in range(0, len(items) - 31, 32)]
    embeddings = {
        name: embed_texts(minilm_session(path, threads=max(threads)), tokenizer, items)
        for name, path in paths.items()
    }
    base = embeddings[reference].astype(np.float64)
    rows = []
    for name, path in paths.items():
        b1, b32 = {}, {}
        for n in threads:
            session = minilm_session(path, threads=n)
            b1[n] = _p50_per_query(session, singles, single_runs)
            b32[n] = _p50_per_query(session, batches, batch_runs)
        vectors = embeddings[name].astype(np.float64)
        cosine = (vectors * base).sum(axis=1) / (
            np.linalg.norm(vectors, axis=1) * np.linalg.norm(base, axis=1)
        )
        accuracy = None
        if head is not None and labels is not None:
            weight, bias = np.asarray(head[0]), np.asarray(head[1])
            predicted = np.argmax(vectors @ weight + bias, axis=1)
            accuracy = float(np.mean(predicted == np.asarray(labels)))
        rows.append(
            VariantRow(
                variant=name,
                size_bytes=Path(path).stat().st_size,
                b1_ms=b1,
                b32_ms=b32,
                cosine_min=float(cosine.min()),
                cosine_mean=float(cosine.mean()),
                accuracy=accuracy,
                ops={op: n for op, n in _count_ops(Path(path)).items() if op in _FUSED_OPS},
            )
        )
    return rows


def format_variant_table(rows: Sequence[VariantRow]) -> str:
    """A plain-text table of :func:`measure_variants` rows.

    Example::

        print(format_variant_table(rows))
    """
    from cascade._table import table

    threads = sorted({n for row in rows for n in row.b1_ms})
    header = [
        "variant",
        "size",
        *[f"b1 ms {n}t" for n in threads],
        *[f"b32 ms/q {n}t" for n in threads],
        "cos min",
        "cos mean",
        "head acc",
    ]
    body = [
        [
            row.variant,
            f"{row.size_bytes / 1e6:.1f} MB",
            *[f"{row.b1_ms[n]:.2f}" for n in threads],
            *[f"{row.b32_ms[n]:.3f}" for n in threads],
            f"{row.cosine_min:.5f}",
            f"{row.cosine_mean:.5f}",
            f"{row.accuracy:.4f}" if row.accuracy is not None else "-",
        ]
        for row in rows
    ]
    return table(header, body)
