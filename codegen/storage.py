"""How compiled modules hold element types TVM cannot compute with.

TVM 0.27's own fp8 conversions give wrong answers on the CPU and its sub-byte types do not
compile (``codegen/lowp.py``), so inside a compiled module

* the fp8 types, ``f8e8m0`` and ``f4e2m1`` are their **bit patterns** in ``uint8``
  (``f4e2m1`` in the low 4 bits);
* ``i4``/``i2`` are their values in ``int8``, ``u4``/``u2`` in ``uint8``.

This is each tensor's *storage dtype* (``tvm_dtype``). Lowerings that only move elements
(reshape, transpose, slice, gather, concat, ...) are correct on storage as they are; Cast,
QuantizeLinear, DequantizeLinear and BitCast convert explicitly. Every other op on such a type
would compute on bit patterns, so ``check_node`` refuses it at compile time, naming the type —
never a silent wrong answer. The runtime converts arrays at the module boundary
(``to_storage``/``from_storage``), so callers pass and get ml_dtypes arrays like the
interpreter's. Nothing here imports TVM or torch (the runtime uses it).
"""

from __future__ import annotations

import numpy as np

from ..ir.types import DType

STORAGE: dict[DType, str] = {
    DType.FLOAT8E4M3FN: "uint8", DType.FLOAT8E4M3FNUZ: "uint8", DType.FLOAT8E5M2: "uint8",
    DType.FLOAT8E5M2FNUZ: "uint8", DType.FLOAT8E8M0: "uint8", DType.FLOAT4E2M1: "uint8",
    DType.INT4: "int8", DType.INT2: "int8", DType.UINT4: "uint8", DType.UINT2: "uint8",
}
"""Storage dtype (TVM spelling) of each element type compiled modules do not hold natively."""

MOVE_OPS = frozenset({
    "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice",
    "Gather", "Expand", "Tile", "Shape", "Size", "Where",
})
"""Ops whose lowering only moves (or selects) elements: exact on storage."""

CONVERT_OPS = frozenset({"Cast", "CastLike", "QuantizeLinear", "DequantizeLinear", "BitCast", "QLinear"})
"""Ops whose lowering converts to and from storage explicitly."""


def tvm_dtype(dtype: DType) -> str:
    """The TVM dtype a compiled module holds ``dtype`` in."""
    return STORAGE.get(dtype, dtype.long_name)


def check_node(node) -> str | None:
    """Why ``node`` cannot be compiled because of a stored element type, or None."""
    if node.op in MOVE_OPS or node.op in CONVERT_OPS:
        return None
    for v in list(node.inputs) + list(node.outputs):
        if v is not None and v.dtype in STORAGE:
            return f"{node.op} on {v.dtype.value} (compiled code holds {v.dtype.value} as {STORAGE[v.dtype]} " \
                   f"and only moves or converts it)"
    return None


def to_storage(array: np.ndarray, dtype: DType) -> np.ndarray:
    """A numpy array of ``dtype`` (ml_dtypes for the low-precision types) in storage form."""
    if dtype not in STORAGE:
        return array
    array = np.asarray(array)
    if dtype.is_float:
        bits = np.array(array, dtype=dtype.numpy, order="C").view(np.uint8)  # (keeps 0-d arrays 0-d)
        return bits & np.uint8((1 << dtype.bits) - 1) if dtype.is_packed else bits
    return array.astype(STORAGE[dtype])


def from_storage(array: np.ndarray, dtype: DType) -> np.ndarray:
    """Inverse of ``to_storage``: a storage-form array as an array of ``dtype``."""
    if dtype not in STORAGE:
        return array
    array = np.asarray(array)
    if dtype.is_float:
        bits = np.array(array, dtype=np.uint8, order="C")
        if dtype.is_packed:
            bits = bits & np.uint8((1 << dtype.bits) - 1)
        return bits.view(dtype.numpy)
    return array.astype(dtype.numpy)
