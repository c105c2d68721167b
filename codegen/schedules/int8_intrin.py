"""Tensor intrinsics for the int8 dense microkernels of ``int8.py`` (x86 and arm64).

Each x86 one computes ``C[i] += sum_k<4 u8(A[k]) * s8(B[i, k])`` for ``i < lanes``: ``A`` is four
activation codes of one row, broadcast to every lane as one 32-bit word; ``B`` is ``lanes`` packed
weight columns of four k each (``lanes * 4`` contiguous bytes); ``C`` the int32 accumulators.

Modeled on TVM's ``s_tir/tensor_intrin/x86.py``, whose VNNI intrinsic no longer compiles with the
wheel's LLVM 22: its ``vpdpbusd`` intrinsics now take the bytes as ``<N x i8>`` vectors, not as
``<N/4 x i32>``. Here the operands are passed as byte vectors. TVM's ``dot_16x4_avx512``
(``vpmaddubsw`` + ``vpmaddwd``) is the 512-bit form of the pmadd kernel; the 256-bit AVX2 form
(``llvm.x86.avx2.pmadd.ub.sw`` / ``pmadd.wd``) and the 256-bit ``vpdpbusd`` (AVX-VNNI, or
AVX512-VNNI with VL: the same LLVM intrinsic, VEX- or EVEX-encoded by the target) are new.

The arm64 ones (below) use LLVM's AArch64 intrinsics (``llvm.aarch64.neon.usmmla`` / ``sdot`` /
``smull`` + ``saddlp``) and cover 16 k of a row per call (``sdot``, ``usmmla``) or one pair of k
(``smull``); TVM's ``arm_cpu.py`` has ``sdot``/``udot`` per 4 k only and no i8mm intrinsic.

Registered once, on import, with ``override=True`` (a re-import must not fail).
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .int8 import NEON_SDOT, NEON_SMULL, NEON_USMMLA, PMADD_256, PMADD_512, VNNI_256, VNNI_512, Int8Microkernel

_LLVM = {
    # kernel name -> (pair-sum intrinsic or None, int32 intrinsic)
    PMADD_256.name: ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"),
    PMADD_512.name: ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512"),
    VNNI_256.name: (None, "llvm.x86.avx512.vpdpbusd.256"),
    VNNI_512.name: (None, "llvm.x86.avx512.vpdpbusd.512"),
}


def _desc(lanes: int, g: int = 4, offset: int = 0):
    """``C[i] += sum_k<g (int32(A[k]) - offset) * B[i, k]``: what ``qdense_te``'s product block
    computes per ``lanes`` columns and ``g`` k (``offset`` is the kernel's ``act_offset``)."""
    if offset:
        @T.prim_func(s_tir=True)
        def desc(A: T.Buffer((g,), "uint8", offset_factor=1),
                 B: T.Buffer((lanes, g), "int8", offset_factor=1),
                 C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:g], B[0:lanes, 0:g])
                T.writes(C[0:lanes])
                for i in T.serial(0, lanes):
                    for k in T.serial(0, g):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            C[vi] = C[vi] + (T.cast(A[vk], "int32") - T.int32(offset)) * T.cast(B[vi, vk], "int32")

        return desc

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((g,), "uint8", offset_factor=1),
             B: T.Buffer((lanes, g), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:g], B[0:lanes, 0:g])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, g):
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


# ----------------------------------------------------------------------------- arm64 (NEON)
# The codes of a row are loaded 16 at a time (one 128-bit register, one load, one xor where the
# instruction is signed), and each k-step takes its operand from a lane of that register
# (``T.Shuffle``), which LLVM selects as the by-element form (``sdot v.4s, v.16b, v.4b[i]``) or
# a ``zip`` (``usmmla``'s row pairs): no per-step row loads. ``B`` is ``steps`` packed weight
# vectors, one k-group apart (stride ``nb * g``: the desc's free stride); ``C`` the accumulators.
def _sdot_desc(steps: int, offset: int):
    """``C[i] += sum_{s<steps, k<4} (int32(A[4s + k]) - offset) * B[s, i, k]``."""
    n = 4 * steps

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (n,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (steps, 4, 4), "int8", offset_factor=1, strides=[T.int32(), 4, 1])
        C = T.match_buffer(c, (4,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:n], B[0:steps, 0:4, 0:4])
            T.writes(C[0:4])
            for st in T.serial(0, steps):
                for i in T.serial(0, 4):
                    for k in T.serial(0, 4):
                        with T.sblock("update"):
                            vi, vs, vk = T.axis.remap("SRR", [i, st, k])
                            C[vi] = C[vi] + (T.cast(A[vs * 4 + vk], "int32") - T.int32(offset)) * T.cast(
                                B[vs, vi, vk], "int32")

    return desc


def _sdot_impl(steps: int):
    """``sdot`` .4s, ``steps`` times into the same accumulators (nested: an impl must be one
    expression), each with the codes xor 0x80 (``xq - 128`` as int8) of its k-group taken by
    element -- the lane operand second, as LLVM's by-element pattern wants it."""

    def step(acc, B, A, st):
        codes = T.reinterpret(T.bitwise_xor(A.vload([0], "uint8x16"), T.broadcast(T.uint8(128), 16)), dtype="int32x4")
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), acc,
                                       B.vload([st, 0, 0], dtype="int8x16"),
                                       T.reinterpret(T.Shuffle([codes], [st] * 4), dtype="int8x16"), dtype="int32x4")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (steps, 4, 4), "int8", offset_factor=1, strides=[T.int32(), 4, 1])
        C = T.match_buffer(c, (4,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:4], A[0:16], B[0:steps, 0:4, 0:4])
            T.writes(C[0:4])
            C[T.ramp(T.int32(0), 1, 4)] = step(step(step(step(C.vload([0], dtype="int32x4"), B, A, 0), B, A, 1),
                                                         B, A, 2), B, A, 3)

    assert steps == 4
    return impl


def _smull_impl():
    """Plain NEON, one step of 2 k: ``smull`` of (xq - 128) by the weights -- one exact int16
    product per lane (4 columns x 2 k) -- then ``sadalp``: adjacent pairs (the 2 k of a column)
    added into the int32 accumulator (LLVM folds ``acc + saddlp(x)`` into ``sadalp``). The row's
    two codes are one 16-bit word repeated over the 8 bytes, xor 0x80 each (``ldr h``, ``eor``,
    ``dup .4h``). A 16-code row register with by-element ``dup``s was tried: LLVM then keeps a
    ``dup`` per row and k-step live across the column vectors and spills."""

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "uint8", offset_factor=1),
             B: T.Buffer((4, 2), "int8", offset_factor=1),
             C: T.Buffer((4,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:4], A[0:2], B[0:4, 0:2])
            T.writes(C[0:4])
            C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], dtype="int32x4") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"),
                T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                    T.bitwise_xor(T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x2"), dtype="int16"), 4),
                                                dtype="uint8x8"), T.broadcast(T.uint8(128), 8)),
                    B.vload([0, 0], dtype="int8x8"), dtype="int16x8"),
                dtype="int32x4")

    return impl


def _mmla_desc(steps: int):
    """``C[r, c] += sum_{s<steps, k<8} A[r, 8s + k] * B[s, c, k]``: two rows of 16 codes (row
    stride free) times two packed weight columns per step, into a 2 x 2 int32 block."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2, 8 * steps), "uint8", offset_factor=1, strides=[T.int32(), 1])
        B = T.match_buffer(b, (steps, 2, 8), "int8", offset_factor=1, strides=[T.int32(), 8, 1])
        C = T.match_buffer(c, (2, 2), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8 * steps], B[0:steps, 0:2, 0:8])
            T.writes(C[0:2, 0:2])
            for st in T.serial(0, steps):
                for r in T.serial(0, 2):
                    for cc in T.serial(0, 2):
                        for k in T.serial(0, 8):
                            with T.sblock("update"):
                                vr, vc, vs, vk = T.axis.remap("SSRR", [r, cc, st, k])
                                C[vr, vc] = C[vr, vc] + T.cast(A[vr, vs * 8 + vk], "int32") * T.cast(
                                    B[vs, vc, vk], "int32")

    return desc


def _mmla_impl(steps: int):
    """``usmmla`` .4s, twice (16 k): the operand of step ``s`` is the ``s``-th 8 codes of both
    rows (``zip1``/``zip2`` .2d of the two rows' 16-code loads), the weights two packed columns
    of 8 k; the result is the 2 x 2 block ``[r0c0, r0c1, r1c0, r1c1]`` as ``C`` holds it."""

    def pair(A, st):
        rows = [T.reinterpret(A.vload([r, 0], "uint8x16"), dtype="int64x2") for r in (0, 1)]
        return T.reinterpret(T.Shuffle(rows, [st, 2 + st]), dtype="uint8x16")

    def step(acc, A, B, st):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.usmmla.v4i32.v16i8"), acc,
                                       pair(A, st), B.vload([st, 0, 0], dtype="int8x16"), dtype="int32x4")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2, 16), "uint8", offset_factor=1, strides=[T.int32(), 1])
        B = T.match_buffer(b, (2, 2, 8), "int8", offset_factor=1, strides=[T.int32(), 8, 1])
        C = T.match_buffer(c, (2, 2), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:16], B[0:2, 0:2, 0:8])
            T.writes(C[0:2, 0:2])
            C[0, T.ramp(T.int32(0), 1, 4)] = step(step(C.vload([0, 0], dtype="int32x4"), A, B, 0), A, B, 1)

    assert steps == 2
    return impl


TensorIntrin.register(NEON_USMMLA.name, _mmla_desc(NEON_USMMLA.k_steps), _mmla_impl(NEON_USMMLA.k_steps),
                      override=True)
TensorIntrin.register(NEON_SDOT.name, _sdot_desc(NEON_SDOT.k_steps, NEON_SDOT.act_offset),
                      _sdot_impl(NEON_SDOT.k_steps), override=True)
TensorIntrin.register(NEON_SMULL.name, _desc(4, 2, NEON_SMULL.act_offset), _smull_impl(), override=True)
