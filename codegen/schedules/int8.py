"""Which int8 dot-product microkernel a CPU target gets, from its features (TVM-free).

The quantized dense kernel (``qdense.py``) multiplies uint8 activation codes by int8 weights,
four k-steps per instruction into int32 lanes. What the CPU offers decides the activation range:

==================  ==========================================  ======  =====  =========
features            instructions per 4 k x ``lanes`` columns    lanes   qmax   extra regs
==================  ==========================================  ======  =====  =========
avx512_vnni         ``vpdpbusd`` zmm                            16      255    0
avx_vnni            ``vpdpbusd`` ymm (VEX)                      8       255    0
avx512bw            ``vpmaddubsw`` + ``vpmaddwd`` (ones) zmm    16      127    2
avx2                ``vpmaddubsw`` + ``vpmaddwd`` (ones) ymm    8       127    2
anything else       none: the caller keeps the float path       -       255    -
==================  ==========================================  ======  =====  =========

``vpdpbusd`` sums four u8 x s8 products into int32 with no intermediate rounding, so codes may
use all of 0..255. ``vpmaddubsw`` first adds *pairs* of products into a saturating int16: with
codes <= 127 and weights in [-128, 127] a pair is at most 2 * 127 * 128 = 32512 < 32767, so
it is exact; with 255 it would saturate (ONNX Runtime's U8S8 behaviour on such CPUs). Hence
``qmax`` 127 there ("reduce range"). "extra regs" are the vector registers one step needs beside
the accumulator tile (the int16 pair sums and the vector of int16 ones ``vpmaddwd`` multiplies
by), which the register tile leaves free.

The choice reads ``Target.features`` (``/proc/cpuinfo`` spelling), never the target's name, so
a TVM target JSON with ``-mcpu=cascadelake`` gets VNNI like any preset would. An arm64 kernel
(``sdot`` on ``asimddp``: 4 k x 4 columns, the same packing; ``smmla`` on ``i8mm``: k-groups
of 8) would be one more row of ``_KERNELS`` keyed on those features.

This module imports no TVM: passes (which must not import it) may ask ``activation_qmax``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Int8Microkernel:
    """One int8 dot-product step: ``lanes`` int32 accumulators += ``k_group`` u8 x s8 products.

    name          the ``TensorIntrin`` name (registered by ``int8_intrin.py``)
    lanes         int32 lanes of one vector register (the accumulator and column width)
    vector_bits   register width in bits
    k_group       consecutive k one instruction sums per lane (the packed weight's inner dim)
    qmax          largest activation code the instruction multiplies exactly
    temporaries   vector registers a step needs beside accumulators and weight columns
    mnemonics     the instructions the inner loop must contain (checked in tests)
    """

    name: str
    lanes: int
    vector_bits: int
    k_group: int
    qmax: int
    temporaries: int
    mnemonics: tuple[str, ...]


VNNI_512 = Int8Microkernel("optc_dot_u8s8_vnni512", 16, 512, 4, 255, 0, ("vpdpbusd",))
VNNI_256 = Int8Microkernel("optc_dot_u8s8_vnni256", 8, 256, 4, 255, 0, ("vpdpbusd",))
PMADD_512 = Int8Microkernel("optc_dot_u8s8_pmadd512", 16, 512, 4, 127, 2, ("vpmaddubsw", "vpmaddwd"))
PMADD_256 = Int8Microkernel("optc_dot_u8s8_pmadd256", 8, 256, 4, 127, 2, ("vpmaddubsw", "vpmaddwd"))

# (features the kernel needs, minimum Target.vector_bits, kernel): the first match wins
_KERNELS: tuple[tuple[frozenset[str], int, Int8Microkernel], ...] = (
    (frozenset({"avx512_vnni", "avx512bw"}), 512, VNNI_512),
    (frozenset({"avx_vnni"}), 256, VNNI_256),
    (frozenset({"avx512_vnni", "avx512vl"}), 256, VNNI_256),
    (frozenset({"avx512bw"}), 512, PMADD_512),
    (frozenset({"avx2"}), 256, PMADD_256),
)

# where no int8 microkernel exists the quantize pass may still choose codes (the float fallback
# dequantizes them): the full uint8 range loses nothing
DEFAULT_QMAX = 255


def int8_microkernel(target) -> Int8Microkernel | None:
    """The microkernel optc's int8 dense uses on ``target`` (an optc ``Target``), or None when
    the target has none (then no int8 schedule rule is registered and the caller falls back)."""
    if getattr(target, "kind", None) != "cpu":
        return None
    features = set(getattr(target, "features", ()) or ())
    bits = int(getattr(target, "vector_bits", 0) or 0)
    for needs, min_bits, kernel in _KERNELS:
        if needs <= features and bits >= min_bits:
            return kernel
    return None


def activation_qmax(target) -> int:
    """The largest uint8 activation code the int8 dense on ``target`` multiplies exactly:
    127 where pair sums go through int16 (AVX2/AVX-512BW ``vpmaddubsw``), else 255."""
    kernel = int8_microkernel(target)
    return kernel.qmax if kernel is not None else DEFAULT_QMAX
