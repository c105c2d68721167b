"""Bit-exact conversions between float32/float64 and the low-precision float formats (the four
fp8 flavours, ``f4e2m1``, ``f8e8m0``), for compiled code.

TVM 0.27 has fp8 dtypes, but its CPU conversions were checked here and give wrong answers
(1e6 → -15 in e4m3fn, NaN → 1.5, inf → 1, e4m3fnuz off by a factor of two; fp4 and the
sub-byte integers do not compile at all). So compiled modules hold these types as their bit
patterns (``codegen/storage.py``) and convert with the integer arithmetic below:

* ``encode`` rounds a float's bits to a format's code, round-to-nearest-even, subnormals,
  saturation and the NaN/inf/-0 rules of each flavour — exactly what ml_dtypes (and so the
  ONNX reference, and optc's interpreter) computes;
* ``encode_e8m0`` is ``onnx.numpy_helper.to_float8e8m0`` (round_mode up/down/nearest);
* decoding is a 256-entry table lookup (``decode_table``), exact by construction.

The arithmetic is written once over an ``ops`` namespace (``NumpyOps`` for arrays, ``TirOps``
for TIR expressions inside a ``te.compute``), so the numpy instance, tested exhaustively
against ml_dtypes, is the same code the kernels run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir.types import DType


@dataclass(frozen=True)
class FloatFormat:
    """A small float format: ``kind`` is ``"ieee"`` (inf and NaN, e5m2), ``"fn"`` (no inf, NaN =
    all ones, e4m3fn), ``"fnuz"`` (no inf, no -0, the one NaN is 0x80) or ``"sat"`` (no inf, no
    NaN: overflow saturates, f4e2m1)."""

    exp_bits: int
    man_bits: int
    bias: int
    kind: str

    @property
    def sign_shift(self) -> int:
        return self.exp_bits + self.man_bits

    @property
    def max_code(self) -> int:
        """Code (without sign) of the largest finite value."""
        full = (1 << self.sign_shift) - 1
        return {"ieee": full - (1 << self.man_bits), "fn": full - 1, "fnuz": full, "sat": full}[self.kind]


FORMATS: dict[DType, FloatFormat] = {
    DType.FLOAT8E4M3FN: FloatFormat(4, 3, 7, "fn"),
    DType.FLOAT8E4M3FNUZ: FloatFormat(4, 3, 8, "fnuz"),
    DType.FLOAT8E5M2: FloatFormat(5, 2, 15, "ieee"),
    DType.FLOAT8E5M2FNUZ: FloatFormat(5, 2, 16, "fnuz"),
    DType.FLOAT4E2M1: FloatFormat(2, 1, 1, "sat"),
}


@dataclass(frozen=True)
class _Source:
    width: int
    exp_bits: int
    man_bits: int
    bias: int
    int_dtype: str


SOURCES = {DType.FLOAT32: _Source(32, 8, 23, 127, "int32"), DType.FLOAT64: _Source(64, 11, 52, 1023, "int64")}


class NumpyOps:
    """``ops`` over numpy arrays of the source's signed integer type."""

    def __init__(self, int_dtype: str):
        self.dt = np.dtype(int_dtype)

    def const(self, v: int):
        return self.dt.type(v)

    def where(self, c, a, b):
        return np.where(c, a, b).astype(self.dt)

    def min(self, a, b):
        return np.minimum(a, b).astype(self.dt)

    def max(self, a, b):
        return np.maximum(a, b).astype(self.dt)

    def and_(self, a, b):
        return np.logical_and(a, b)

    def or_(self, a, b):
        return np.logical_or(a, b)

    def not_(self, a):
        return np.logical_not(a)


class TirOps:
    """``ops`` over TIR expressions of the source's signed integer type."""

    def __init__(self, int_dtype: str):
        from tvm import tirx

        self.tirx = tirx
        self.dt = int_dtype

    def const(self, v: int):
        return self.tirx.const(v, self.dt)

    def where(self, c, a, b):
        return self.tirx.Select(c, a, b)

    def min(self, a, b):
        return self.tirx.min(a, b)

    def max(self, a, b):
        return self.tirx.max(a, b)

    def and_(self, a, b):
        return self.tirx.And(a, b)

    def or_(self, a, b):
        return self.tirx.Or(a, b)

    def not_(self, a):
        return self.tirx.Not(a)


def encode(bits: Any, src: DType, dst: DType, saturate: bool, ops) -> Any:
    """The code (an integer in ``[0, 256)``, of the source's integer type) of the float whose
    bits (as a signed integer of the source's width) are ``bits``, rounded to ``dst``."""
    s, f, c = SOURCES[src], FORMATS[dst], ops.const
    sm, m = s.man_bits, f.man_bits
    abs_mask = (1 << (s.width - 1)) - 1
    exp_all = ((1 << s.exp_bits) - 1) << sm
    sign = bits < c(0)
    a = bits & c(abs_mask)
    is_nan = a > c(exp_all)
    is_inf = a == c(exp_all)
    a = ops.where(a >= c(exp_all), c(0), a)  # keep inf/NaN out of the arithmetic below
    emin = 1 - f.bias  # exponent of the smallest normal
    # normal in the target: round the mantissa to m bits (carries ripple into the exponent)
    shift = sm - m
    r = (a + c((1 << (shift - 1)) - 1) + ((a >> c(shift)) & c(1))) >> c(shift)
    mag_normal = r - c((s.bias - f.bias) << m)
    # subnormal in the target: round value / 2**(emin - m) to an integer, which is the code
    field = a >> c(sm)
    mant = a & c((1 << sm) - 1)
    is_norm_src = field > c(0)
    ms = ops.where(is_norm_src, mant | c(1 << sm), mant)
    unit = ops.where(is_norm_src, field, c(1)) - c(s.bias + sm)  # ms * 2**unit is the value
    sh = ops.max(ops.min(c(emin - m) - unit, c(sm + 2)), c(1))
    mag_sub = (ms + (c(1) << (sh - c(1))) - c(1) + ((ms >> sh) & c(1))) >> sh
    mag = ops.where(a < c((emin + s.bias) << sm), mag_sub, mag_normal)
    big = ops.or_(mag > c(f.max_code), is_inf)
    if f.kind == "sat" or saturate:
        mag = ops.where(big, c(f.max_code), mag)
    elif f.kind == "ieee":
        mag = ops.where(big, c(f.max_code + 1), mag)  # inf
    sb = c(1 << f.sign_shift)
    signed = ops.where(sign, mag | sb, mag)
    if f.kind == "ieee":
        return ops.where(is_nan, ops.where(sign, c(0xFE), c(0x7E)), signed)
    if f.kind == "fn":
        nan = ops.or_(is_nan, big) if not saturate else is_nan
        return ops.where(nan, ops.where(sign, c(0xFF), c(0x7F)), signed)
    if f.kind == "fnuz":
        nan = ops.or_(is_nan, big) if not saturate else is_nan
        return ops.where(nan, c(0x80), ops.where(mag == c(0), c(0), signed))
    # "sat" (f4e2m1): NaN becomes -0 (positive NaN) or +0 (negative NaN), as ml_dtypes does
    return ops.where(is_nan, ops.where(sign, c(0), sb), signed)


def encode_e8m0(bits: Any, saturate: bool, round_mode: str, ops) -> Any:
    """The f8e8m0 code of the float32 whose bits (int32) are ``bits`` (the exponent, rounded by
    ``round_mode``; inf and NaN give NaN, 0xFF), as ``onnx.numpy_helper.to_float8e8m0``."""
    c = ops.const
    exponent = (bits >> c(23)) & c(0xFF)
    special = exponent == c(0xFF)
    if round_mode == "nearest":
        g = (bits & c(0x400000)) != c(0)
        r = (bits & c(0x200000)) != c(0)
        st = (bits & c(0x1FFFFF)) != c(0)
        up = ops.and_(g, ops.or_(ops.or_(r, st), exponent > c(0)))
    elif round_mode == "up":
        up = (bits & c(0x7FFFFF)) != c(0)
    elif round_mode == "down":
        up = None
    else:
        raise ValueError(f"unknown round_mode {round_mode!r}")
    if up is None:
        code = exponent
    else:
        if saturate:
            up = ops.and_(up, exponent != c(0xFE))
        code = ops.where(up, exponent + c(1), exponent)
    return ops.where(special, c(0xFF), code)


def decode_table(dtype: DType) -> np.ndarray:
    """float32 value of each of the 256 byte codes of ``dtype`` (codes past 2**bits repeat the
    low bits', so any byte indexes safely)."""
    codes = np.arange(256, dtype=np.uint8)
    if dtype.is_packed:
        codes = codes & np.uint8((1 << dtype.bits) - 1)
    with np.errstate(all="ignore"):
        return codes.view(dtype.numpy).astype(np.float32)


def encode_numpy(x: np.ndarray, dst: DType, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """The numpy instance of ``encode``/``encode_e8m0``: codes (uint8) of float32/float64 ``x``."""
    x = np.asarray(x)
    src = DType.FLOAT64 if x.dtype == np.float64 else DType.FLOAT32
    if dst is DType.FLOAT8E8M0:
        bits = x.astype(np.float32).view(np.int32)
        return encode_e8m0(bits, saturate, round_mode, NumpyOps("int32")).astype(np.uint8)
    s = SOURCES[src]
    bits = x.astype(src.numpy).view(s.int_dtype)
    return encode(bits, src, dst, saturate, NumpyOps(s.int_dtype)).astype(np.uint8)
