"""Tensor intrinsics for the int8 dense microkernels of ``int8.py`` (x86).

Each one computes ``C[i] += sum_k<4 u8(A[k]) * s8(B[i, k])`` for ``i < lanes``: ``A`` is four
activation codes of one row, broadcast to every lane as one 32-bit word; ``B`` is ``lanes`` packed
weight columns of four k each (``lanes * 4`` contiguous bytes); ``C`` the int32 accumulators.

Modeled on TVM's ``s_tir/tensor_intrin/x86.py``, whose VNNI intrinsic no longer compiles with the
wheel's LLVM 22: its ``vpdpbusd`` intrinsics now take the bytes as ``<N x i8>`` vectors, not as
``<N/4 x i32>``. Here the operands are passed as byte vectors. TVM's ``dot_16x4_avx512``
(``vpmaddubsw`` + ``vpmaddwd``) is the 512-bit form of the pmadd kernel; the 256-bit AVX2 form
(``llvm.x86.avx2.pmadd.ub.sw`` / ``pmadd.wd``) and the 256-bit ``vpdpbusd`` (AVX-VNNI, or
AVX512-VNNI with VL: the same LLVM intrinsic, VEX- or EVEX-encoded by the target) are new.

Registered once, on import, with ``override=True`` (a re-import must not fail).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .int8 import PMADD_256, PMADD_512, VNNI_256, VNNI_512, Int8Microkernel

_LLVM = {
    # kernel name -> (pair-sum intrinsic or None, int32 intrinsic)
    PMADD_256.name: ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"),
    PMADD_512.name: ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"),
    VNNI_256.name: (None, "llvm.x86.avx512.vpdpbusd.256"),
    VNNI_512.name: (None, "llvm.x86.avx512.vpdpbusd.512"),
}


def _desc(lanes: int):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "uint8", offset_factor=1),
             B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _broadcast_row(A, lanes: int):
    """The four codes at ``A`` as one 32-bit word in every lane, viewed as ``lanes * 4`` bytes."""
    return T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes),
                         dtype=f"uint8x{lanes * 4}")


# The impls are single expressions: a name bound in TVMScript becomes a local buffer, and LLVM
# kept one dead store per k-step to it in the hot loop.
def _pmadd_impl(lanes: int, pair_sum: str, widen: str):
    """``vpmaddubsw`` (u8 x s8 pairs -> saturating int16; exact for codes <= 127), then
    ``vpmaddwd`` by int16 ones (adjacent int16 pairs -> int32), then an int32 add."""

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1),
             B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(widen),
                T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(pair_sum), _broadcast_row(A, lanes),
                                        B.vload([0, 0], dtype=f"int8x{lanes * 4}"), dtype=f"int16x{lanes * 2}"),
                T.broadcast(T.int16(1), lanes * 2), dtype=f"int32x{lanes}")

    return impl


def _vnni_impl(lanes: int, dot: str):
    """``vpdpbusd``: four u8 x s8 products summed into each int32 lane, no saturation."""

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1),
             B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(dot), C.vload([0], dtype=f"int32x{lanes}"), _broadcast_row(A, lanes),
                B.vload([0, 0], dtype=f"int8x{lanes * 4}"), dtype=f"int32x{lanes}")

    return impl


def _register(kernel: Int8Microkernel) -> None:
    pair_sum, main = _LLVM[kernel.name]
    impl = _vnni_impl(kernel.lanes, main) if pair_sum is None else _pmadd_impl(kernel.lanes, pair_sum, main)
    TensorIntrin.register(kernel.name, _desc(kernel.lanes), impl, override=True)


for _kernel in (PMADD_256, PMADD_512, VNNI_256, VNNI_512):
    _register(_kernel)
