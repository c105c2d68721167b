"""Low-precision element types in the interpreter: their compute representation, rounding, and
exact ONNX ``Cast`` semantics to and from them.

Torch has no arithmetic on fp8/fp4/sub-byte integers, so kernels see them widened (see
``engine.COMPUTE_DTYPE``):

* ``f8e4m3fn``, ``f8e4m3fnuz``, ``f8e5m2``, ``f8e5m2fnuz``, ``f8e8m0`` and ``f4e2m1`` as
  ``float32`` (every value of theirs is exact in float32). After every node the engine rounds
  such an output to the type (``round_to``: ``ml_dtypes``' conversion, round-to-nearest-even,
  no saturation), so a kernel may compute in float32 freely and the result is what one rounding
  of the float32 result gives.
* ``i4``/``i2`` as ``int8`` and ``u4``/``u2`` as ``uint8``; the engine wraps (sign-extends /
  masks) such outputs into range after every node, the way it masks ``u16``/``u32``.

Conversions *to* a low-precision type follow the ONNX reference implementation
(``onnx.reference``), which is ml_dtypes' arithmetic:

* float8 targets round to nearest even; with ``saturate`` (the default) values beyond the
  largest finite value and ±inf become ±max, NaN stays NaN; without it they become inf (e5m2)
  or NaN (the others) exactly as ml_dtypes converts. The ``fnuz`` types have no -0 (it becomes
  +0) and a single NaN (0x80).
* ``f4e2m1`` has neither inf nor NaN: ml_dtypes saturates, and maps NaN to ∓0 (+NaN → -0).
* ``f8e8m0`` (a power of two, no sign, NaN = 0xFF) takes the exponent of the float32 value,
  rounded by ``round_mode`` ('up': any fraction rounds up; 'nearest'; 'down': truncate) and,
  with ``saturate``, never past the largest value; float32 inf/NaN become NaN. This is
  ``onnx.numpy_helper.to_float8e8m0`` (the ONNX spec's table says inf saturates; the
  reference, which the conformance tests use, gives NaN).
* sub-byte integers from floats truncate toward zero, and a value out of range (or NaN)
  becomes 0 (ml_dtypes; ONNX leaves it undefined); from integers they wrap (two's complement).
* integers go to float8 through float64 (exact below 2**53).
"""

from __future__ import annotations

import numpy as np
import torch

from ..types import DType

# The 6 low-precision float types, all held as float32.
LOWP_FLOATS = frozenset(d for d in DType if d.is_low_precision and d.is_float)
FLOAT8 = frozenset({DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ})
# sub-byte integers: (bits, signed)
SUB_BYTE_INTS = {DType.INT4: (4, True), DType.UINT4: (4, False), DType.INT2: (2, True), DType.UINT2: (2, False)}

COMPUTE: dict[DType, torch.dtype] = {
    **{d: torch.float32 for d in LOWP_FLOATS},
    DType.INT4: torch.int8, DType.INT2: torch.int8, DType.UINT4: torch.uint8, DType.UINT2: torch.uint8,
}
"""The torch dtype that holds each low-precision type (its compute representation)."""


def wide_dtype(dtype: DType) -> DType:
    """The ordinary IR type whose compute representation a low-precision type shares."""
    if dtype in LOWP_FLOATS:
        return DType.FLOAT32
    if dtype in SUB_BYTE_INTS:
        return DType.INT8 if SUB_BYTE_INTS[dtype][1] else DType.UINT8
    return dtype


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


# f8e5m2 is the only type here with NaN payloads (0x7D..0x7F and their negatives). ml_dtypes
# canonicalizes them through float32, which would lose the bits BitCast must keep; so the
# compute representation carries the payload in float32's top mantissa bits, and going back
# reads it from there (a canonical float32 NaN, 0x7FC00000, is the canonical 0x7E).
def _e5m2_to_f32(a: np.ndarray) -> np.ndarray:
    codes = np.require(a, requirements="C").view(np.uint8)  # (ascontiguousarray makes 0-d 1-d)
    with np.errstate(all="ignore"):
        f = codes.view(DType.FLOAT8E5M2.numpy).astype(np.float32)
    nan = (codes & 0x7F) > 0x7C
    if nan.any():
        bits = ((codes.astype(np.uint32) & 0x80) << 24) | 0x7F800000 | ((codes.astype(np.uint32) & 0x3) << 21)
        f = np.where(nan, bits.view(np.float32), f)
    return f


def _f32_to_e5m2(f: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        out = f.astype(DType.FLOAT8E5M2.numpy)
    nan = np.isnan(f)
    if nan.any():
        bits = np.require(f, np.float32, "C").view(np.uint32)
        payload = (bits >> 21) & 0x3
        codes = ((bits >> 24) & 0x80) | 0x7C | np.where(payload == 0, 0x2, payload)
        out = np.where(nan, codes.astype(np.uint8).view(DType.FLOAT8E5M2.numpy), out)
    return out


def round_to(t: torch.Tensor, dtype: DType) -> torch.Tensor:
    """Bring a compute-representation result into the value set of ``dtype`` (the engine calls
    this after every node that outputs a low-precision type)."""
    if dtype in SUB_BYTE_INTS:
        bits, signed = SUB_BYTE_INTS[dtype]
        mask = (1 << bits) - 1
        if signed:
            t = t.to(torch.int8)
            half = 1 << (bits - 1)
            return ((t & mask) ^ half) - half
        return t.to(torch.uint8) & mask
    a = _np(t)
    if dtype is DType.FLOAT8E5M2:
        return torch.from_numpy(_e5m2_to_f32(_f32_to_e5m2(a.astype(np.float32, copy=False))))
    with np.errstate(all="ignore"):
        r = a.astype(dtype.numpy).astype(np.float32)
    return torch.from_numpy(r)


def to_compute(array: np.ndarray, dtype: DType) -> np.ndarray:
    """A numpy array of a low-precision ``dtype`` as the numpy array of its compute dtype."""
    if dtype is DType.FLOAT8E5M2:
        return _e5m2_to_f32(np.asarray(array, dtype=dtype.numpy))
    return np.asarray(array).astype(np.float32 if dtype in LOWP_FLOATS else
                                    np.int8 if SUB_BYTE_INTS[dtype][1] else np.uint8)


def from_compute(t: torch.Tensor, dtype: DType) -> np.ndarray:
    """A compute-representation tensor (already in the value set) as a numpy array of ``dtype``."""
    if dtype is DType.FLOAT8E5M2:
        return _f32_to_e5m2(_np(t).astype(np.float32, copy=False))
    with np.errstate(all="ignore"):
        return _np(t).astype(dtype.numpy)


def _source_values(x: torch.Tensor, src: DType) -> np.ndarray:
    """The values of ``x`` (compute representation of ``src``) as a float numpy array that holds
    them exactly: floats keep their own width (float64 stays float64, bfloat16 becomes float32),
    integers and bool become float64."""
    if x.dtype == torch.bfloat16:
        x = x.to(torch.float32)
    if src is DType.UINT64:
        f = x.to(torch.float64)
        return _np(torch.where(x < 0, f + 2.0**64, f))
    if not x.dtype.is_floating_point:
        return _np(x.to(torch.float64))
    return _np(x)


def float8_max(dtype: DType) -> float:
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype.numpy).max)


def to_float8e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """float32 values → e8m0 codes (uint8), as ``onnx.numpy_helper.to_float8e8m0``."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)
    special = exponent == 0xFF
    normal = ~special
    if round_mode == "nearest":
        g = (bits & 0x400000) > 0
        r = (bits & 0x200000) > 0
        s = (bits & 0x1FFFFF) > 0
        lsb = exponent > 0
        up = g & (r | s | lsb) & normal
    elif round_mode == "up":
        up = ((bits & 0x7FFFFF) > 0) & normal
    elif round_mode == "down":
        up = np.zeros_like(normal)
    else:
        raise ValueError(f"unknown round_mode {round_mode!r}")
    if saturate:
        up &= exponent != 0xFE
    exponent = exponent + up.astype(np.uint16)
    return np.where(special, np.uint16(0xFF), exponent).astype(np.uint8)


def cast_to_lowp(x: torch.Tensor, src: DType, dst: DType, saturate: bool = True,
                 round_mode: str = "up") -> torch.Tensor:
    """ONNX Cast of ``x`` (compute representation of ``src``, an ordinary type) to the
    low-precision ``dst``; returns the compute representation of the result."""
    if dst in SUB_BYTE_INTS:
        bits, signed = SUB_BYTE_INTS[dst]
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if src is DType.BOOL:
            return x.to(COMPUTE[dst])
        if src.is_float:
            t = torch.trunc(x.to(torch.float64) if x.dtype == torch.float64 else x.to(torch.float32))
            ok = (t >= lo) & (t <= hi)  # False for NaN
            return torch.where(ok, t, torch.zeros((), dtype=t.dtype)).to(COMPUTE[dst])
        return round_to(x.to(torch.int64) & ((1 << bits) - 1), dst)  # wrap: keep the low bits
    v = _source_values(x, src)
    with np.errstate(all="ignore"):
        if dst is DType.FLOAT8E8M0:
            codes = to_float8e8m0(v.astype(np.float32), saturate, round_mode)
            out = codes.view(dst.numpy).astype(np.float32)
        else:
            if saturate and dst in FLOAT8:
                m = float8_max(dst)
                v = np.clip(v, -m, m)
            out = v.astype(dst.numpy).astype(np.float32)
    return torch.from_numpy(np.require(out, requirements="C"))


def bitcast(x: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    """Reinterpret the bits of ``x`` (a numpy array of ``src``) as ``dst`` (same bit width)."""
    from ..types import element_codes, from_element_codes

    if src.is_packed:
        return from_element_codes(element_codes(x, src), dst)
    y = np.array(x, order="C", copy=True).view(dst.numpy)  # (ascontiguousarray makes 0-d 1-d)
    if dst is DType.BOOL:
        y = y.view(np.uint8) != 0  # a byte other than 0/1 is true
    return y
