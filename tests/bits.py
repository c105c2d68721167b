"""Bit-level comparison of arrays, for the low-precision type and quantization tests."""

from __future__ import annotations

import ml_dtypes
import numpy as np


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality, except that any two NaNs of an ordinary float type are equal (their
    payloads carry no meaning; in the low-precision types every code is compared)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f" or a.dtype == ml_dtypes.bfloat16:
        both = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
        w = a.dtype.itemsize
        ua, ub = a.view(f"u{w}"), b.view(f"u{w}")
        return bool(np.all(both | (ua == ub)))
    return a.view(np.uint8).tolist() == b.view(np.uint8).tolist()
