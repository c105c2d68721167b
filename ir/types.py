"""Element types, dimensions and tensor types of the IR.

A dimension is an ``int`` (static), a ``str`` (a named symbolic dim such as ``"batch"`` or a
product of them such as ``"batch*seq"``), or ``None`` (unknown, e.g. the length of a NonZero).

Low-precision element types (quantized weights and activations) are first-class: the four fp8
flavours of ONNX (``f8e4m3fn``, ``f8e4m3fnuz``, ``f8e5m2``, ``f8e5m2fnuz``), the MX scale type
``f8e8m0`` (a power of two), ``f4e2m1``, and the sub-byte integers ``i4``/``u4``/``i2``/``u2``.
Their numpy dtypes come from ``ml_dtypes``, which holds **one element per byte**: that is what
constants and arrays in optc are. *Packed* storage — the ONNX ``raw_data`` layout and the text
form's ``base64``/``resources`` data — puts ``8 // bits`` elements in each byte, element 0 in the
lowest bits (``to_packed_bytes``/``from_packed_bytes``); ``DType.nbytes(n)`` is its size.
"""

from __future__ import annotations

import enum
import sys
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
    # low precision (numpy dtypes from ml_dtypes; see the module docstring)
    FLOAT8E4M3FN = "f8e4m3fn"
    FLOAT8E4M3FNUZ = "f8e4m3fnuz"
    FLOAT8E5M2 = "f8e5m2"
    FLOAT8E5M2FNUZ = "f8e5m2fnuz"
    FLOAT8E8M0 = "f8e8m0"
    FLOAT4E2M1 = "f4e2m1"
    INT4 = "i4"
    UINT4 = "u4"
    INT2 = "i2"
    UINT2 = "u2"

    @property
    def numpy(self) -> np.dtype:
        name = _TO_NUMPY[self]
        if name in _ML_DTYPES:
            import ml_dtypes

            return np.dtype(getattr(ml_dtypes, name))
        return np.dtype(name)

    @property
    def long_name(self) -> str:
        """The conventional spelling (``float32``, ``bfloat16``, ``float8_e4m3fn``, ``int4``,
        ...), as numpy/ml_dtypes (and TVM) write it."""
        return _TO_NUMPY[self]

    @property
    def is_float(self) -> bool:
        """A floating-point type (the fp8/fp4/e8m0 low-precision ones included)."""
        return self.value.startswith(("f", "bf"))

    @property
    def is_int(self) -> bool:
        return not self.is_float and self is not DType.BOOL

    @property
    def is_signed(self) -> bool:
        """Has negative values (``f8e8m0``, a bare power of two, has no sign bit)."""
        if self is DType.FLOAT8E8M0:
            return False
        return self.is_float or self.value.startswith("i")

    @property
    def is_low_precision(self) -> bool:
        """One of the quantization types: fp8, fp4, e8m0, or a sub-byte integer."""
        return self in _LOW_PRECISION

    @property
    def bits(self) -> int:
        """Bits per element in packed storage (4 for ``i4``, 8 for ``bool``)."""
        return _SUB_BYTE_BITS.get(self) or 8 * self.itemsize

    @property
    def is_packed(self) -> bool:
        """Whether packed storage holds several elements per byte (``bits < 8``)."""
        return self in _SUB_BYTE_BITS

    @property
    def itemsize(self) -> int:
        """Bytes per element in a numpy (ml_dtypes) array: 1 for the sub-byte types too."""
        return self.numpy.itemsize

    def nbytes(self, numel: int) -> int:
        """Bytes that ``numel`` elements take in packed storage (rounded up to a whole byte)."""
        return (int(numel) * self.bits + 7) // 8

    @staticmethod
    def from_numpy(dtype: np.dtype | type) -> "DType":
        dtype = np.dtype(dtype)
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
    DType.BFLOAT16: "bfloat16",
    DType.FLOAT8E4M3FN: "float8_e4m3fn",
    DType.FLOAT8E4M3FNUZ: "float8_e4m3fnuz",
    DType.FLOAT8E5M2: "float8_e5m2",
    DType.FLOAT8E5M2FNUZ: "float8_e5m2fnuz",
    DType.FLOAT8E8M0: "float8_e8m0fnu",
    DType.FLOAT4E2M1: "float4_e2m1fn",
    DType.INT4: "int4",
    DType.UINT4: "uint4",
    DType.INT2: "int2",
    DType.UINT2: "uint2",
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}
_ML_DTYPES = frozenset(_TO_NUMPY[d] for d in DType if d.value.startswith(("bf", "f8", "f4", "i4", "u4", "i2", "u2")))
_SUB_BYTE_BITS = {DType.FLOAT4E2M1: 4, DType.INT4: 4, DType.UINT4: 4, DType.INT2: 2, DType.UINT2: 2}
_LOW_PRECISION = frozenset({DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ,
                            DType.FLOAT8E8M0, *_SUB_BYTE_BITS})


def element_codes(array: np.ndarray, dtype: DType) -> np.ndarray:
    """The raw bit pattern of each element of a sub-byte typed array, as uint8 in
    ``[0, 2**bits)`` (ml_dtypes keeps a sub-byte element in the low bits of its byte)."""
    if not dtype.is_packed:
        raise ValueError(f"{dtype.value} is not a sub-byte type")
    if dtype.is_float:
        return np.asarray(array).view(np.uint8) & np.uint8((1 << dtype.bits) - 1)
    return np.asarray(array).astype(np.int8).view(np.uint8) & np.uint8((1 << dtype.bits) - 1)


def from_element_codes(codes: np.ndarray, dtype: DType) -> np.ndarray:
    """Inverse of ``element_codes``: uint8 bit patterns as an array of the sub-byte ``dtype``."""
    bits = dtype.bits
    codes = np.asarray(codes, dtype=np.uint8) & np.uint8((1 << bits) - 1)
    if dtype.is_float:
        return codes.view(dtype.numpy)
    if dtype.is_signed:  # sign-extend from `bits`
        return ((codes.astype(np.int8) ^ np.int8(1 << (bits - 1))) - np.int8(1 << (bits - 1))).astype(dtype.numpy)
    return codes.astype(dtype.numpy)


def to_packed_bytes(array: np.ndarray, dtype: DType | None = None) -> bytes:
    """The elements of ``array`` (flattened, row-major) in packed storage: byte-sized types as
    their little-endian bytes, sub-byte types ``8 // bits`` to a byte, element 0 lowest."""
    array = np.ascontiguousarray(array)
    dtype = dtype or DType.from_numpy(array.dtype)
    if not dtype.is_packed:
        if sys.byteorder == "little" or array.dtype.itemsize == 1:
            return array.tobytes()
        return array.view(f"u{array.dtype.itemsize}").astype(f"<u{array.dtype.itemsize}").tobytes()
    bits = dtype.bits
    per = 8 // bits
    codes = element_codes(array.reshape(-1), dtype)
    codes = np.concatenate([codes, np.zeros((-codes.size) % per, np.uint8)]).reshape(-1, per)
    packed = np.zeros(codes.shape[0], np.uint8)
    for k in range(per):
        packed |= codes[:, k] << np.uint8(k * bits)
    return packed.tobytes()


def from_packed_bytes(data: bytes, dtype: DType, shape: Iterable[int]) -> np.ndarray:
    """Inverse of ``to_packed_bytes``: a fresh array of ``dtype`` and ``shape``. Raises
    ValueError when ``data`` does not have exactly ``dtype.nbytes(numel)`` bytes."""
    shape = tuple(int(d) for d in shape)
    numel = int(np.prod(shape, dtype=np.int64))
    if len(data) != dtype.nbytes(numel):
        raise ValueError(f"{dtype.value}{list(shape)} needs {dtype.nbytes(numel)} bytes, got {len(data)}")
    if not dtype.is_packed:
        npdt = dtype.numpy
        if sys.byteorder == "little" or npdt.itemsize == 1:
            arr = np.frombuffer(data, dtype=npdt)
        else:
            arr = np.frombuffer(data, dtype=f"<u{npdt.itemsize}").astype(f"u{npdt.itemsize}").view(npdt)
        return arr.reshape(shape).copy()
    bits = dtype.bits
    per = 8 // bits
    raw = np.frombuffer(data, dtype=np.uint8)
    codes = np.stack([(raw >> np.uint8(k * bits)) for k in range(per)], axis=1).reshape(-1)[:numel]
    return from_element_codes(codes, dtype).reshape(shape)


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
