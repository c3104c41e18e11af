"""The one input of an ONNX file, read from its protobuf bytes without the ``onnx`` package.

The policy loader checks that every tier takes the same input. ``onnx`` (30 MB, part of the
training stack) is not in a serving install, and an onnxruntime session would build the
whole graph (hundreds of MB for a forest) to answer a question the file's header answers.
ONNX is protobuf; the few fields needed here are read straight off the wire format, skipping
every other field (weights included) by its length.

The fields read (``onnx.proto``)::

    ModelProto.graph = 7             GraphProto.initializer = 5 (TensorProto.name = 8)
    GraphProto.input = 11            GraphProto.sparse_initializer = 15 (.values = 1)
    ValueInfoProto.name = 1, .type = 2
    TypeProto.tensor_type = 1        TypeProto.Tensor.elem_type = 1, .shape = 2
    TensorShapeProto.dim = 1         Dimension.dim_value = 1, .dim_param = 2
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ELEMENT_TYPES", "GraphInput", "graph_inputs"]

ELEMENT_TYPES = {
    1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    8: "string", 9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64",
    16: "bfloat16",
}  # fmt: skip
"""``TensorProto.DataType`` values, named as ``onnx.TensorProto.DataType.Name(...).lower()``."""


@dataclass(frozen=True)
class GraphInput:
    """One graph input: its name, element type (``None``: not a tensor) and dimensions
    (an ``int`` where the file fixes it, else ``None``)."""

    name: str
    element: str | None
    dims: tuple[int | None, ...]


def _varint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """``(field number, value)`` of one message: an int for varints, bytes for the rest."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, value
        elif wire == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise ValueError("truncated field")
            yield number, data[at : at + size]
            at += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, data[at : at + width]
            at += width
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _sub(data: memoryview, number: int) -> Iterator[memoryview]:
    for found, value in _fields(data):
        if found == number and isinstance(value, memoryview):
            yield value


def _string(data: memoryview, number: int) -> str | None:
    for value in _sub(data, number):
        return bytes(value).decode("utf-8")
    return None


def _input(value_info: memoryview) -> GraphInput:
    name = _string(value_info, 1) or ""
    for type_proto in _sub(value_info, 2):
        for tensor in _sub(type_proto, 1):
            element: str | None = "undefined"
            dims: list[int | None] = []
            for number, value in _fields(tensor):
                if number == 1 and isinstance(value, int):
                    element = ELEMENT_TYPES.get(value, f"type {value}")
                elif number == 2 and isinstance(value, memoryview):
                    for dim in _sub(value, 1):
                        fixed = [v for n, v in _fields(dim) if n == 1 and isinstance(v, int)]
                        dims.append(fixed[0] if fixed else None)
            return GraphInput(name, element, tuple(dims))
    return GraphInput(name, None, ())


def graph_inputs(model: bytes) -> list[GraphInput]:
    """The inputs of the ONNX model ``model`` (the file's bytes) that are not initializers.

    Raises ``ValueError`` when the bytes are not a well-formed protobuf message or hold no
    graph.

    Example::

        graph_inputs(Path("models/digits/tiny.onnx").read_bytes())
        # [GraphInput(name='input', element='float', dims=(None, 64))]
    """
    data = memoryview(model)
    graphs = list(_sub(data, 7))
    if not graphs:
        raise ValueError("no graph in the file")
    graph = graphs[-1]
    weights = {_string(t, 8) for t in _sub(graph, 5)}
    for sparse in _sub(graph, 15):
        weights |= {_string(t, 8) for t in _sub(sparse, 1)}
    return [item for item in map(_input, _sub(graph, 11)) if item.name not in weights]
