"""ONNX Runtime's ``com.microsoft`` contrib ops → IR.

ONNX Runtime's quantization tools and its offline graph optimizer write these ops; each is
imported as the IR op that computes the same thing (``MatMulNBits`` → ``QLinear``) or as the
standard ops it abbreviates, spelled the way ONNX Runtime's unfused graph computes it, so
results agree with ORT up to float rounding:

=========================  ======================================================================
``MatMulNBits``            ``QLinear`` (weight-only; 4-bit → int4/uint4 codes, 8-bit → int8 codes,
                           block_size → group_size; see ``_matmul_nbits``)
``DynamicQuantizeMatMul``  ``DynamicQuantizeLinear`` → ``MatMulInteger`` → ``Cast`` →
                           ``Mul(a_scale · b_scale)`` [→ ``Add(bias)``]
``MatMulIntegerToFloat``   ``MatMulInteger`` → ``Cast`` → ``Mul(a_scale · b_scale)`` [→ ``Add(bias)``]
``QGemm``                  ``MatMulInteger`` [+ ``C``] → ``Cast`` → ``Mul(alpha · a_scale · b_scale)``
                           [→ ``QuantizeLinear(y_scale, y_zero_point)``]
``QLinearAdd``             ``DequantizeLinear`` ×2 → ``Add`` → ``QuantizeLinear``
``FusedMatMul``            [``Transpose``] → ``MatMul`` [→ ``Mul(alpha)``]
``FusedGemm``              ``Gemm`` → activation (Relu, LeakyRelu, Tanh, Sigmoid, HardSigmoid)
``Gelu`` / ``BiasGelu``    [``Add``] → ``Gelu``
``FastGelu``               [``Add``] → ``Gelu{approximate=tanh}``
``SkipLayerNormalization`` ``Add`` [→ ``Add(bias)``] → ``LayerNormalization``
=========================  ======================================================================

Anything else in the domain (and any attribute value these do not model) is refused with one
line naming the op, the node and the domain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..ir import DType, ModelFileError, UnsupportedOpError

DOMAIN = "com.microsoft"
log = logging.getLogger("optc.frontend")

_IMPORTERS: dict[str, Callable] = {}


def _importer(op: str):
    def register(fn):
        _IMPORTERS[op] = fn
        return fn
    return register


def supported_ops() -> list[str]:
    return sorted(_IMPORTERS)


class _Ctx:
    """One contrib node being imported: its inputs (IR values or None), attributes, output
    names, and helpers to emit IR nodes into the importer's graph."""

    def __init__(self, importer, node, where: str):
        self.imp = importer
        self.node = node
        self.where = where
        self.graph = importer.graph
        self.inputs = [importer._input(t) for t in node.inputs]
        self.attrs = dict(node.attrs)
        outs = [t.name for t in node.outputs]
        while outs and outs[-1] == "":
            outs.pop()
        self.names = [o or None for o in outs]
        self.name = node.name or None
        self._step = 0

    # -- inputs and attributes ---------------------------------------------------------
    def input(self, i: int):
        return self.inputs[i] if i < len(self.inputs) else None

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.pop(key, default)

    def check_attrs_consumed(self) -> None:
        if self.attrs:
            key, value = next(iter(self.attrs.items()))
            raise UnsupportedOpError(f"unsupported attribute {key}={value!r} of {DOMAIN}.{self.node.op} "
                                     f"at {self.where}")

    def const(self, i: int, what: str) -> np.ndarray | None:
        v = self.input(i)
        if v is None:
            return None
        if not v.is_constant:
            raise UnsupportedOpError(f"{DOMAIN}.{self.node.op} at {self.where}: {what} must be a constant "
                                     "(initializer)")
        return np.asarray(v.const)

    def fail(self, message: str) -> ModelFileError:
        return ModelFileError(f"malformed {DOMAIN}.{self.node.op} at {self.where}: {message}")

    def unsupported(self, message: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"unsupported {DOMAIN}.{self.node.op} at {self.where}: {message}")

    # -- emitting ----------------------------------------------------------------------
    def _node_name(self, suffix: str) -> str | None:
        self._step += 1
        return None if self.name is None else self.graph.unique_name(f"{self.name}/{suffix}")

    def op(self, op: str, *inputs, **attrs):
        """An intermediate single-output node."""
        return self.graph.add_node(op, list(inputs), attrs, name=self._node_name(op)).output

    def final(self, op: str, *inputs, n_out: int = 1, **attrs) -> list:
        """The node producing the contrib op's outputs (named as in the model)."""
        names = self.names[:n_out] if n_out > 1 else self.names[:1]
        return self.graph.add_node(op, list(inputs), attrs, output_names=names, name=self.name).outputs

    def constant(self, array: np.ndarray, suffix: str):
        hint = f"{self.name or self.node.op}.{suffix}"
        return self.graph.add_constant(np.ascontiguousarray(array), self.graph.unique_name(hint))


def import_contrib_node(importer, node, where: str) -> list:
    """Import one ``com.microsoft`` node; returns its output values (None for unrequested ones)
    in the order of the node's outputs."""
    fn = _IMPORTERS.get(node.op)
    if fn is None:
        raise UnsupportedOpError(f"unsupported op {DOMAIN}.{node.op} at {where} (optc imports these {DOMAIN} ops: "
                                 f"{', '.join(supported_ops())})")
    ctx = _Ctx(importer, node, where)
    outputs = fn(ctx)
    ctx.check_attrs_consumed()
    return outputs


def _require_outputs(ctx: _Ctx, n: int) -> None:
    if len(ctx.names) > n:
        raise ctx.unsupported(f"output {len(ctx.names) - 1} is not supported (only the first {n})")


# -- weight-only N-bit matmul ----------------------------------------------------------------

def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Codes packed low bits first in each byte, along the last axis: ``[..., bytes]`` →
    ``[..., count]`` uint8 (the first ``count`` codes)."""
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    codes = (packed[..., :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :count]


@_importer("MatMulNBits")
def _matmul_nbits(ctx: _Ctx) -> list:
    """``Y = A @ dequant(B) + bias`` with ``dequant = (q - z) * s`` per block of ``block_size``
    rows along K → ``QLinear`` (``act_quant`` none, ``group_size = block_size``):

    * ``B`` uint8 ``[N, k_blocks, block_size * bits / 8]``, codes packed low bits first along K,
      becomes the ``[K, N]`` code matrix (padding codes beyond K dropped);
    * ``scales`` ``[N, k_blocks]`` (or flat) becomes ``w_scale [k_blocks, N]`` float32;
    * ``zero_points`` uint8 packed like B (``[N, ceil(k_blocks * bits / 8)]``) are unpacked;
      zero points of A's type (``[N, k_blocks]``, 4-bit codes: each block's own min/max grid,
      as GGUF Q4_1) become a float32 ``w_zero_point`` over ``uint4`` codes;
      4-bit codes with zero points stay unsigned (``uint4`` codes and zero points). Without
      zero points ONNX Runtime subtracts ``2**(bits-1)``: that is stored as signed codes
      ``q - 2**(bits-1)`` without a zero point (``int4`` in [-8, 7]) — the same integer
      differences, so the same float32 weight. 8-bit codes become ``int8`` ``q - 128`` (and
      ``z - 128``): again the same differences.
    * ``g_idx`` is accepted only when it is the trivial order ``k // block_size``. (ORT 1.31's
      CPU kernel ignores packed uint8 zero points when a g_idx is present and dequantizes with
      8; optc follows the spec and uses them.)
    * ``accuracy_level`` is a lower bound on the precision ORT may compute with (4 lets it
      quantize A to int8 per block); optc computes in float32, which every level allows, so
      its results are the most accurate reading (ORT's at level 4 differ by that
      quantization of A).
    """
    k = ctx.attr("K")
    n = ctx.attr("N")
    bits = ctx.attr("bits", 4)
    block = ctx.attr("block_size")
    level = ctx.attr("accuracy_level", 0)
    prepacked = ctx.attr("weight_prepacked", 0)
    if k is None or n is None or block is None:
        raise ctx.fail("attributes K, N and block_size are required")
    if k <= 0 or n <= 0 or block < 16 or block & (block - 1):
        raise ctx.fail(f"K={k} and N={n} must be positive and block_size={block} a power of two >= 16")
    if prepacked:
        raise ctx.unsupported(f"weight_prepacked={prepacked} (a runtime-specific layout of B)")
    if bits not in (4, 8):
        raise ctx.unsupported(f"bits={bits} (optc's QLinear holds 4- and 8-bit codes)")
    if level not in (0, 1, 2, 3, 4):
        raise ctx.fail(f"accuracy_level={level} (0 to 4)")
    if level == 4 and not getattr(ctx.imp, "_noted_accuracy_level", False):
        ctx.imp._noted_accuracy_level = True
        log.warning("MatMulNBits accuracy_level=4 (first at %s): ONNX Runtime may quantize A to int8 per block; "
                    "optc computes in float32, which the attribute (a minimum accuracy) allows, so results "
                    "differ from ORT's by that activation quantization", ctx.where)
    _require_outputs(ctx, 1)
    x = ctx.input(0)
    if x.dtype not in (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16):
        raise ctx.fail(f"A must be float32, float16 or bfloat16, got {x.dtype.value}")
    if x.shape is not None and isinstance(x.shape[-1], int) and x.shape[-1] != k:
        raise ctx.fail(f"A has {x.shape[-1]} columns but K={k}")
    k_blocks = -(-k // block)
    blob = block * bits // 8
    b = ctx.const(1, "B")
    if b.dtype != np.uint8 or b.size != n * k_blocks * blob or (b.ndim == 3 and b.shape != (n, k_blocks, blob)):
        raise ctx.fail(f"B is {b.dtype} {list(b.shape)}; K={k}, N={n}, bits={bits}, block_size={block} need uint8 "
                       f"[{n}, {k_blocks}, {blob}] (N, ceil(K / block_size), block_size * bits / 8)")
    codes = _unpack(b.reshape(n, k_blocks * blob), bits, k).T  # [K, N] uint8
    scales = ctx.const(2, "scales")
    if scales.size != n * k_blocks:
        raise ctx.fail(f"scales has shape {list(scales.shape)}; need [{n}, {k_blocks}] (N, ceil(K / block_size))")
    if scales.dtype != x.dtype.numpy:
        raise ctx.fail(f"scales must have A's type {x.dtype.value}, got {scales.dtype}")
    w_scale = scales.reshape(n, k_blocks).T.astype(np.float32)
    zp = ctx.const(3, "zero_points")
    g_idx = ctx.const(4, "g_idx")
    if g_idx is not None:
        trivial = np.arange(k) // block
        if g_idx.shape != (k,) or not np.array_equal(g_idx.astype(np.int64), trivial):
            raise ctx.unsupported("g_idx reorders the rows of B (act-order GPTQ); only the trivial order "
                                  "k // block_size can be imported")
    bias = ctx.input(5)
    center = 1 << (bits - 1)
    if zp is not None and zp.dtype != np.uint8:
        return _float_zero_points(ctx, x, codes, w_scale, zp, bits, k_blocks, n, block, bias)
    if zp is not None:
        zbytes = -(-k_blocks * bits // 8)
        if zp.size != n * zbytes:
            raise ctx.fail(f"zero_points has shape {list(zp.shape)}; need uint8 [{n}, {zbytes}] "
                           f"(N, ceil(k_blocks * bits / 8)) for {k_blocks} blocks of {bits} bits")
        z = _unpack(zp.reshape(n, zbytes), bits, k_blocks).T  # [k_blocks, N]
    if bits == 4:
        import ml_dtypes

        if zp is None:
            w, wz = (codes.astype(np.int8) - center).astype(ml_dtypes.int4), None
        else:
            w, wz = codes.astype(ml_dtypes.uint4), z.astype(ml_dtypes.uint4)
    else:
        w = (codes.astype(np.int16) - center).astype(np.int8)
        wz = None if zp is None else (z.astype(np.int16) - center).astype(np.int8)
    return _weight_only_qlinear(ctx, x, w, w_scale, wz, bias, block)


def _float_zero_points(ctx: _Ctx, x, codes, w_scale, zp, bits: int, k_blocks: int, n: int, block: int, bias):
    """MatMulNBits with zero points of A's type: ``(q - z) * s`` with a real-valued ``z``."""
    import ml_dtypes

    if bits != 4:
        raise ctx.unsupported(f"{zp.dtype} zero points with bits={bits} (float zero points are imported for 4-bit codes)")
    if zp.dtype != x.dtype.numpy or zp.size != n * k_blocks:
        raise ctx.fail(f"zero_points is {zp.dtype} {list(zp.shape)}; float zero points need A's type "
                       f"{x.dtype.value} [{n}, {k_blocks}] (N, ceil(K / block_size))")
    wz = zp.reshape(n, k_blocks).T.astype(np.float32)
    return _weight_only_qlinear(ctx, x, codes.astype(ml_dtypes.uint4), w_scale, wz, bias, block)


def _weight_only_qlinear(ctx: _Ctx, x, w, w_scale, wz, bias, block: int) -> list:
    inputs = [x, ctx.constant(w, "q"), ctx.constant(w_scale, "scale"),
              None if wz is None else ctx.constant(wz, "zero_point"), bias]
    if bias is not None and bias.dtype is not DType.FLOAT32:
        inputs[4] = ctx.op("Cast", bias, to=DType.FLOAT32)
    return ctx.final("QLinear", *inputs, activation="none", group_size=int(block), act_quant="none", act_qmax=255)


# -- integer matmuls with float outputs ------------------------------------------------------

def _scaled_integer_product(ctx: _Ctx, acc, multiplier, bias):
    """``float(acc) * multiplier [+ bias]``, the last node named as the contrib op's output."""
    y = ctx.op("Cast", acc, to=DType.FLOAT32)
    if bias is None:
        return ctx.final("Mul", y, multiplier)
    return ctx.final("Add", ctx.op("Mul", y, multiplier), bias)


@_importer("DynamicQuantizeMatMul")
def _dynamic_quantize_matmul(ctx: _Ctx) -> list:
    """A quantized per tensor to uint8 as ``DynamicQuantizeLinear`` does, then
    ``float(Σ (a - a_zp)(b - b_zp)) * (a_scale * b_scale) + bias``."""
    _require_outputs(ctx, 1)
    a, b, b_scale, b_zp, bias = (ctx.input(i) for i in range(5))
    aq, a_scale, a_zp = ctx.graph.add_node("DynamicQuantizeLinear", [a], num_outputs=3,
                                           name=ctx._node_name("DynamicQuantizeLinear")).outputs
    acc = ctx.op("MatMulInteger", aq, b, a_zp, b_zp)
    return _scaled_integer_product(ctx, acc, ctx.op("Mul", a_scale, b_scale), bias)


@_importer("MatMulIntegerToFloat")
def _matmul_integer_to_float(ctx: _Ctx) -> list:
    """``float(Σ (a - a_zp)(b - b_zp)) * (a_scale * b_scale) + bias`` (per-tensor ``a_scale``)."""
    _require_outputs(ctx, 1)
    a, b, a_scale, b_scale, a_zp, b_zp, bias = (ctx.input(i) for i in range(7))
    for v, what in ((a_scale, "a_scale"), (a_zp, "a_zero_point")):
        if v is not None and v.shape is not None and any(not isinstance(d, int) or d != 1 for d in v.shape):
            raise ctx.unsupported(f"{what} of shape {list(v.shape)} (only one per tensor)")
    acc = ctx.op("MatMulInteger", a, b, a_zp, b_zp)
    if a_scale.dtype is not DType.FLOAT32:
        raise ctx.unsupported(f"{a_scale.dtype.value} scales (float32 only)")
    return _scaled_integer_product(ctx, acc, ctx.op("Mul", a_scale, b_scale), bias)


def _transpose_last2(ctx: _Ctx, v):
    if v.shape is None:
        raise ctx.unsupported("transposed operands of unknown rank")
    r = len(v.shape)
    perm = tuple(range(r - 2)) + (r - 1, r - 2)
    return ctx.op("Transpose", v, perm=perm)


@_importer("QGemm")
def _qgemm(ctx: _Ctx) -> list:
    """``alpha * a_scale * b_scale * (Σ (a - a_zp)(b - b_zp) + C)``, float, or requantized by
    ``QuantizeLinear(y_scale, y_zero_point)`` when those are given."""
    _require_outputs(ctx, 1)
    alpha = float(ctx.attr("alpha", 1.0))
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    a, a_scale, a_zp, b, b_scale, b_zp, c, y_scale, y_zp = (ctx.input(i) for i in range(9))
    if trans_a:
        a = _transpose_last2(ctx, a)
    if trans_b:
        b = _transpose_last2(ctx, b)
    acc = ctx.op("MatMulInteger", a, b, a_zp, b_zp)
    if c is not None:
        acc = ctx.op("Add", acc, c)
    y = ctx.op("Cast", acc, to=DType.FLOAT32)
    multiplier = ctx.op("Mul", a_scale, b_scale)
    if alpha != 1.0:
        multiplier = ctx.op("Mul", multiplier, ctx.constant(np.float32(alpha), "alpha"))
    if y_scale is None:
        return ctx.final("Mul", y, multiplier)
    return ctx.final("QuantizeLinear", ctx.op("Mul", y, multiplier), y_scale, y_zp)


@_importer("QLinearAdd")
def _qlinear_add(ctx: _Ctx) -> list:
    """``quantize((A - a_zp) * a_scale + (B - b_zp) * b_scale, c_scale, c_zp)``."""
    _require_outputs(ctx, 1)
    a, a_s, a_z, b, b_s, b_z, c_s, c_z = (ctx.input(i) for i in range(8))
    s = ctx.op("Add", ctx.op("DequantizeLinear", a, a_s, a_z), ctx.op("DequantizeLinear", b, b_s, b_z))
    if c_z is None:
        c_z = ctx.constant(np.zeros((), a.dtype.numpy), "c_zero_point")
    return ctx.final("QuantizeLinear", s, c_s, c_z)


# -- float fusions ORT's optimizer writes ----------------------------------------------------

@_importer("FusedMatMul")
def _fused_matmul(ctx: _Ctx) -> list:
    """``alpha * op(A) @ op(B)``, ``op`` transposing the last two dims when transA/transB."""
    _require_outputs(ctx, 1)
    alpha = float(ctx.attr("alpha", 1.0))
    trans_a, trans_b = ctx.attr("transA", 0), ctx.attr("transB", 0)
    for key in ("transBatchA", "transBatchB"):
        if ctx.attr(key, 0):
            raise ctx.unsupported(f"{key}=1 (batch-transposed operands)")
    a, b = ctx.input(0), ctx.input(1)
    if trans_a:
        a = _transpose_last2(ctx, a)
    if trans_b:
        b = _transpose_last2(ctx, b)
    if alpha == 1.0:
        return ctx.final("MatMul", a, b)
    return ctx.final("Mul", ctx.op("MatMul", a, b), ctx.constant(np.asarray(alpha, a.dtype.numpy), "alpha"))


_GEMM_ACTIVATIONS = {"Relu": (), "Tanh": (), "Sigmoid": (), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta")}


@_importer("FusedGemm")
def _fused_gemm(ctx: _Ctx) -> list:
    """``Gemm`` followed by its ``activation`` (with ``activation_alpha`` / ``_beta``)."""
    _require_outputs(ctx, 1)
    act = ctx.attr("activation", "")
    act_attrs = {"alpha": ctx.attr("activation_alpha"), "beta": ctx.attr("activation_beta")}
    ctx.attr("activation_gamma")
    gemm = {k: ctx.attr(k) for k in ("alpha", "beta", "transA", "transB")}
    gemm = {k: v for k, v in gemm.items() if v is not None}
    inputs = [v for v in ctx.inputs[:3]]
    if not act:
        return ctx.final("Gemm", *inputs, **gemm)
    if act not in _GEMM_ACTIVATIONS:
        raise ctx.unsupported(f"activation {act!r} (supported: {', '.join(_GEMM_ACTIVATIONS)})")
    attrs = {k: float(act_attrs[k]) for k in _GEMM_ACTIVATIONS[act] if act_attrs[k] is not None}
    return ctx.final(act, ctx.op("Gemm", *inputs, **gemm), **attrs)


@_importer("Gelu")
def _gelu(ctx: _Ctx) -> list:
    _require_outputs(ctx, 1)
    return ctx.final("Gelu", ctx.input(0), approximate="none")


@_importer("BiasGelu")
def _bias_gelu(ctx: _Ctx) -> list:
    _require_outputs(ctx, 1)
    return ctx.final("Gelu", ctx.op("Add", ctx.input(0), ctx.input(1)), approximate="none")


@_importer("FastGelu")
def _fast_gelu(ctx: _Ctx) -> list:
    """The tanh approximation of GELU, of ``X + bias``."""
    _require_outputs(ctx, 1)
    x = ctx.input(0)
    if ctx.input(1) is not None:
        x = ctx.op("Add", x, ctx.input(1))
    return ctx.final("Gelu", x, approximate="tanh")


@_importer("SkipLayerNormalization")
def _skip_layer_norm(ctx: _Ctx) -> list:
    """``s = input + skip [+ bias]``; ``LayerNormalization(s, gamma, beta)`` over the last axis.
    Outputs: the normalized value, mean, inverse std (as LayerNormalization's), and ``s``."""
    eps = float(ctx.attr("epsilon", 1e-12))
    x, skip, gamma, beta, bias = (ctx.input(i) for i in range(5))
    if len(ctx.names) > 4:
        raise ctx.unsupported(f"{len(ctx.names)} outputs (at most 4)")
    s_name = ctx.names[3] if len(ctx.names) > 3 else None
    if bias is None:
        s = ctx.graph.add_node("Add", [x, skip], output_names=[s_name], name=ctx._node_name("Add")).output
    else:
        s = ctx.graph.add_node("Add", [ctx.op("Add", x, skip), bias], output_names=[s_name],
                               name=ctx._node_name("Add")).output
    n_ln = min(len(ctx.names), 3)
    names = ctx.names[:n_ln]
    ln = ctx.graph.add_node("LayerNormalization", [s, gamma, beta], {"axis": -1, "epsilon": eps},
                            output_names=names, name=ctx.name).outputs
    out = list(ln) + [None] * (3 - n_ln)
    return out[:len(ctx.names)] if len(ctx.names) <= 3 else out + [s]
