"""ONNX → IR.

Reads the model with onnx (external data resolved next to the model file, and refused when it
points outside that folder), walks it with onnx-graphsurgeon, and maps each node onto the IR
op of the same name, normalizing older-opset spellings (reduction axes as attributes, ...) to
the IR's single canonical form. Shape-computation chains are folded afterwards.
"""

from __future__ import annotations

import logging
import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from ..ir import DType, Graph, IRError, ModelFileError, TensorType, UnsupportedOpError, get_schema
from ..ir.folding import fold_graph
from ..ir.tying import tie_transposed_weights
from ..ir.verifier import verify

MIN_OPSET = 13
log = logging.getLogger("optc.frontend")

_ONNX_TO_DTYPE = {
    onnx.TensorProto.FLOAT: DType.FLOAT32,
    onnx.TensorProto.FLOAT16: DType.FLOAT16,
    onnx.TensorProto.BFLOAT16: DType.BFLOAT16,
    onnx.TensorProto.DOUBLE: DType.FLOAT64,
    onnx.TensorProto.INT8: DType.INT8,
    onnx.TensorProto.INT16: DType.INT16,
    onnx.TensorProto.INT32: DType.INT32,
    onnx.TensorProto.INT64: DType.INT64,
    onnx.TensorProto.UINT8: DType.UINT8,
    onnx.TensorProto.UINT16: DType.UINT16,
    onnx.TensorProto.UINT32: DType.UINT32,
    onnx.TensorProto.UINT64: DType.UINT64,
    onnx.TensorProto.BOOL: DType.BOOL,
    onnx.TensorProto.FLOAT8E4M3FN: DType.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ: DType.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2: DType.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ: DType.FLOAT8E5M2FNUZ,
    onnx.TensorProto.FLOAT8E8M0: DType.FLOAT8E8M0,
    onnx.TensorProto.FLOAT4E2M1: DType.FLOAT4E2M1,
    onnx.TensorProto.INT4: DType.INT4,
    onnx.TensorProto.UINT4: DType.UINT4,
    onnx.TensorProto.INT2: DType.INT2,
    onnx.TensorProto.UINT2: DType.UINT2,
}
DTYPE_TO_ONNX = {v: k for k, v in _ONNX_TO_DTYPE.items()}
# Attributes that hold an ONNX element type code (0 = unset, for the optional ones).
_DTYPE_ATTRS = ("to", "dtype", "output_dtype", "precision", "output_datatype")

# Attributes the IR does not model, accepted only at the value that means "no change".
_IGNORED_ATTRS: dict[str, dict[str, Any]] = {
    "BatchNormalization": {"spatial": 1},
    "Dropout": {"seed": None},
    "Attention": {"softcap": 0.0, "qk_matmul_output_mode": 0, "softmax_precision": None},
}

# Ops whose `axes` moved from an attribute to an input (opset 18 for the reductions).
_AXES_ATTR_TO_INPUT = {
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", "ReduceSum", "Squeeze", "Unsqueeze",
}


def dtype_from_onnx(code: int, where: str = "") -> DType:
    try:
        return _ONNX_TO_DTYPE[code]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(code) if code in onnx.TensorProto.DataType.values() else str(code)
        raise UnsupportedOpError(f"{where}element type {name} is not supported") from None


def load_onnx_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file and its external data, with one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise ModelFileError(f"{path}: not a valid ONNX model ({_first_line(e) or 'cannot parse protobuf'})") from None
    if not model.HasField("graph"):
        raise ModelFileError(f"{path}: not a valid ONNX model (no graph)")
    _load_external_data(model, path.parent.resolve(), path)
    return model


def _load_external_data(model: onnx.ModelProto, base: Path, path: Path) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise ModelFileError(f"{path}: external data of tensor {tensor.name!r} points outside the model's folder ({location})")
        if not target.is_file():
            raise ModelFileError(f"{path}: external data file {location} of tensor {tensor.name!r} is missing")
        size = target.stat().st_size
        offset = _extent(info.get("offset", "0"), "offset", tensor.name, path)
        length = _extent(info["length"], "length", tensor.name, path) if "length" in info else size - offset
        if offset + length > size or length < 0:
            raise ModelFileError(f"{path}: external data of tensor {tensor.name!r} (offset {offset}, length {length}) "
                                 f"lies beyond the end of {location} ({size} bytes; truncated?)")
        with open(target, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise ModelFileError(f"{path}: external data file {location} is truncated (tensor {tensor.name!r})")
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _extent(text: str, what: str, tensor: str, path: Path) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ModelFileError(f"{path}: external data {what} of tensor {tensor!r} is {text!r}, not a byte count")
    return value


def import_onnx(model: onnx.ModelProto | str | os.PathLike, *, fold: bool = True) -> Graph:
    """Convert an ONNX model (or a path to one) into an IR graph."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx_model(model)
    source_opset = opset = _default_opset(model)
    _check_opset(source_opset)
    _check_value_kinds(model)
    _check_graph_io(model)
    if opset < 9:
        from .onnx_control_flow import rewrite_scan8

        model = rewrite_scan8(model)  # the version converter's Scan 8->9 adapter changes its meaning
    if opset < MIN_OPSET:
        model = _upgrade(model, opset)
        opset = MIN_OPSET
    try:
        with quiet_graphsurgeon():
            g = gs.import_onnx(model)
    except Exception as e:  # graphsurgeon raises plain exceptions for malformed graphs
        raise ModelFileError(f"malformed ONNX graph: {_first_line(e)}") from None
    return _Importer(opset, source_opset).run(g, fold)


@contextlib.contextmanager
def quiet_graphsurgeon():
    """Silence graphsurgeon's warnings (one per fp8 value: it has no numpy name for them; optc
    maps ONNX element types itself) while the block runs."""
    from onnx_graphsurgeon.logger import G_LOGGER

    severity = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.severity = severity


def _check_value_kinds(model: onnx.ModelProto) -> None:
    """The IR holds tensors only: refuse sequence, optional and map values up front."""
    for vi in list(model.graph.input) + list(model.graph.output):
        kind = vi.type.WhichOneof("value")
        if kind not in (None, "tensor_type"):
            raise UnsupportedOpError(f"value {vi.name!r} has a {kind.replace('_type', '')} type; only tensors are supported")
        if kind == "tensor_type" and vi.type.tensor_type.elem_type:
            dtype_from_onnx(vi.type.tensor_type.elem_type, f"value {vi.name!r}: ")


def _check_opset(opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if not 1 <= opset <= newest:
        raise ModelFileError(f"the model imports opset {opset} of the default ONNX domain; this optc reads "
                             f"opsets 1 to {newest} (onnx {onnx.__version__})")


def _check_graph_io(model: onnx.ModelProto) -> None:
    """Duplicate graph outputs are refused; an initializer that shadows a graph input (the
    input's default value — older exporters list every weight so) is folded as a constant, which
    is said, after checking that the declared input agrees with it."""
    seen: set[str] = set()
    for o in model.graph.output:
        if o.name in seen:
            raise ModelFileError(f"graph output {o.name!r} is listed twice")
        seen.add(o.name)
    inits = {t.name: t for t in model.graph.initializer}
    for vi in model.graph.input:
        t = inits.get(vi.name)
        if t is None:
            continue
        declared = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim] \
            if vi.type.tensor_type.HasField("shape") else None
        if declared is not None and (len(declared) != len(t.dims) or any(
                d is not None and d != c for d, c in zip(declared, t.dims))):
            raise ModelFileError(f"input {vi.name!r} is declared {declared} but its initializer (default value) "
                                 f"has shape {list(t.dims)}")
        log.warning("input %r has an initializer of the same name (a default value): optc treats it as a constant; "
                    "the compiled model does not take it as an input", vi.name)


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return MIN_OPSET


def _upgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    try:
        from onnx import version_converter

        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:
        raise UnsupportedOpError(f"opset {opset} is older than {MIN_OPSET} and could not be upgraded: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class _Importer:
    def __init__(self, opset: int, source_opset: int):
        self.opset = opset
        self.source_opset = source_opset
        self.graph = Graph()
        self.values: dict[str, Any] = {}

    def run(self, g: gs.Graph, fold: bool) -> Graph:
        graph = self.graph
        graph.name = _clean_name(g.name or "main")
        constants = {name: t for name, t in g.tensors().items() if isinstance(t, gs.Constant)}
        for t in g.inputs:
            if t.name in constants:
                continue  # an initializer listed as input: a constant (see _check_graph_io)
            self.values[t.name] = graph.add_input(t.name, self._type_of(t, f"input {t.name!r}"))
        for name, t in constants.items():
            self.values[name] = graph.add_constant(self._array(t), name)
        for node in g.nodes:
            self._node(node)
        outputs = []
        for t in g.outputs:
            if t.name not in self.values:
                raise ModelFileError(f"graph output {t.name!r} is not produced by any node")
            self._check_declared_output(t, self.values[t.name])
            outputs.append(self.values[t.name])
        graph.set_outputs(outputs)
        if fold:
            fold_graph(graph)
            tie_transposed_weights(graph)  # a tied head exported as a transposed copy of the embedding
        verify(graph)  # an importer bug must surface here, not as a wrong answer later
        return graph

    # -- tensors -----------------------------------------------------------------------
    def _check_declared_output(self, t: gs.Variable, value) -> None:
        """A graph output's declared element type and static dims must be what the graph
        computes: a model that says otherwise is invalid (ONNX Runtime refuses it too)."""
        if t.dtype is None or (isinstance(t.dtype, int) and t.dtype == onnx.TensorProto.UNDEFINED):
            return  # no declared type: nothing to contradict
        declared = self._type_of(t, f"graph output {t.name!r}")
        if declared.dtype != value.dtype:
            raise ModelFileError(f"graph output {t.name!r} is declared {declared.dtype.value} but the graph computes "
                                 f"{value.dtype.value}")
        if declared.shape is not None and value.shape is not None:
            clash = len(declared.shape) != len(value.shape) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(declared.shape, value.shape))
            if clash:
                raise ModelFileError(f"graph output {t.name!r} is declared {declared} but the graph computes "
                                     f"{value.type}")

    def _type_of(self, t: gs.Variable, where: str) -> TensorType:
        if t.dtype is None:
            raise ModelFileError(f"{where} has no element type")
        try:
            dtype = DType.from_numpy(t.dtype) if not isinstance(t.dtype, int) else dtype_from_onnx(t.dtype, f"{where}: ")
        except TypeError:
            raise UnsupportedOpError(f"{where} has unsupported element type {t.dtype}") from None
        if t.shape is None:
            return TensorType(dtype, None)
        dims = []
        for i, d in enumerate(t.shape):
            if isinstance(d, int) and d < 0:
                raise ModelFileError(f"{where} has a negative dim {d} in its shape {list(t.shape)}")
            if isinstance(d, int):
                dims.append(d)
            elif isinstance(d, str) and d:
                dims.append(_symbol(d))
            else:
                dims.append(_symbol(f"{t.name}_d{i}"))
        return TensorType(dtype, tuple(dims))

    def _array(self, t: gs.Constant) -> np.ndarray:
        try:
            lazy = getattr(t, "_values", None)
            if isinstance(lazy, gs.ir.tensor.LazyValues):
                # read the TensorProto with onnx itself: graphsurgeon would log a warning for
                # every fp8 initializer (it has no numpy name for them), then do the same
                values = onnx.numpy_helper.to_array(lazy.tensor)
            else:
                values = t.values
        except (ValueError, TypeError, KeyError) as e:
            if "type" in str(e).lower():
                raise UnsupportedOpError(f"initializer {t.name!r} has an unsupported element type ({_first_line(e)})") from None
            raise ModelFileError(f"initializer {t.name!r} cannot be read: {_first_line(e)}") from None
        arr = np.asarray(values)  # sub-byte types arrive unpacked (onnx.numpy_helper), one per byte
        try:
            DType.from_numpy(arr.dtype)
        except TypeError:
            raise UnsupportedOpError(f"initializer {t.name!r} has unsupported element type {arr.dtype}") from None
        return arr

    def _input(self, t: gs.Tensor | None):
        if t is None or t.name == "":
            return None
        if t.name not in self.values:
            if isinstance(t, gs.Constant):
                self.values[t.name] = self.graph.add_constant(self._array(t), t.name)
            else:
                raise ModelFileError(f"tensor {t.name!r} is used before it is defined (graph not topologically sorted?)")
        return self.values[t.name]

    # -- nodes -------------------------------------------------------------------------
    def _node(self, node: gs.Node) -> None:
        where = f"node {node.name or '<unnamed>'} ({node.op}, opset {self.opset})"
        if node.domain not in (None, "", "ai.onnx"):
            self._foreign_node(node)
            return
        if node.op == "Constant":
            self._constant(node, where)
            return
        schema = get_schema(node.op)
        if schema is None:
            raise UnsupportedOpError(f"unsupported op {node.op} at {where}")
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            from .onnx_control_flow import import_subgraph_node

            import_subgraph_node(self, node, schema, where)  # If / Loop / Scan: bodies with captures
            return
        inputs = [self._input(t) for t in node.inputs]
        attrs = self._attrs(node, schema, where)
        inputs = self._normalize(node, inputs, attrs, where)
        outs = [t.name for t in node.outputs]
        n_out = len(outs)
        while n_out > 1 and outs[n_out - 1] == "":
            n_out -= 1  # trailing optional outputs that are not requested
        names = [o if o else None for o in outs[:n_out]]
        for o in names:
            if o is not None and o in self.values:
                raise ModelFileError(f"tensor {o!r} is defined twice (at {where})")
        try:
            if "__heads__" in attrs:
                outputs = self._attention_3d(node, inputs, attrs, names)
            else:
                outputs = self.graph.add_node(node.op, inputs, attrs, output_names=names, name=node.name or None).outputs
        except IRError as e:
            raise type(e)(f"{where}: {e}") from None
        for name, v in zip(names, outputs):
            if name is not None:
                self.values[name] = v

    def _foreign_node(self, node: gs.Node) -> None:
        """A node of another domain: ONNX Runtime's ``com.microsoft`` ops that optc imports
        (``onnx_contrib.py``), or a one-line refusal naming op, node and domain."""
        from .onnx_contrib import DOMAIN, import_contrib_node

        where = f"node {node.name or '<unnamed>'} ({node.op}, domain {node.domain})"
        if node.domain != DOMAIN:
            raise UnsupportedOpError(f"unsupported op {node.domain}.{node.op} at {where}")
        for t in node.outputs:
            if t.name and t.name in self.values:
                raise ModelFileError(f"tensor {t.name!r} is defined twice (at {where})")
        try:
            outputs = import_contrib_node(self, node, where)
        except IRError as e:
            if where in str(e):
                raise
            raise type(e)(f"{where}: {e}") from None
        for t, v in zip(node.outputs, outputs):
            if t.name and v is not None:
                self.values[t.name] = v

    def _attention_3d(self, node: gs.Node, inputs: list, attrs: dict, names: list) -> list:
        """ONNX Attention on [batch, seq, heads*head_dim] tensors: split the heads out, run the
        IR's 4-D Attention, and merge them back."""
        heads = attrs.pop("__heads__")
        q, k, v = inputs[:3]
        mask = inputs[3] if len(inputs) > 3 else None
        g = self.graph
        to_bhsd = g.add_constant(np.array([0, 0, 0, -1], np.int64))

        def split_heads(x, n):
            shape = to_bhsd if n is None else g.add_constant(np.array([0, 0, n, -1], np.int64))
            return g.op("Transpose", g.op("Reshape", x, shape), perm=(0, 2, 1, 3))

        hq, hk = heads.get("q_num_heads"), heads.get("kv_num_heads")
        if hq is None or hk is None:
            raise UnsupportedOpError("3-D Attention needs both q_num_heads and kv_num_heads")
        y = g.op("Attention", split_heads(q, hq), split_heads(k, hk), split_heads(v, hk), mask, **attrs)
        merged = g.op("Transpose", y, perm=(0, 2, 1, 3))
        merge = g.add_constant(np.array([0, 0, -1], np.int64))
        return g.add_node("Reshape", [merged, merge], output_names=names[:1], name=node.name or None).outputs

    def _constant(self, node: gs.Node, where: str) -> None:
        (key, value), = node.attrs.items() if len(node.attrs) == 1 else ((None, None),)
        if key == "value":
            arr = self._array(value)
        elif key in ("value_float", "value_int"):
            arr = np.array(value, dtype=np.float32 if key == "value_float" else np.int64)
        elif key in ("value_floats", "value_ints"):
            arr = np.array(value, dtype=np.float32 if key == "value_floats" else np.int64)
        else:
            raise UnsupportedOpError(f"Constant with attribute {key!r} is not supported at {where}")
        name = node.outputs[0].name
        self.values[name] = self.graph.add_constant(arr, name)

    def _attrs(self, node: gs.Node, schema, where: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        ignorable = _IGNORED_ATTRS.get(node.op, {})
        for key, value in node.attrs.items():
            if isinstance(value, gs.Constant):
                value = self._array(value)
            elif isinstance(value, gs.Graph):
                raise UnsupportedOpError(f"unsupported op {node.op} with a subgraph attribute at {where}")
            if key in schema.attrs:
                if key in _DTYPE_ATTRS and isinstance(value, (int, np.integer)):
                    value = None if int(value) == 0 and key != "to" else dtype_from_onnx(int(value), f"{where}: ")
                attrs[key] = value
            elif key in ignorable and (ignorable[key] is None or value == ignorable[key]):
                continue
            elif key == "axes" and node.op in _AXES_ATTR_TO_INPUT:
                attrs["__axes__"] = value
            elif node.op == "Attention" and key in ("q_num_heads", "kv_num_heads"):
                attrs.setdefault("__heads__", {})[key] = int(value)
            elif node.op == "Split" and key == "split":
                attrs["__split__"] = value
            else:
                raise UnsupportedOpError(f"unsupported attribute {key}={value!r} of {node.op} at {where}")
        return attrs

    def _normalize(self, node: gs.Node, inputs: list, attrs: dict, where: str) -> list:
        """Rewrite older spellings into the IR's canonical (newest-ONNX) form."""
        if "__axes__" in attrs:
            axes = attrs.pop("__axes__")
            inputs = inputs[:1] + [self.graph.add_constant(np.array(axes, dtype=np.int64))]
        if node.op == "Attention" and (len(inputs) > 4 or len(node.outputs) > 1):
            raise UnsupportedOpError(f"Attention with a KV cache (past/present inputs or outputs) is not supported at {where}")
        if node.op == "Dropout" and len(inputs) > 2 and inputs[2] is not None:
            mode = inputs[2].const
            if mode is None or bool(mode):
                raise UnsupportedOpError(f"training-mode Dropout is not supported (inference only) at {where}")
        if node.op == "GridSample" and attrs.get("mode") in ("bilinear", "bicubic"):
            attrs["mode"] = {"bilinear": "linear", "bicubic": "cubic"}[attrs["mode"]]  # opset 16 spelling
        if node.op == "PRelu" and self.source_opset < 7 and inputs[1].is_constant:
            inputs = self._legacy_prelu_slope(inputs)
        if "__split__" in attrs:
            split = attrs.pop("__split__")
            inputs = inputs[:1] + [self.graph.add_constant(np.array(split, dtype=np.int64))]
        return inputs

    def _legacy_prelu_slope(self, inputs: list) -> list:
        """Before opset 7 a 1-D slope applied along the channel axis (1), not the last axis."""
        x, slope = inputs
        if slope.const.ndim == 1 and x.type.rank and x.type.rank > 2 and slope.const.size > 1:
            c = slope.const.reshape((-1,) + (1,) * (x.type.rank - 2))
            slope = self.graph.add_constant(c)
        return [x, slope]


def _symbol(name: str) -> str:
    """A dim_param as an identifier, so symbolic arithmetic can use it."""
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    if not out or out[0].isdigit():
        out = "d_" + out
    return out


def _clean_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in name) or "main"
