"""IR → ONNX, so an optimized graph can be run (and checked) by ONNX Runtime.

IR ops carry the newest ONNX semantics of the same name, so export is mostly one node per
node; the opset is the lowest that covers every op in the graph.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..ir import DType, Graph, UnsupportedOpError
from .onnx_export_quant import MS_DOMAIN, export_qlinear, qlinear_opset
from .onnx_import import DTYPE_TO_ONNX, quiet_graphsurgeon

BASE_OPSET = 18
# Ops that first appear (in the semantics the IR uses) after the base opset.
_OP_MIN_OPSET = {"Gelu": 20, "RMSNormalization": 23, "Attention": 23,
                 # ONNX loss / image / sequence ops (the IR holds their newest semantics)
                 "Resize": 19, "GridSample": 20, "AffineGrid": 20, "RotaryEmbedding": 23, "Swish": 24, "CumProd": 26,
                 "SwiGLU": 28}
# IR ops with no ONNX counterpart (fusion's composite ops among them); exported through a
# decomposition into standard ops, so any runtime can read the optimized graph.
_DECOMPOSED = {"Silu", "Linear", "AddLayerNorm", "FusedConv", "QLinear", "RotaryEmbedding"}
_GELU_OPSET = 20
# The ONNX checker's IR version for the opsets we emit (ONNX Runtime rejects newer ones).
_IR_VERSION = 10
_EXTERNAL_DATA_THRESHOLD = 1 << 30


def to_onnx(graph: Graph, opset: int | None = None) -> onnx.ModelProto:
    """Build an ONNX model equivalent to ``graph``."""
    with quiet_graphsurgeon():
        return _to_onnx(graph, opset)


def _to_onnx(graph: Graph, opset: int | None) -> onnx.ModelProto:
    needed = max([BASE_OPSET] + [_min_opset(n) for n in graph.nodes]
                 + [_lowest_opset("Identity", set(), [v.dtype], [v.dtype]) for v in graph.outputs  # routed outputs
                    if v.dtype.is_low_precision and (v.is_constant or v.is_graph_input)])
    opset = opset or needed
    if opset < needed:
        raise UnsupportedOpError(f"the graph needs opset {needed}; {opset} was asked for")
    tensors: dict[int, gs.Tensor] = {}

    def tensor(v) -> gs.Tensor:
        if v is None:
            return gs.Variable.empty()
        t = tensors.get(id(v))
        if t is None:
            if v.is_constant and v.dtype.is_low_precision:
                # graphsurgeon writes one byte per element; onnx packs sub-byte types (raw_data)
                t = gs.Constant(v.name, LazyValues(numpy_helper.from_array(v.const, v.name)))
            elif v.is_constant:
                t = gs.Constant(v.name, v.const)  # already C-contiguous; keeps 0-d arrays 0-d
            else:
                t = gs.Variable(v.name, dtype=_gs_dtype(v.dtype), shape=_dims(v.type.shape))
            tensors[id(v)] = t
        return t

    from .onnx_control_flow import export_node as export_special

    nodes = []
    for n in graph.nodes:
        special = export_special(n, tensor)  # If / Loop / Scan bodies; batch-major RNN/GRU/LSTM
        if special is not None:
            nodes.extend(special)
            continue
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
            out = gs.Variable(graph.unique_name(v.name + "_out"), dtype=_gs_dtype(v.dtype), shape=_dims(v.type.shape))
            nodes.append(gs.Node("Identity", inputs=[t], outputs=[out]))
            t = out
        outputs.append(t)
    g = gs.Graph(nodes=nodes, inputs=inputs, outputs=outputs, name=graph.name, opset=opset)
    model = gs.export_onnx(g, do_type_check=False)
    model.ir_version = max(_IR_VERSION, onnx.helper.find_min_ir_version_for(
        [onnx.helper.make_opsetid("", opset)], ignore_unknown=True))
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("", opset))
    if any(n.domain == MS_DOMAIN for n in nodes):  # MatMulNBits (int4 QLinear)
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    model.producer_name = "optc"
    return model


def save_onnx(graph: Graph, path: str | os.PathLike, opset: int | None = None) -> Path:
    """Write the graph as an ONNX file atomically: the model (and, for weights over 1 GiB, its
    ``<name>.data`` external-data file) is written in a temp folder beside ``path``, flushed, and
    renamed into place — data file first, so the model never names missing data."""
    from ..fileio import clean_stale_temps, fsync_tree, temp_name

    path = Path(path)
    model = to_onnx(graph, opset)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_name(path)
    tmp.mkdir()
    try:
        big = sum(v.const.nbytes for v in graph.constants.values()) > _EXTERNAL_DATA_THRESHOLD
        data_name = path.name + ".data"
        onnx.save(model, str(tmp / path.name), save_as_external_data=big, location=data_name if big else None)
        fsync_tree(tmp)
        if big:
            os.replace(tmp / data_name, path.with_name(data_name))
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


# Attributes newer opsets added, written only when they differ from the value that means what
# older opsets did (so a plain Cast or QuantizeLinear still exports at the base opset).
_OMIT_AT_DEFAULT = {
    "Cast": {"saturate": 1, "round_mode": "up"},
    "CastLike": {"saturate": 1, "round_mode": "up"},
    "QuantizeLinear": {"saturate": 1, "block_size": 0},
    "DequantizeLinear": {"block_size": 0},
}


def _attrs(node) -> dict:
    out = {}
    omit = _OMIT_AT_DEFAULT.get(node.op, {})
    for key, value in node.attrs.items():
        if value is None or (key in omit and value == omit[key]):
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
    if node.op == "QLinear":
        return max(qlinear_opset(node), _GELU_OPSET if node.attrs["activation"] in ("gelu", "gelu_tanh") else 0)
    if node.op in ("Linear", "FusedConv") and node.attrs["activation"] in ("gelu", "gelu_tanh"):
        return _GELU_OPSET
    if node.op in _SCHEMA_CHECKED or any(v is not None and v.dtype.is_low_precision
                                         for v in list(node.inputs) + list(node.outputs)):
        return _schema_opset(node)
    return _OP_MIN_OPSET.get(node.op, 0)


# Ops whose attributes and element types grew over recent opsets: their opset is the lowest whose
# ONNX schema takes the node as it is (as is that of any node on a low-precision type).
_SCHEMA_CHECKED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul", "MatMulInteger",
                   "ConvInteger", "QLinearConv", "BitCast"}


def _gs_dtype(dtype: DType):
    """What graphsurgeon takes for an element type: numpy's dtype, or the ONNX code for the
    low-precision types it cannot map itself."""
    return DTYPE_TO_ONNX[dtype] if dtype.is_low_precision else dtype.numpy


def _schema_opset(node) -> int:
    """The lowest opset >= BASE_OPSET whose schema of ``node.op`` has every attribute the node
    sets and allows each of its inputs' and outputs' element types."""
    import onnx.defs

    dts = [[None if v is None else v.dtype for v in vs] for vs in (node.inputs, node.outputs)]
    opset = _lowest_opset(node.op, set(_attrs(node)), *dts)
    if opset is None:
        raise UnsupportedOpError(f"node {node.name} ({node.op}): no ONNX opset has this op with these attributes and types")
    return opset


def _lowest_opset(op: str, attrs: set, inputs: list, outputs: list) -> int | None:
    import onnx.defs

    for opset in range(BASE_OPSET, onnx.defs.onnx_opset_version() + 1):
        try:
            schema = onnx.defs.get_schema(op, opset)
        except onnx.defs.SchemaError:
            continue
        if attrs <= set(schema.attributes) and _types_allowed(schema, inputs, outputs):
            return opset
    return None


def _types_allowed(schema, inputs: list, outputs: list) -> bool:
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for formals, dtypes in ((schema.inputs, inputs), (schema.outputs, outputs)):
        for i, dt in enumerate(dtypes):
            if dt is None or not formals:
                continue
            f = formals[min(i, len(formals) - 1)]
            name = f"tensor({onnx.TensorProto.DataType.Name(DTYPE_TO_ONNX[dt]).lower()})"
            if name not in allowed.get(f.type_str, {f.type_str}):
                return False
    return True


_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _decompose(node, tensor) -> list[gs.Node]:
    dt = node.outputs[0].dtype.numpy

    def temp(suffix: str) -> gs.Variable:
        return gs.Variable(f"{node.name}_{suffix}", dtype=dt)

    if node.op == "QLinear":  # QDQ, MatMulNBits or the integer chain (onnx_export_quant.py)
        return export_qlinear(node, tensor, _activation)
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
    if node.op == "RotaryEmbedding":
        return _rotary(node, tensor, temp)
    raise UnsupportedOpError(f"op {node.op} cannot be exported to ONNX")


def _rotary(node, tensor, temp) -> list[gs.Node]:
    """RotaryEmbedding as it is, except that caches of batch 1 for a batch that may not be 1 (the
    rotary fusion keeps a model's one table for every sequence; optc broadcasts it) are
    expanded to X's batch first: ONNX's op takes [batch, seq, rot/2] caches and ONNX Runtime
    checks it."""
    x, cos, sin = node.inputs[:3]
    ins = [tensor(v) for v in _trim(node.inputs)]
    nodes = []
    if node.input(3) is None and cos.shape is not None and cos.shape[0] == 1 and x.shape is not None and x.shape[0] != 1:
        batch, rest, dims = temp("batch"), temp("cache_dims"), temp("cache_shape")
        for t in (batch, rest, dims):
            t.dtype = np.int64
        nodes += [gs.Node("Shape", name=node.name + "_batch", attrs={"start": 0, "end": 1}, inputs=[ins[0]], outputs=[batch]),
                  gs.Node("Shape", name=node.name + "_cache_dims", attrs={"start": 1}, inputs=[ins[1]], outputs=[rest]),
                  gs.Node("Concat", name=node.name + "_cache_shape", attrs={"axis": 0}, inputs=[batch, rest], outputs=[dims])]
        for k, what in ((1, "cos"), (2, "sin")):
            wide = temp(f"{what}_cache")
            nodes.append(gs.Node("Expand", name=f"{node.name}_{what}_cache", inputs=[ins[k], dims], outputs=[wide]))
            ins[k] = wide
    return nodes + [gs.Node("RotaryEmbedding", name=node.name, attrs=_attrs(node), inputs=ins, outputs=[tensor(node.output)])]


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
