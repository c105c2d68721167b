"""``QLinear`` (ir/ops/qlinear.py) → ONNX, in forms ONNX Runtime runs with optc's arithmetic.

=====================================  ==============================================================
weight                                 ONNX
=====================================  ==============================================================
float16 / bfloat16                     ``X → Cast(W's type) → Cast(float32)`` (X rounded to W's type,
                                       as the op defines), ``W → Cast(float32)``, ``MatMul``
int8 per channel, weight-only          ``DequantizeLinear(W int8, scale [N], zero point?, axis=1)``
                                       → ``MatMul`` (QDQ)
int4 / uint4 grouped, weight-only      ``com.microsoft.MatMulNBits`` (bits=4, block_size=group_size;
                                       int4 codes q are written as uint4 q + 8 without zero points —
                                       MatMulNBits' default zero point is 8 —, uint4 codes with their
                                       zero points packed, float32 zero points unpacked ``[N, blocks]``)
uint4 per channel, float zero point    ``(Cast(W) - z) * s`` (DequantizeLinear takes integer zero
                                       points only)
other integer weights, weight-only     ``DequantizeLinear`` blocked along K (``axis=0``,
                                       ``block_size``) or per axis (opset 21 for 4-bit types)
int8, ``act_quant`` dynamic / static   the integer product in standard ops, see below
=====================================  ==============================================================

then ``Add(B)``, the activation (as ``Linear``'s export writes it), and a ``Cast`` back when X is
not float32.

**Quantized activations.** ONNX has no per-row dynamic quantization: ``DynamicQuantizeLinear``
takes one scale per tensor, and ONNX Runtime's ``MatMulInteger`` takes only one activation zero
point per tensor (``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul`` likewise). So optc's
per-row scheme is written out in standard ops, each step the interpreter's::

    lo = Min(ReduceMin(x, -1), 0)      hi = Max(ReduceMax(x, -1), 0)
    scale = (hi - lo) / qmax, 1 where 0                       (float32 division, as the op)
    zp = Clip(Round(-lo / scale), 0, qmax)                    (Round: half to even)
    xq = Cast(Clip(Round(x / scale) + zp, 0, qmax), uint8)
    acc = MatMulInteger(xq, W) - zp * Σ_k W[k, :]             (int32: the zero point per row)
    y = Cast(acc, float32) * (scale * w_scale)

Static activations use ``x_scale`` / ``x_zero_point`` in the same chain (the zero point goes to
``MatMulInteger``). Every step is exact or one correctly rounded float32 operation in the same
order as ``kernels_qlinear.py``, so ONNX Runtime reproduces optc's interpreter bit for bit except
where its kernels sum the float32 epilogue differently. One trap is avoided on purpose: ONNX
Runtime's u8×s8 ``MatMulInteger`` kernel on AVX2 CPUs without VNNI sums byte pairs in saturating
16-bit arithmetic (``vpmaddubsw``), which is wrong once activation codes exceed 127. With
``act_qmax=127`` the int8 weight is written as is (no pair sum can saturate); with
``act_qmax=255`` it is written as uint8 ``q + 128`` with ``b_zero_point = 128`` — the same
integers — so ORT takes its u8×u8 kernel, which widens to 16 bits before multiplying and is
exact on every CPU.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..ir import DType, UnsupportedOpError

MS_DOMAIN = "com.microsoft"
_BLOCKED_DQ_OPSET = 21  # DequantizeLinear with block_size, and with int4/uint4 inputs


def _nbits_ok(node) -> bool:
    g = int(node.attrs["group_size"])
    return node.input(1).dtype in (DType.INT4, DType.UINT4) and g >= 16 and g & (g - 1) == 0


def qlinear_opset(node) -> int:
    """The lowest default-domain opset the export of ``node`` needs."""
    wdt = node.input(1).dtype
    if wdt in (DType.FLOAT16, DType.BFLOAT16) or node.attrs["act_quant"] != "none" or _nbits_ok(node):
        return 18
    if wdt is DType.INT8 and int(node.attrs["group_size"]) == 0:
        return 18
    return _BLOCKED_DQ_OPSET


class _Emitter:
    def __init__(self, node, tensor):
        self.node, self.tensor = node, tensor
        self.nodes: list[gs.Node] = []
        self.count = 0

    def name(self, suffix: str) -> str:
        self.count += 1
        return f"{self.node.name}_{suffix}_{self.count}"

    def const(self, array, suffix: str) -> gs.Constant:
        arr = np.ascontiguousarray(np.asarray(array))
        name = self.name(suffix)
        dt = DType.from_numpy(arr.dtype)
        if dt.is_low_precision or dt is DType.BFLOAT16:  # ml_dtypes arrays: let onnx pack them
            return gs.Constant(name, LazyValues(numpy_helper.from_array(arr, name)))
        return gs.Constant(name, arr)

    def emit(self, op: str, inputs: list, dtype, attrs: dict | None = None, out=None, domain=None):
        """A node; ``out`` is its output tensor (a new temp of ``dtype`` by default)."""
        if out is None:
            out = gs.Variable(self.name(op.lower()), dtype=dtype)
        self.nodes.append(gs.Node(op, name=self.name(op), attrs=attrs or {}, inputs=inputs, outputs=[out],
                                  domain=domain))
        return out


def export_qlinear(node, tensor, activation) -> list[gs.Node]:
    """The ONNX nodes of one ``QLinear`` (see the module docstring). ``tensor`` maps IR values to
    graphsurgeon tensors; ``activation(node, act, x, y, temp)`` writes the epilogue."""
    e = _Emitter(node, tensor)
    x_v, w_v = node.input(0), node.input(1)
    out = tensor(node.output)
    xdt = x_v.dtype
    f32 = np.float32
    x = tensor(x_v)
    wdt = w_v.dtype
    if not w_v.is_constant:
        raise UnsupportedOpError(f"node {node.name} (QLinear): export needs a constant weight")
    if wdt in (DType.FLOAT16, DType.BFLOAT16):
        to = _onnx_type(wdt)
        xr = x if xdt is wdt else e.emit("Cast", [x], None, {"to": to})
        xf = e.emit("Cast", [xr], f32, {"to": _onnx_type(DType.FLOAT32)})
        wf = e.emit("Cast", [tensor(w_v)], f32, {"to": _onnx_type(DType.FLOAT32)})
        y = e.emit("MatMul", [xf, wf], f32)
    else:
        xf = x if xdt is DType.FLOAT32 else e.emit("Cast", [x], f32, {"to": _onnx_type(DType.FLOAT32)})
        mode = node.attrs["act_quant"]
        if mode == "none":
            y = _weight_only(e, node, xf)
        else:
            y = _quantized_activations(e, node, xf, mode)
    b = node.input(4)
    if b is not None:
        y = e.emit("Add", [y, tensor(b)], f32)
    act = node.attrs["activation"]
    final = out if xdt is DType.FLOAT32 else gs.Variable(e.name("f32"), dtype=f32)
    if act == "none":
        _redirect_last(e, y, final)
    else:
        e.nodes.extend(activation(node, act, y, final, lambda s: gs.Variable(e.name(s), dtype=f32)))
    if final is not out:
        e.emit("Cast", [final], None, {"to": _onnx_type(xdt)}, out=out)
    return _rename_last(e.nodes, node.name)


def _redirect_last(e: _Emitter, y, final) -> None:
    """Make the node that produced ``y`` (the last one emitted) write ``final`` instead."""
    if y is final:
        return
    last = e.nodes[-1]
    assert last.outputs[0] is y
    inputs = list(last.inputs)
    last.inputs.clear()
    last.outputs.clear()
    e.nodes[-1] = gs.Node(last.op, name=last.name, attrs=last.attrs, inputs=inputs, outputs=[final], domain=last.domain)


def _rename_last(nodes: list[gs.Node], name: str) -> list[gs.Node]:
    """The node producing the output keeps the IR node's name (as other exports do)."""
    if nodes and nodes[-1].name and name not in {n.name for n in nodes[:-1]}:
        nodes[-1].name = name
    return nodes


def _onnx_type(dt: DType) -> int:
    from .onnx_import import DTYPE_TO_ONNX

    return DTYPE_TO_ONNX[dt]


def _weight_only(e: _Emitter, node, x):
    f32 = np.float32
    w_v, s_v, z_v = node.input(1), node.input(2), node.input(3)
    group = int(node.attrs["group_size"])
    if _nbits_ok(node):
        return _matmul_nbits(e, node, x)
    if z_v is not None and z_v.dtype is DType.FLOAT32:
        if group:
            raise UnsupportedOpError(f"node {node.name} (QLinear): a float zero point with group_size {group} has no "
                                     f"ONNX form (MatMulNBits takes power-of-two groups >= 16)")
        wq = e.emit("Cast", [e.tensor(w_v)], f32, {"to": _onnx_type(DType.FLOAT32)})
        wf = e.emit("Mul", [e.emit("Sub", [wq, e.tensor(z_v)], f32), e.tensor(s_v)], f32)
        return e.emit("MatMul", [x, wf], f32)
    if group == 0:
        attrs = {"axis": 1}
    else:
        attrs = {"axis": 0, "block_size": group}
    w = e.tensor(w_v)
    dq_in = [w, e.tensor(s_v)] + ([e.tensor(z_v)] if z_v is not None else [])
    wf = e.emit("DequantizeLinear", dq_in, f32, attrs)
    return e.emit("MatMul", [x, wf], f32)


def _matmul_nbits(e: _Emitter, node, x):
    """``com.microsoft.MatMulNBits`` (bits 4): codes ``[K, N]`` packed as ORT lays them out."""
    w = np.asarray(node.input(1).const)
    k, n = w.shape
    g = int(node.attrs["group_size"])
    blocks = -(-k // g)
    scale = np.asarray(node.input(2).const, np.float32).reshape(blocks, n)
    z_v = node.input(3)
    if z_v is not None and z_v.dtype is DType.FLOAT32:  # a real-valued zero point, [N, blocks] of A's type
        codes = w.astype(np.uint8)
        padded = np.zeros((blocks * g, n), np.uint8)  # rows past K: ORT stops at K
        padded[:k] = codes
        zero = np.asarray(z_v.const, np.float32).reshape(blocks, n)
        inputs = [x, e.const(_pack4(padded.T.reshape(n, blocks, g)), "B"), e.const(np.ascontiguousarray(scale.T), "scales"),
                  e.const(np.ascontiguousarray(zero.T), "zero_points")]
        return e.emit("MatMulNBits", inputs, np.float32, {"K": int(k), "N": int(n), "bits": 4, "block_size": g},
                      domain=MS_DOMAIN)
    if node.input(1).dtype is DType.INT4:
        codes = w.astype(np.int16) + 8  # ORT's default zero point 8: q - 8 is the int4 code again
        zero = None
        if z_v is not None:
            zero = np.asarray(z_v.const).astype(np.int16) + 8
        pad = 8
    else:  # uint4: without zero points the weight is q * s, so write zero points 0 (not ORT's default 8)
        codes = w.astype(np.int16)
        zero = np.zeros((blocks, n), np.int16) if z_v is None else np.asarray(z_v.const).astype(np.int16)
        pad = 0
    if zero is not None:
        pad = None
    padded = np.empty((blocks * g, n), np.uint8)
    padded[:k] = codes.astype(np.uint8)
    if blocks * g > k:
        # rows past K: code = the block's zero point, so they dequantize to 0 (ORT ignores them)
        padded[k:] = pad if pad is not None else zero[-1].astype(np.uint8)
    packed = _pack4(padded.T.reshape(n, blocks, g))  # [N, blocks, g/2]
    inputs = [x, e.const(packed, "B"), e.const(np.ascontiguousarray(scale.T), "scales")]
    if zero is not None:
        zt = zero.T.astype(np.uint8)  # [N, blocks]
        if blocks % 2:
            zt = np.concatenate([zt, np.zeros((n, 1), np.uint8)], axis=1)
        inputs.append(e.const(_pack4(zt), "zero_points"))
    attrs = {"K": int(k), "N": int(n), "bits": 4, "block_size": g}
    return e.emit("MatMulNBits", inputs, np.float32, attrs, domain=MS_DOMAIN)


def _pack4(codes: np.ndarray) -> np.ndarray:
    """uint8 codes in [0, 15] along the last axis (even length) → bytes, low nibble first."""
    c = codes.astype(np.uint8)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def _quantized_activations(e: _Emitter, node, x, mode: str):
    f32, i32, u8 = np.float32, np.int32, np.uint8
    qmax = int(node.attrs["act_qmax"])
    w = np.asarray(node.input(1).const)
    colsum = w.astype(np.int64).sum(axis=0)
    zero_f, qmax_f = e.const(np.array(0, f32), "zero"), e.const(np.array(qmax, f32), "qmax")
    if node.input(7) is not None:  # SmoothQuant's per-channel multiplier, before the quantization
        x = e.emit("Mul", [x, e.tensor(node.input(7))], f32)
    if mode == "dynamic":
        axes = e.const(np.array([-1], np.int64), "axes")
        lo = e.emit("Min", [e.emit("ReduceMin", [x, axes], f32, {"keepdims": 1}), zero_f], f32)
        hi = e.emit("Max", [e.emit("ReduceMax", [x, axes], f32, {"keepdims": 1}), zero_f], f32)
        scale = e.emit("Div", [e.emit("Sub", [hi, lo], f32), qmax_f], f32)
        is_zero = e.emit("Equal", [scale, zero_f], np.bool_)
        scale = e.emit("Where", [is_zero, e.const(np.array(1, f32), "one"), scale], f32)
        zp = e.emit("Clip", [e.emit("Round", [e.emit("Div", [e.emit("Neg", [lo], f32), scale], f32)], f32),
                             zero_f, qmax_f], f32)
    else:
        scale = e.tensor(node.input(5))
        zp = e.emit("Cast", [e.tensor(node.input(6))], f32, {"to": _onnx_type(DType.FLOAT32)})
    rounded = e.emit("Round", [e.emit("Div", [x, scale], f32)], f32)
    xq = e.emit("Cast", [e.emit("Clip", [e.emit("Add", [rounded, zp], f32), zero_f, qmax_f], f32)], u8,
                {"to": _onnx_type(DType.UINT8)})
    if qmax <= 127:
        mm_in = [xq, e.const(w.astype(np.int8), "w")]
        b_zp = None
    else:  # uint8 q + 128 with zero point 128: ORT's exact u8 x u8 kernel (see the module docstring)
        mm_in = [xq, e.const((w.astype(np.int16) + 128).astype(u8), "w_u8")]
        b_zp = e.const(np.array(128, u8), "w_zero_point")
    if mode == "static":
        mm_in.append(e.tensor(node.input(6)))
        acc = e.emit("MatMulInteger", mm_in + ([b_zp] if b_zp is not None else []), i32)
    else:
        if b_zp is not None:
            mm_in += [gs.Variable.empty(), b_zp]
        raw = e.emit("MatMulInteger", mm_in, i32)
        zp_i = e.emit("Cast", [zp], i32, {"to": _onnx_type(DType.INT32)})
        corr = e.emit("Mul", [zp_i, e.const(colsum.astype(i32), "colsum")], i32)
        acc = e.emit("Sub", [raw, corr], i32)
    accf = e.emit("Cast", [acc], f32, {"to": _onnx_type(DType.FLOAT32)})
    w_scale = e.tensor(node.input(2))
    return e.emit("Mul", [accf, e.emit("Mul", [scale, w_scale], f32)], f32)
