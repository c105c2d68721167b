"""IR → ONNX, so an optimized graph can be run (and checked) by ONNX Runtime.

IR ops carry the newest ONNX semantics of the same name, so export is mostly one node per
node; the opset is the lowest that covers every op in the graph.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..ir import DType, Graph, UnsupportedOpError
from .onnx_import import DTYPE_TO_ONNX

BASE_OPSET = 18
# Ops that first appear (in the semantics the IR uses) after the base opset.
_OP_MIN_OPSET = {"Gelu": 20, "RMSNormalization": 23, "Attention": 23}
# IR ops with no ONNX counterpart; exported through a decomposition.
_DECOMPOSED = {"Silu"}
# The ONNX checker's IR version for the opsets we emit (ONNX Runtime rejects newer ones).
_IR_VERSION = 10
_EXTERNAL_DATA_THRESHOLD = 1 << 30


def to_onnx(graph: Graph, opset: int | None = None) -> onnx.ModelProto:
    """Build an ONNX model equivalent to ``graph``."""
    needed = max([BASE_OPSET] + [_OP_MIN_OPSET.get(n.op, 0) for n in graph.nodes])
    opset = opset or needed
    if opset < needed:
        raise UnsupportedOpError(f"the graph needs opset {needed}; {opset} was asked for")
    tensors: dict[int, gs.Tensor] = {}

    def tensor(v) -> gs.Tensor:
        if v is None:
            return gs.Variable.empty()
        t = tensors.get(id(v))
        if t is None:
            if v.is_constant:
                t = gs.Constant(v.name, v.const)  # already C-contiguous; keeps 0-d arrays 0-d
            else:
                t = gs.Variable(v.name, dtype=v.dtype.numpy, shape=_dims(v.type.shape))
            tensors[id(v)] = t
        return t

    nodes = []
    for n in graph.nodes:
        if n.op in _DECOMPOSED:
            nodes.extend(_decompose(n, tensor))
            continue
        nodes.append(gs.Node(n.op, name=n.name, attrs=_attrs(n), inputs=[tensor(v) for v in _trim(n.inputs)],
                             outputs=[tensor(v) for v in n.outputs]))
    inputs = [tensor(v) for v in graph.inputs]
    outputs = []
    for v in graph.outputs:
        t = tensor(v)
        if isinstance(t, gs.Constant) or v.is_graph_input:
            # ONNX outputs must be produced by a node: route through Identity.
            out = gs.Variable(graph.unique_name(v.name + "_out"), dtype=v.dtype.numpy, shape=_dims(v.type.shape))
            nodes.append(gs.Node("Identity", inputs=[t], outputs=[out]))
            t = out
        outputs.append(t)
    g = gs.Graph(nodes=nodes, inputs=inputs, outputs=outputs, name=graph.name, opset=opset)
    model = gs.export_onnx(g, do_type_check=False)
    model.ir_version = _IR_VERSION
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", opset))
    model.producer_name = "optc"
    return model


def save_onnx(graph: Graph, path: str | os.PathLike, opset: int | None = None) -> Path:
    """Write the graph as an ONNX file atomically (temp file, then rename)."""
    path = Path(path)
    model = to_onnx(graph, opset)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        big = sum(v.const.nbytes for v in graph.constants.values()) > _EXTERNAL_DATA_THRESHOLD
        onnx.save(model, tmp, save_as_external_data=big, location=path.name + ".data" if big else None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _dims(shape):
    if shape is None:
        return None
    return list(shape)


def _trim(inputs):
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs


def _attrs(node) -> dict:
    out = {}
    for key, value in node.attrs.items():
        if value is None:
            continue
        if isinstance(value, DType):
            value = DTYPE_TO_ONNX[value]
        elif isinstance(value, np.ndarray):
            value = gs.Constant(f"{node.name}_{key}", value)
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def _decompose(node, tensor) -> list[gs.Node]:
    if node.op == "Silu":
        x, y = tensor(node.inputs[0]), tensor(node.output)
        s = gs.Variable(node.name + "_sigmoid", dtype=node.output.dtype.numpy)
        return [gs.Node("Sigmoid", inputs=[x], outputs=[s]), gs.Node("Mul", name=node.name, inputs=[x, s], outputs=[y])]
    raise UnsupportedOpError(f"op {node.op} cannot be exported to ONNX")
