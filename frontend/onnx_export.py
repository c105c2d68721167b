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
# IR ops with no ONNX counterpart (fusion's composite ops among them); exported through a
# decomposition into standard ops, so any runtime can read the optimized graph.
_DECOMPOSED = {"Silu", "Linear", "AddLayerNorm", "FusedConv"}
_GELU_OPSET = 20
# The ONNX checker's IR version for the opsets we emit (ONNX Runtime rejects newer ones).
_IR_VERSION = 10
_EXTERNAL_DATA_THRESHOLD = 1 << 30


def to_onnx(graph: Graph, opset: int | None = None) -> onnx.ModelProto:
    """Build an ONNX model equivalent to ``graph``."""
    needed = max([BASE_OPSET] + [_min_opset(n) for n in graph.nodes])
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


def _min_opset(node) -> int:
    if node.op in ("Linear", "FusedConv") and node.attrs["activation"] in ("gelu", "gelu_tanh"):
        return _GELU_OPSET
    return _OP_MIN_OPSET.get(node.op, 0)


_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _decompose(node, tensor) -> list[gs.Node]:
    dt = node.outputs[0].dtype.numpy

    def temp(suffix: str) -> gs.Variable:
        return gs.Variable(f"{node.name}_{suffix}", dtype=dt)

    if node.op == "Silu":
        return _silu(node.name, tensor(node.inputs[0]), tensor(node.output), temp("sigmoid"))
    if node.op == "AddLayerNorm":  # Add, then LayerNormalization (stash float32, as the op)
        s = tensor(node.outputs[1]) if len(node.outputs) > 1 else temp("sum")
        ln_ins = [s] + [tensor(v) for v in _trim(node.inputs[2:])]
        attrs = {"axis": node.attrs["axis"], "epsilon": node.attrs["epsilon"], "stash_type": 11 if dt == np.float64 else 1}
        return [gs.Node("Add", name=node.name + "_add", inputs=[tensor(node.inputs[0]), tensor(node.inputs[1])], outputs=[s]),
                gs.Node("LayerNormalization", name=node.name, attrs=attrs, inputs=ln_ins, outputs=[tensor(node.outputs[0])])]
    if node.op == "Linear":  # MatMul [+ Add bias] [+ activation]
        out, act = tensor(node.output), node.attrs["activation"]
        has_b = node.input(2) is not None
        mm = out if not has_b and act == "none" else temp("matmul")
        nodes = [gs.Node("MatMul", name=node.name + "_matmul", inputs=[tensor(node.inputs[0]), tensor(node.inputs[1])], outputs=[mm])]
        y = mm
        if has_b:
            y = out if act == "none" else temp("bias")
            nodes.append(gs.Node("Add", name=node.name + "_bias", inputs=[mm, tensor(node.inputs[2])], outputs=[y]))
        return nodes + _activation(node, act, y, out, temp)
    if node.op == "FusedConv":  # Conv (with its bias) + activation
        out, act = tensor(node.output), node.attrs["activation"]
        y = out if act == "none" else temp("conv")
        attrs = {k: v for k, v in _attrs(node).items() if k in _CONV_ATTRS}
        conv = gs.Node("Conv", name=node.name + "_conv", attrs=attrs, inputs=[tensor(v) for v in _trim(node.inputs)], outputs=[y])
        return [conv] + _activation(node, act, y, out, temp)
    raise UnsupportedOpError(f"op {node.op} cannot be exported to ONNX")


def _silu(name: str, x, y, s) -> list[gs.Node]:
    return [gs.Node("Sigmoid", name=name + "_sigmoid", inputs=[x], outputs=[s]), gs.Node("Mul", name=name, inputs=[x, s], outputs=[y])]


def _activation(node, act: str, x, y, temp) -> list[gs.Node]:
    """The standard ONNX nodes of a fused ``activation`` epilogue from ``x`` to ``y``."""
    if act == "none":
        return []
    if act == "relu":
        return [gs.Node("Relu", name=node.name, inputs=[x], outputs=[y])]
    if act in ("gelu", "gelu_tanh"):
        approx = "tanh" if act == "gelu_tanh" else "none"
        return [gs.Node("Gelu", name=node.name, attrs={"approximate": approx}, inputs=[x], outputs=[y])]
    if act == "silu":
        return _silu(node.name, x, y, temp("sigmoid"))
    raise UnsupportedOpError(f"node {node.name} ({node.op}): activation {act!r} cannot be exported to ONNX")
