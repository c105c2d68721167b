"""Element types, dimensions and tensor types of the IR.

A dimension is an ``int`` (static), a ``str`` (a named symbolic dim such as ``"batch"`` or a
product of them such as ``"batch*seq"``), or ``None`` (unknown, e.g. the length of a NonZero).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Union

import numpy as np

Dim = Union[int, str, None]
Shape = tuple  # tuple[Dim, ...]


class DType(enum.Enum):
    """Element type. The value is the short spelling used by the text form."""

    FLOAT32 = "f32"
    FLOAT16 = "f16"
    BFLOAT16 = "bf16"
    FLOAT64 = "f64"
    INT8 = "i8"
    INT16 = "i16"
    INT32 = "i32"
    INT64 = "i64"
    UINT8 = "u8"
    UINT16 = "u16"
    UINT32 = "u32"
    UINT64 = "u64"
    BOOL = "bool"

    @property
    def numpy(self) -> np.dtype:
        if self is DType.BFLOAT16:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(_TO_NUMPY[self])

    @property
    def long_name(self) -> str:
        """The conventional spelling (``float32``, ``bfloat16``, ...), as numpy and TVM write it."""
        return "bfloat16" if self is DType.BFLOAT16 else _TO_NUMPY[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64)

    @property
    def is_int(self) -> bool:
        return not self.is_float and self is not DType.BOOL

    @property
    def is_signed(self) -> bool:
        return self.is_float or self.value.startswith("i")

    @property
    def itemsize(self) -> int:
        return 2 if self is DType.BFLOAT16 else self.numpy.itemsize

    @staticmethod
    def from_numpy(dtype: np.dtype | type) -> "DType":
        dtype = np.dtype(dtype)
        if dtype.name == "bfloat16":
            return DType.BFLOAT16
        try:
            return _FROM_NUMPY[dtype.name]
        except KeyError:
            raise TypeError(f"numpy dtype {dtype} has no IR element type") from None

    @staticmethod
    def parse(text: str) -> "DType":
        try:
            return DType(text)
        except ValueError:
            raise ValueError(f"unknown element type {text!r}") from None

    def __repr__(self) -> str:
        return f"DType.{self.name}"


_TO_NUMPY = {
    DType.FLOAT32: "float32",
    DType.FLOAT16: "float16",
    DType.FLOAT64: "float64",
    DType.INT8: "int8",
    DType.INT16: "int16",
    DType.INT32: "int32",
    DType.INT64: "int64",
    DType.UINT8: "uint8",
    DType.UINT16: "uint16",
    DType.UINT32: "uint32",
    DType.UINT64: "uint64",
    DType.BOOL: "bool",
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorType:
    """The type of every IR value: an element type and a shape (``None`` when even the rank is
    unknown)."""

    dtype: DType
    shape: Shape | None

    def __post_init__(self) -> None:
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(_normalize_dim(d) for d in self.shape))

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def with_shape(self, shape: Iterable[Dim] | None) -> "TensorType":
        return TensorType(self.dtype, None if shape is None else tuple(shape))

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype.value}[*]"
        return f"{self.dtype.value}[{', '.join(format_dim(d) for d in self.shape)}]"

    @staticmethod
    def of(array: np.ndarray) -> "TensorType":
        return TensorType(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))


def _normalize_dim(d: Dim) -> Dim:
    if d is None or isinstance(d, str):
        return d
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
        return int(d)
    raise TypeError(f"bad dimension {d!r}")


def format_dim(d: Dim) -> str:
    return "?" if d is None else str(d)


def dims_compatible(a: Dim, b: Dim) -> bool:
    """Whether two dims may describe the same extent (unknown matches anything)."""
    return a is None or b is None or a == b


def types_compatible(declared: TensorType, inferred: TensorType) -> bool:
    if declared.dtype != inferred.dtype:
        return False
    if declared.shape is None or inferred.shape is None:
        return True
    return len(declared.shape) == len(inferred.shape) and all(
        dims_compatible(a, b) for a, b in zip(declared.shape, inferred.shape)
    )
