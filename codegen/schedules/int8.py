"""Which int8 dot-product microkernel a CPU target gets, from its features (TVM-free).

The quantized dense kernel (``qdense.py``) multiplies uint8 activation codes by int8 weights,
several k-steps per instruction into int32 lanes. What the CPU offers decides the activation range:

==================  ===============================================  =====  ===  =====  =====
features            instructions per call                            lanes  g    qmax   extra
==================  ===============================================  =====  ===  =====  =====
avx512_vnni         ``vpdpbusd`` zmm (4 k x 16 columns)              16     4    255    0
avx_vnni            ``vpdpbusd`` ymm (VEX)                           8      4    255    0
avx512bw            ``vpmaddubsw`` + ``vpmaddwd`` (ones) zmm         16     4    127    2
avx2                ``vpmaddubsw`` + ``vpmaddwd`` (ones) ymm         8      4    127    2
asimd + i8mm        2 x ``usmmla`` .4s (2 rows x 2 columns x 16 k)   4      8    255    0
asimd + asimddp     4 x ``sdot`` .4s by element on ``xq - 128``      4      4    255    0
asimd (NEON)        ``smull`` + ``sadalp`` on ``xq - 128`` (2 k)     4      2    255    2
anything else       none: the caller keeps the float path            -      -    255    -
==================  ===============================================  =====  ===  =====  =====

(``g`` is the packed weight's k-group, ``extra`` the vector registers one step needs beside the
accumulator tile.)

``vpdpbusd`` sums four u8 x s8 products into int32 with no intermediate rounding, so codes may
use all of 0..255. ``vpmaddubsw`` first adds *pairs* of products into a saturating int16: with
codes <= 127 and weights in [-128, 127] a pair is at most 2 * 127 * 128 = 32512 < 32767, so
it is exact; with 255 it would saturate (ONNX Runtime's U8S8 behaviour on such CPUs). Hence
``qmax`` 127 there ("reduce range"). Its extra registers are the int16 pair sums and the vector
of int16 ones ``vpmaddwd`` multiplies by.

On arm64 (128-bit registers, 4 int32 lanes) every kernel is exact for codes 0..255:

* ``usmmla`` (FEAT_I8MM) multiplies a 2 x 8 block of uint8 codes (two rows) by an 8 x 2 block of
  int8 weights (two columns) into a 2 x 2 int32 block: 32 multiply-adds an instruction against
  ``usdot``'s 16, and u8 x s8, so the codes go in as they are. The accumulator tile is a grid of
  2 x 2 blocks (``rows`` 2; the epilogue zips two blocks into a row vector), the weights are
  packed in k-groups of 8 (a column pair's 8 k are 16 contiguous bytes) and the codes' rows
  padded to the tile first (``qdense.rowpad_te``: a clamped row index cannot be half of one
  operand).
* ``sdot`` (FEAT_DotProd) is s8 x s8: the codes enter as ``xq - 128`` (``xor 0x80`` seen as int8,
  -128..127; every product fits, ``|p| <= 128 * 128``) and the kernel adds ``128 * colsum`` back
  in its zero-point correction (``act_offset``): ``acc = sum (xq - 128) * W + (128 - x_zp) *
  colsum``, the same integer as ``sum xq * W - x_zp * colsum``.
* plain NEON has no byte dot product: ``smull`` multiplies ``xq - 128`` by the weights into int16
  lanes -- one product per lane, ``|p| <= 128 * 128 = 16384``, exact -- and ``sadalp`` adds
  adjacent lanes (the 2 k of one column, packed side by side) into the int32 accumulator. Two
  products are never added in int16: ``(-128)(-128) * 2 = 32768`` would overflow (and without the
  shift ``255 * -128 * 2``).

``k_steps``: the NEON calls cover 16 k of a row (one 128-bit load of its codes; ``sdot`` takes
each step's four by element, ``usmmla`` each step's eight of two rows by a ``zip``), so K is
padded to 16 there (``Int8Microkernel.k_pad``).

The choice reads ``Target.features`` (``/proc/cpuinfo`` spelling), never the target's name, so
a TVM target JSON with ``-mcpu=cascadelake`` gets VNNI like any preset would, one with
``-mcpu=neoverse-v1`` ``usmmla`` and one with ``-mcpu=cortex-a76`` ``sdot``; an aarch64 target
without NEON (``-mattr=-neon``) gets none.

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
    act_offset    the codes enter the instruction as ``xq - act_offset`` (``sdot`` and the NEON
                  kernel multiply signed bytes: 128); the kernel's zero-point correction adds
                  ``act_offset * colsum`` back
    k_steps       k-groups one tensorized call covers (NEON: 16 k, one 128-bit load of the row's
                  codes, each step taking its row operand by element)
    rows          activation rows one instruction multiplies: 2 for ``usmmla`` (a 2 x 8 by 8 x 2
                  product; each accumulator register holds a 2 x 2 block of the output)
    """

    name: str
    lanes: int
    vector_bits: int
    k_group: int
    qmax: int
    temporaries: int
    mnemonics: tuple[str, ...]
    act_offset: int = 0
    k_steps: int = 1
    rows: int = 1

    @property
    def k_pad(self) -> int:
        """K is padded to a multiple of this: the k the tensorized call covers."""
        return self.k_group * self.k_steps


VNNI_512 = Int8Microkernel("optc_dot_u8s8_vnni512", 16, 512, 4, 255, 0, ("vpdpbusd",))
VNNI_256 = Int8Microkernel("optc_dot_u8s8_vnni256", 8, 256, 4, 255, 0, ("vpdpbusd",))
PMADD_512 = Int8Microkernel("optc_dot_u8s8_pmadd512", 16, 512, 4, 127, 2, ("vpmaddubsw", "vpmaddwd"))
PMADD_256 = Int8Microkernel("optc_dot_u8s8_pmadd256", 8, 256, 4, 127, 2, ("vpmaddubsw", "vpmaddwd"))
NEON_USMMLA = Int8Microkernel("optc_mmla_u8s8_neon_usmmla", 4, 128, 8, 255, 0, ("usmmla",), k_steps=2, rows=2)
NEON_SDOT = Int8Microkernel("optc_dot_s8s8_neon_sdot", 4, 128, 4, 255, 0, ("sdot",), act_offset=128, k_steps=4)
NEON_SMULL = Int8Microkernel("optc_dot_s8s8_neon_smull", 4, 128, 2, 255, 2, ("smull", "sadalp"), act_offset=128)

# (features the kernel needs, minimum Target.vector_bits, kernel): the first match wins
_KERNELS: tuple[tuple[frozenset[str], int, Int8Microkernel], ...] = (
    (frozenset({"avx512_vnni", "avx512bw"}), 512, VNNI_512),
    (frozenset({"avx_vnni"}), 256, VNNI_256),
    (frozenset({"avx512_vnni", "avx512vl"}), 256, VNNI_256),
    (frozenset({"avx512bw"}), 512, PMADD_512),
    (frozenset({"avx2"}), 256, PMADD_256),
    (frozenset({"asimd", "i8mm"}), 128, NEON_USMMLA),
    (frozenset({"asimd", "asimddp"}), 128, NEON_SDOT),
    (frozenset({"asimd"}), 128, NEON_SMULL),
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
    127 where pair sums go through int16 (AVX2/AVX-512BW ``vpmaddubsw``), else 255 (every arm64
    kernel)."""
    kernel = int8_microkernel(target)
    return kernel.qmax if kernel is not None else DEFAULT_QMAX
