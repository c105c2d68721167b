"""torch dtypes as IR element types, and tensors as numpy arrays (the IR holds constants as numpy;
bfloat16 goes through ``ml_dtypes``)."""

from __future__ import annotations

import numpy as np
import torch

from ...ir import DType, UnsupportedOpError

_DTYPES = {
    torch.float32: DType.FLOAT32,
    torch.float16: DType.FLOAT16,
    torch.bfloat16: DType.BFLOAT16,
    torch.float64: DType.FLOAT64,
    torch.int8: DType.INT8,
    torch.int16: DType.INT16,
    torch.int32: DType.INT32,
    torch.int64: DType.INT64,
    torch.uint8: DType.UINT8,
    torch.bool: DType.BOOL,
}
for _name, _dt in (("uint16", DType.UINT16), ("uint32", DType.UINT32), ("uint64", DType.UINT64),
                   ("float8_e4m3fn", DType.FLOAT8E4M3FN), ("float8_e4m3fnuz", DType.FLOAT8E4M3FNUZ),
                   ("float8_e5m2", DType.FLOAT8E5M2), ("float8_e5m2fnuz", DType.FLOAT8E5M2FNUZ),
                   ("float8_e8m0fnu", DType.FLOAT8E8M0)):
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _dt


def torch_dtype(dtype: torch.dtype) -> DType:
    """The IR element type of a torch dtype."""
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise UnsupportedOpError(f"torch dtype {dtype} has no IR element type") from None


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A copy of ``t`` as a numpy array of its IR element type."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    dt = torch_dtype(t.dtype)
    if dt.is_low_precision:  # torch cannot hand fp8 to numpy: go through the bit pattern
        return t.view(torch.uint8).numpy().view(dt.numpy).copy()
    return t.numpy().copy()
