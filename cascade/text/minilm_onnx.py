"""all-MiniLM-L6-v2 as one ONNX graph, written node by node with ``onnx.helper`` (no torch).

The graph takes ``input_ids`` and ``attention_mask`` (int64 ``[batch, seq]``, as
:class:`~cascade.text.Tokenizer` returns them) and outputs ``embedding`` (float32
``[batch, 384]``): the BERT encoder, mean pooling over ``attention_mask`` and L2
normalisation, as sentence-transformers computes it. With a linear ``head`` it outputs
``probabilities`` ``[batch, n_classes]`` instead, so a text tier is one file: tokens in,
probabilities out.

Token types are not an input: single texts are all segment 0, so row 0 of the token-type
table is added to the position table at build time (the sum BERT computes per token anyway).

Nodes follow the layout of Hugging Face's BERT export (Q/K/V MatMul+Add+Reshape+Transpose,
Div by sqrt(head size), additive mask ``(1 - mask) * -10000``, erf GELU, Add +
LayerNormalization), the pattern onnxruntime's transformer optimizer fuses into Attention,
SkipLayerNormalization, BiasGelu and EmbedLayerNormalization (see :mod:`cascade.text.optimize`).

Example::

    source_dir = fetch_minilm()
    build_minilm_onnx("minilm.onnx", source_dir=source_dir)
    build_minilm_onnx("intent.onnx", source_dir=source_dir, head=(W, b))  # W [384, C], b [C]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from cascade.errors import BuildError
from cascade.text.minilm_source import SAFETENSORS_SHA256, WHEEL_PROJECT, WHEEL_VERSION
from cascade.text.minilm_source import verify_minilm as _verify

__all__ = ["MASK_FILL", "OPSET", "MiniLMConfig", "build_minilm_graph", "build_minilm_onnx"]

OPSET = 17
"""ONNX opset: the first with LayerNormalization; run by every onnxruntime cascade supports."""
_IR_VERSION = 8  # the IR version that introduced opset 17; newer runtimes read it too

MASK_FILL = -10000.0
"""Added to attention scores of padding; exp(-10000) is 0 in float32, and onnxruntime's fused
Attention uses the same value, so fusion changes nothing."""

_POOLING_EPS = 1e-9  # sentence-transformers clamps the token count to at least this
_NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default

Head = tuple[npt.ArrayLike, npt.ArrayLike]


@dataclass(frozen=True)
class MiniLMConfig:
    """The parts of ``config.json`` the graph depends on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_positions: int

    @classmethod
    def from_dir(cls, source_dir: Path) -> MiniLMConfig:
        """Read and check ``config.json`` and ``1_Pooling/config.json`` in ``source_dir``."""
        config = _read_json(source_dir / "config.json")
        pooling = _read_json(source_dir / "1_Pooling" / "config.json")
        expected = {
            "model_type": "bert",
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
        }
        for key, value in expected.items():
            if config.get(key, value) != value:
                raise BuildError(
                    f"{source_dir / 'config.json'}: {key} is {config.get(key)!r}, "
                    f"the graph builder supports only {value!r}"
                )
        if not pooling.get("pooling_mode_mean_tokens") or any(
            pooling.get(mode)
            for mode in (
                "pooling_mode_cls_token",
                "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
            )
        ):
            raise BuildError(
                f"{source_dir / '1_Pooling' / 'config.json'}: only plain mean pooling is supported"
            )
        try:
            made = cls(
                hidden_size=int(config["hidden_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]),
                intermediate_size=int(config["intermediate_size"]),
                layer_norm_eps=float(config["layer_norm_eps"]),
                max_positions=int(config["max_position_embeddings"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BuildError(f"{source_dir / 'config.json'}: bad or missing field {exc}") from exc
        if made.hidden_size % made.num_heads:
            raise BuildError(
                f"{source_dir / 'config.json'}: hidden_size ({made.hidden_size}) must be a "
                f"multiple of num_attention_heads ({made.num_heads})"
            )
        return made

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path}: cannot be read as JSON: {exc}") from exc
    if not isinstance(loaded, dict):
        raise BuildError(f"{path}: expected a JSON object")
    return loaded


def _read_weights(path: Path) -> dict[str, npt.NDArray[Any]]:
    try:
        from safetensors.numpy import load_file
    except ImportError as exc:
        raise ImportError('the MiniLM tier needs safetensors: pip install "cascade[text]"') from exc
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise BuildError(f"{path}: cannot read safetensors: {exc}") from exc


class _Graph:
    """Accumulates nodes and initializers under unique, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self._count = 0

    def const(self, name: str, value: npt.ArrayLike, dtype: npt.DTypeLike = np.float32) -> str:
        """Add an initializer once; later calls with the same name reuse it."""
        if name not in self.initializers:
            array = np.array(value, dtype=dtype, order="C")  # keeps 0-d scalars 0-d
            self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def op(self, op_type: str, inputs: list[str], *, out: str | None = None, **attrs: Any) -> str:
        self._count += 1
        name = f"{op_type}_{self._count}"
        output = out if out is not None else f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output


class _Weights:
    """Looks tensors up by name and says which one is missing or misshaped."""

    def __init__(self, tensors: Mapping[str, npt.NDArray[Any]], where: Path) -> None:
        self._tensors = tensors
        self._where = where

    def get(self, name: str, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        if name not in self._tensors:
            raise BuildError(f"{self._where}: no tensor {name!r}")
        array = self._tensors[name]
        if tuple(array.shape) != shape:
            raise BuildError(
                f"{self._where}: tensor {name!r} has shape {list(array.shape)}, "
                f"expected {list(shape)}"
            )
        return np.asarray(array, dtype=np.float32)


def _linear(g: _Graph, x: str, w: _Weights, prefix: str, n_in: int, n_out: int) -> str:
    """x @ W.T + b, with W stored [out, in] as in PyTorch, transposed once at build time."""
    weight = g.const(f"{prefix}.weight_t", w.get(f"{prefix}.weight", (n_out, n_in)).T)
    bias = g.const(f"{prefix}.bias", w.get(f"{prefix}.bias", (n_out,)))
    return g.op("Add", [g.op("MatMul", [x, weight]), bias])


def _layer_norm(g: _Graph, x: str, w: _Weights, prefix: str, cfg: MiniLMConfig) -> str:
    gamma = g.const(f"{prefix}.weight", w.get(f"{prefix}.weight", (cfg.hidden_size,)))
    beta = g.const(f"{prefix}.bias", w.get(f"{prefix}.bias", (cfg.hidden_size,)))
    return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=cfg.layer_norm_eps)


def _embeddings(g: _Graph, w: _Weights, cfg: MiniLMConfig, vocab_size: int) -> str:
    h = cfg.hidden_size
    words = w.get("embeddings.word_embeddings.weight", (vocab_size, h))
    positions = w.get("embeddings.position_embeddings.weight", (cfg.max_positions, h))
    token_types = w.get("embeddings.token_type_embeddings.weight", (2, h))
    word = g.op("Gather", [g.const("embeddings.word_embeddings.weight", words), "input_ids"])
    # Positions 0..seq-1 as Hugging Face exports them: a [1, max_positions] constant sliced to
    # the input's length. The optimizer recognises exactly this subgraph.
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const("one", 1, np.int64)], axis=0)
    seq_end = g.op("Unsqueeze", [seq_len, g.const("axes_0", [0], np.int64)])
    position_ids = g.op(
        "Slice",
        [
            g.const("position_ids", np.arange(cfg.max_positions)[None, :], np.int64),
            g.const("slice_start", [0], np.int64),
            seq_end,
            g.const("slice_axis", [1], np.int64),
            g.const("slice_step", [1], np.int64),
        ],
    )
    table = g.const("embeddings.position_plus_token_type", positions + token_types[0])
    position = g.op("Gather", [table, position_ids])
    return _layer_norm(g, g.op("Add", [word, position]), w, "embeddings.LayerNorm", cfg)


def _mask_bias(g: _Graph) -> str:
    """(1 - mask) * MASK_FILL as [batch, 1, 1, seq], shared by every layer."""
    rows = g.op("Unsqueeze", ["attention_mask", g.const("axes_1", [1], np.int64)])
    expanded = g.op("Unsqueeze", [rows, g.const("axes_2", [2], np.int64)])
    as_float = g.op("Cast", [expanded], to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.const("one_f", 1.0), as_float])
    return g.op("Mul", [inverted, g.const("mask_fill", MASK_FILL)])


def _attention(g: _Graph, x: str, mask_bias: str, w: _Weights, i: int, cfg: MiniLMConfig) -> str:
    h, heads = cfg.hidden_size, cfg.num_heads
    prefix = f"encoder.layer.{i}.attention"
    split = g.const(f"layer{i}.split_heads", [0, 0, heads, cfg.head_size], np.int64)

    def project(name: str, perm: list[int]) -> str:
        projected = _linear(g, x, w, f"{prefix}.self.{name}", h, h)
        return g.op("Transpose", [g.op("Reshape", [projected, split])], perm=perm)

    q = project("query", [0, 2, 1, 3])  # [b, heads, seq, d]
    k = project("key", [0, 2, 3, 1])  # [b, heads, d, seq]
    v = project("value", [0, 2, 1, 3])
    scores = g.op(
        "Div", [g.op("MatMul", [q, k]), g.const(f"layer{i}.sqrt_d", math.sqrt(cfg.head_size))]
    )
    probs = g.op("Softmax", [g.op("Add", [scores, mask_bias])], axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [context, g.const(f"layer{i}.merge_heads", [0, 0, h], np.int64)])
    out = _linear(g, merged, w, f"{prefix}.output.dense", h, h)
    return _layer_norm(g, g.op("Add", [out, x]), w, f"{prefix}.output.LayerNorm", cfg)


def _feed_forward(g: _Graph, x: str, w: _Weights, i: int, cfg: MiniLMConfig) -> str:
    prefix = f"encoder.layer.{i}"
    inner = _linear(g, x, w, f"{prefix}.intermediate.dense", cfg.hidden_size, cfg.intermediate_size)
    # Exact GELU, x * 0.5 * (1 + erf(x / sqrt(2))), in the node order the optimizer fuses.
    erf = g.op("Erf", [g.op("Div", [inner, g.const("sqrt_2", math.sqrt(2.0))])])
    shifted = g.op("Add", [erf, g.const("one_f", 1.0)])
    gelu = g.op("Mul", [g.op("Mul", [inner, shifted]), g.const("half", 0.5)])
    out = _linear(g, gelu, w, f"{prefix}.output.dense", cfg.intermediate_size, cfg.hidden_size)
    return _layer_norm(g, g.op("Add", [out, x]), w, f"{prefix}.output.LayerNorm", cfg)


def _mean_pool_normalize(g: _Graph, hidden: str, *, out: str) -> str:
    weights = g.op(
        "Unsqueeze",
        [
            g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT),
            g.const("axes_m1", [-1], np.int64),
        ],
    )  # [b, seq, 1]
    axis = g.const("axes_1", [1], np.int64)
    summed = g.op("ReduceSum", [g.op("Mul", [hidden, weights]), axis], keepdims=0)
    count = g.op("ReduceSum", [weights, axis], keepdims=0)  # [b, 1]
    mean = g.op("Div", [summed, g.op("Max", [count, g.const("pool_eps", _POOLING_EPS)])])
    norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [mean, mean]), axis], keepdims=1)])
    clamped = g.op("Max", [norm, g.const("norm_eps", _NORMALIZE_EPS)])
    return g.op("Div", [mean, clamped], out=out)


def _check_head(
    head: Head, hidden_size: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    weight = np.asarray(head[0], dtype=np.float32)
    bias = np.asarray(head[1], dtype=np.float32)
    if weight.ndim != 2 or weight.shape[0] != hidden_size or weight.shape[1] < 1:
        raise BuildError(
            f"head weight must have shape [{hidden_size}, n_classes], got {list(weight.shape)}"
        )
    if bias.shape != (weight.shape[1],):
        raise BuildError(
            f"head bias must have shape [{weight.shape[1]}] to match the weight, "
            f"got {list(bias.shape)}"
        )
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise BuildError("head weight and bias must be finite")
    return weight, bias


def build_minilm_graph(
    source_dir: str | os.PathLike[str], *, head: Head | None = None, verify: bool = True
) -> onnx.ModelProto:
    """Build the graph in memory; :func:`build_minilm_onnx` writes it. Checks sha256 first.

    Example::

        model = build_minilm_graph(fetch_minilm())
        [o.name for o in model.graph.output]     # ['embedding']
    """
    directory = Path(source_dir)
    if verify:
        _verify(directory)
    cfg = MiniLMConfig.from_dir(directory)
    checked_head = _check_head(head, cfg.hidden_size) if head is not None else None
    tensors = _read_weights(directory / "model.safetensors")
    weights = _Weights(tensors, directory / "model.safetensors")
    vocab_size = int(tensors.get("embeddings.word_embeddings.weight", np.empty((0, 0))).shape[0])

    g = _Graph()
    hidden = _embeddings(g, weights, cfg, vocab_size)
    mask_bias = _mask_bias(g)
    for i in range(cfg.num_layers):
        hidden = _feed_forward(
            g, _attention(g, hidden, mask_bias, weights, i, cfg), weights, i, cfg
        )

    tokens = ["batch", "sequence"]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, tokens),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, tokens),
    ]
    if checked_head is None:
        _mean_pool_normalize(g, hidden, out="embedding")
        outputs = [
            helper.make_tensor_value_info(
                "embedding", TensorProto.FLOAT, ["batch", cfg.hidden_size]
            )
        ]
    else:
        weight, bias = checked_head
        embedding = _mean_pool_normalize(g, hidden, out="embedding")
        logits = g.op(
            "Add",
            [
                g.op("MatMul", [embedding, g.const("head.weight", weight)]),
                g.const("head.bias", bias),
            ],
        )
        g.op("Softmax", [logits], axis=-1, out="probabilities")
        outputs = [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["batch", weight.shape[1]]
            )
        ]

    graph = helper.make_graph(
        g.nodes, "cascade_minilm_l6", inputs, outputs, list(g.initializers.values())
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cascade"
    )
    model.ir_version = _IR_VERSION
    metadata = {
        "source": f"{WHEEL_PROJECT}=={WHEEL_VERSION} (sentence-transformers/all-MiniLM-L6-v2)",
        "safetensors_sha256": SAFETENSORS_SHA256,
        "pooling": "mean over attention_mask, then L2 normalisation",
        "token_type_ids": "all 0, folded into the position table",
        "output": "embedding" if checked_head is None else "probabilities",
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise BuildError(f"the MiniLM graph is invalid: {exc}") from exc
    return model


def build_minilm_onnx(
    out_path: str | os.PathLike[str],
    *,
    source_dir: str | os.PathLike[str],
    head: Head | None = None,
) -> Path:
    """Write all-MiniLM-L6-v2 (optionally with a linear softmax head) as one ONNX file.

    ``source_dir`` is a folder from :func:`~cascade.text.fetch_minilm`; its files are checked
    against their pinned sha256 first. ``head`` is ``(W, b)`` with ``W`` of shape
    ``[384, n_classes]`` and ``b`` of shape ``[n_classes]``: the graph then outputs
    ``probabilities = softmax(embedding @ W + b)`` instead of ``embedding``. Returns the path.
    The file is about 91 MB (float32 weights, the 30,522 x 384 word table being half of it).

    Example::

        path = build_minilm_onnx("models/minilm.onnx", source_dir=fetch_minilm())
        session = onnxruntime.InferenceSession(path)
        (embedding,) = session.run(None, tokenizer(["play some jazz"]).feeds())
    """
    model = build_minilm_graph(source_dir, head=head)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save_model(model, tmp)
    os.replace(tmp, out)
    return out
