"""Dense layers whose weight is stored in low precision and decoded inside the kernel: int8 and
int4 codes with per-channel or per-group scales (weight-only ``QLinear``), bfloat16 and float16
values. Activations stay float (rounded to the weight's type for bf16/fp16, as ``QLinear``
defines it); the multiply-accumulate is float32.

The kernel is optc's packed dense kernel (``dense.py``) with a decoding step on the weight read:
the same ``optc_dense_pad`` / ``optc_dense_out`` blocks, the same padded register tile, so
``DenseRule`` schedules it and FuseOps hands it the bias/activation epilogue. The weight panel is
read as codes and decoded in registers, so the kernel reads ``bits/32`` of the fp32 weight's bytes
— the point of weight-only quantization for memory-bound layers (decoders at batch 1).

Layouts (``nb`` = panel width, ``G`` = group size, ``Nb = ceil(N / nb)``):

* int8 codes ``[Nb, K, nb]``;
* int4 codes two rows per byte ``[Nb, ceil(K/2), nb]`` uint8, row ``2i`` in the low nibble and
  ``2i+1`` in the high one — a whole vector of ``nb`` bytes serves two k steps, and the nibble
  picked depends only on ``k % 2``, a constant in the unrolled k loop;
* scales (and zero points: the codes' type, or float32) ``[Nb, groups, nb]``, zero-padded.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .dense import DECODE_BLOCK, dense_packed_te, pack_weight, static_rows

GEMV_ROWS = 2
"""At most this many rows (a static count), the weight is decoded inside the product loop."""


def pack_params(p: np.ndarray, nb: int) -> np.ndarray:
    """A per-channel ``[N]`` or grouped ``[groups, N]`` parameter as ``[Nb, groups, nb]``."""
    p2 = p.reshape(1, -1) if p.ndim == 1 else p
    return pack_weight(np.ascontiguousarray(p2), nb)


def pack_int4(q: np.ndarray, nb: int) -> np.ndarray:
    """Signed or unsigned 4-bit codes ``[K, N]`` (values in -8..15, one per element) as
    ``[Nb, ceil(K/2), nb]`` uint8 with two rows per byte (row 2i low nibble)."""
    k, n = q.shape
    nib = (q.astype(np.int16) & 0xF).astype(np.uint8)
    if k % 2:
        nib = np.concatenate([nib, np.zeros((1, n), np.uint8)])
    pairs = nib[0::2] | (nib[1::2] << 4)
    return pack_weight(pairs, nb)


def weight_decoder(codes: te.Tensor, scale: te.Tensor | None, zero: te.Tensor | None, kind: str, group_size: int):
    """``(jb, k, jj) -> float32 weight`` read from packed codes (see the module docstring):
    ``kind`` ``int8`` / ``int4`` / ``uint4`` (``(q - z) * s``; a float32 ``z`` is subtracted in
    float32, as ``QLinear`` defines it) or ``float`` (bf16/f16 values)."""

    def weight(jb, kk, jj):
        if kind == "float":
            return codes[jb, kk, jj].astype("float32")
        if kind == "int8":
            q = codes[jb, kk, jj].astype("int32")
        else:
            byte = codes[jb, kk // 2, jj].astype("int32")
            # int32 shift amount: an int64 one (the loop variable's type) widens every lane to
            # 64 bits, and the vectorized decode ran 4x slower
            nib = tirx.bitwise_and(tirx.shift_right(byte, ((kk % 2) * 4).astype("int32")), 15)
            q = tirx.bitwise_xor(nib, 8) - 8 if kind == "int4" else nib  # 4-bit two's complement
        g = 0 if group_size == 0 else kk // group_size
        if zero is not None and zero.dtype == "float32":
            return (q.astype("float32") - zero[jb, g, jj]) * scale[jb, g, jj]
        if zero is not None:
            q = q - zero[jb, g, jj].astype("int32")
        return q.astype("float32") * scale[jb, g, jj]

    return weight


def round_to(v, dtype: str):
    """float32 ``v`` rounded to ``dtype`` (bfloat16 / float16, to nearest even) and back. TVM's
    simplifier drops a float32 -> bfloat16 -> float32 cast pair, so bfloat16 rounds on the bits."""
    if dtype == "bfloat16":
        bits = tirx.reinterpret("uint32", v)
        lsb = tirx.bitwise_and(tirx.shift_right(bits, tirx.const(16, "uint32")), tirx.const(1, "uint32"))
        rounded = tirx.bitwise_and(bits + tirx.const(0x7FFF, "uint32") + lsb, tirx.const(0xFFFF0000, "uint32"))
        return tirx.Select(v != v, v, tirx.reinterpret("float32", rounded))  # NaN stays NaN
    return v.astype(dtype).astype("float32")


def decoded_dense_te(x: te.Tensor, codes: te.Tensor, scale: te.Tensor | None, zero: te.Tensor | None,
                     n: int, mi: int, *, kind: str, group_size: int, act_round: str | None = None):
    """TE of ``x [..., K] @ decode(codes)`` -> float32 ``[..., n]``: a decode block
    (``optc_dense_decode``, float32 ``[Nb, K, nb]``) feeding optc's packed dense kernel.
    ``DenseRule`` computes the decode per weight panel, inside the parallel panel loop, into a
    ``K x nb`` scratch that every row tile of the panel then reads: the codes are decoded once
    per call, and the hot loop is the fp32 kernel's. ``act_round`` rounds the activations to
    bf16/f16 first."""
    nblk, nb = codes.shape[0], codes.shape[-1]
    kdim = x.shape[-1]
    decode = weight_decoder(codes, scale, zero, kind, group_size)
    if act_round is not None:  # once per element, not once per weight panel
        x = te.compute(x.shape, lambda *i: round_to(x(*i), act_round), name=f"round_{act_round}")
    rows = static_rows(x.shape[:-1])
    if rows is not None and rows <= GEMV_ROWS:
        # a matrix-vector product (a decode step): each weight is read once anyway, so it is
        # decoded in registers inside the multiply-add loop, with a tile of just these rows —
        # no scratch panel written and read back (that made int4 decode as slow as fp32)
        return dense_packed_te(x, codes, n, rows, "float32", weight_at=decode)
    w = te.compute((nblk, kdim, nb), lambda jb, kk, jj: decode(jb, kk, jj), name=DECODE_BLOCK)
    return dense_packed_te(x, w, n, mi, "float32")
