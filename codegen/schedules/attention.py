"""Fused scaled-dot-product attention on CPU: one kernel, flash-attention style.

``softmax(Q Kᵀ · scale + mask) V`` on ``[batch, heads, seq, head_dim]`` without materializing the
``[seq_q, seq_k]`` scores. Two PrimFuncs, written directly in TVMScript and already scheduled
(``tirx.is_scheduled``; FuseOps leaves them alone as ``kOpaque``):

``optc_attention_pack_k``
    K ``[B, Hk, Sk, D]`` -> Kᵀ ``[B, Hk, D, Skp]`` with ``Skp`` = Sk rounded up to the key tile and
    zero columns past Sk, so the score loop reads whole vectors of keys with no predicate and no
    out-of-bounds read, for any (symbolic) Sk.

``optc_attention``
    parallel over (batch, head, query tile of ``QT`` rows); per block of ``RI`` query rows the
    running max ``m``, lane-partial running sums ``l`` and the ``[RI, Dv]`` accumulator live in
    small local buffers while the key tiles of ``KT`` keys stream by (online softmax):

    1. scores ``s[RI, KT]`` = Q rows x Kᵀ tile (register tile ``RI x KT``, vectorized over keys),
    2. scale, mask (bool keeps / float adds, broadcast over batch, head and query), causal and the
       Sk tail (-inf) in one vector pass,
    3. new row max; the rescale factors ``exp(m_old - m_new)`` of all ``RI`` rows as one vector
       (no scalar exp chain per row); ``p = exp(s - m)`` (a vectorizable polynomial that gives
       exactly 0 for -inf); rescale ``l`` and the accumulator,
    4. accumulator += ``p`` x V tile (vectorized over Dv; V rows read by a scalar index, so the
       tail tile simply runs fewer keys), in passes over ``dv_chunk`` vectors of Dv when the
       ``RI x Dv`` accumulators would not fit the registers.

    The tiles come from the target's register file (``AttentionTiles.choose``). Whole key tiles
    (``KT`` = 4 vectors: 64 keys on AVX-512, 16 on NEON; 4 query rows per register block on
    AVX-512 and NEON, 2 on AVX2), at most one whole half tile, and a last partial half tile are
    separate copies of the tile body, so short and tail sequences waste at most half a tile;
    only the partial copy reads the mask through a clamped (gathering) index. With ``is_causal``
    a row block stops at its last visible key. A query row whose keys are all masked gives zeros
    (the interpreter's semantics); query rows past Sq are computed from a clamped row and not
    written.

Layout: where Q/K/V are transposes of the projections' ``[b, s, h, d]`` tensors, the kernel reads
those in place -- from the fused projection's ``[b, s, columns]`` output at the part's column
offset when they are the parts of one split (``AttentionSpec.packed``) -- and where the output's
only use transposes it back, it writes ``[b, s, h, d]``; ``FoldTransposePairs`` (a Relax pass in
``relax_passes``) cancels the transposes left behind, and its dead-code elimination the split.

Grouped-query attention reads kv head ``h // (Hq / Hk)``. Only f32 math; half precision is cast
around it. ``plan`` decides per IR node (the lowering and the build's ``notes`` share it): other
variants (float64, non-CPU targets, masks that do not broadcast statically) keep the
matmul/softmax/matmul decomposition in ``codegen/lowering/nn.py`` and are listed in
``CompiledModule.notes``.

The PrimFuncs are TVMScript, parsed (once per variant) when first lowered: TVM reads this file's
source at that moment, so editing it under a running process breaks that process's builds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import tvm
from tvm import relax, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.script import tirx as T
from tvm.sym.analyzer import Analyzer

from .common import K_OPAQUE, CPUTiles

KERNEL = "optc_attention"
PACK_K = "optc_attention_pack_k"

_F32 = "float32"
_EXP_LO = -88.3762626647949


@dataclass(frozen=True)
class AttentionSpec:
    """One attention variant: static head counts and head dims, mask kind and broadcast."""

    heads_q: int
    heads_kv: int
    head_dim: int             # of Q and K
    head_dim_v: int           # of V and the output
    scale: float
    causal: bool
    mask: str | None = None   # None, "bool" or "float32"
    mask_bcast: tuple[bool, bool, bool, bool] = (False, False, False, False)  # dim is 1 (4-D mask)
    # Q, K, V, Y stored [batch, seq, heads, dim] (the projections' layout) instead of [b, h, s, d]
    seq_major: tuple[bool, bool, bool, bool] = (False, False, False, False)
    # Q, K, V read from a [batch, seq, columns] tensor (one fused QKV projection split three ways)
    # from a column offset on: (columns, offset) each, columns 0 where the operand is its own tensor
    packed: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0), (0, 0))


SCORE_VECTORS = 4  # key vectors per score tile: KT = 4 vectors of keys (64 on AVX-512, 16 on NEON)


@dataclass(frozen=True)
class AttentionTiles:
    """lanes  f32 vector lanes; kt  keys per tile (a multiple of lanes); ri  query rows per
    register block; qt  query rows per parallel task (a multiple of ri); dv_lanes  vector width
    over the value head dim; dv_chunk  Dv vectors accumulated per pass over a key tile (p . V).

    From the register file (``CPUTiles.fits``): the score tile ``ri x kt/lanes`` and each p . V
    pass ``ri x dv_chunk`` keep their accumulators in registers.

    ============  =====  =========  ==  ==  ==============================
    target        lanes  registers  kt  ri  dv_chunk (head dim 32 / 64)
    ============  =====  =========  ==  ==  ==============================
    x86-avx2      8      16         32  2   4 (one pass) / 4 (two passes)
    x86-avx512    16     32         64  4   2 (one pass) / 4 (one pass)
    arm64 (NEON)  4      32         16  4   4 (two passes) / 4 (four)
    ============  =====  =========  ==  ==  ==============================
    """

    lanes: int
    kt: int
    ri: int
    qt: int
    dv_lanes: int
    dv_chunk: int = 0  # 0: all Dv vectors in one pass

    @staticmethod
    def choose(target, spec: AttentionSpec) -> "AttentionTiles":
        cpu = CPUTiles.for_target(target)
        L = cpu.lanes
        dvl = next((w for w in (L, L // 2, L // 4, 2) if w >= 2 and spec.head_dim_v % w == 0), 1)
        ri = next((r for r in (8, 4, 2) if cpu.fits(r, SCORE_VECTORS)), 1)
        ndv = spec.head_dim_v // dvl
        chunk = next((c for c in range(ndv, 0, -1) if ndv % c == 0 and cpu.fits(ri, c)), 1)
        return AttentionTiles(lanes=L, kt=SCORE_VECTORS * L, ri=ri, qt=32, dv_lanes=dvl, dv_chunk=chunk)


def key_pad(sk, kt: int):
    """Sk rounded up to whole key tiles (the packed Kᵀ length)."""
    return tirx.floordiv(sk + (kt - 1), kt) * kt


@dataclass(frozen=True)
class _Layout:
    """How one operand's logical [b, h, n, d] element is stored: [b, h, n, d], [b, n, h, d]
    (``seq_major``), or column ``offset + h * dim + d`` of a [b, n, columns] tensor (``packed``)."""

    seq_major: bool
    columns: int = 0
    offset: int = 0
    dim: int = 0

    def shape(self, b, h, n, d):
        if self.columns:
            return (b, n, self.columns)
        return (b, n, h, d) if self.seq_major else (b, h, n, d)

    def at(self, buf, b, h, n, d):
        if self.columns:
            return buf[b, n, self.offset + h * self.dim + d]
        return buf[b, n, h, d] if self.seq_major else buf[b, h, n, d]


def _layouts(spec: AttentionSpec) -> tuple[_Layout, _Layout, _Layout, _Layout]:
    """The layouts of Q, K, V and Y."""
    dims = (spec.head_dim, spec.head_dim, spec.head_dim_v)
    qkv = tuple(_Layout(sm, cols, off, dim) for sm, (cols, off), dim in zip(spec.seq_major, spec.packed, dims))
    return qkv + (_Layout(spec.seq_major[3]),)


def _add(a, b):
    return a + b


def _exp0(x):
    """exp(x) for x <= 0 (or -inf/NaN) as plain vectorizable arithmetic: TVM's fast_exp range
    reduction and polynomial (as rows.py), exactly 0 below f32's range so a masked key contributes
    nothing. Cheaper than ``rows.fast_exp_expr``: no clamps and no NaN select -- a NaN (or -inf)
    argument makes the polynomial NaN, and the final select maps -inf to 0."""
    c = lambda v: tirx.const(v, _F32)  # noqa: E731
    n = tirx.floor(x * c(1.44269504088896341) + c(0.5))
    f = x - n * c(0.693147180559945)
    p = c(0.000198756912)
    for k in (0.00139819994, 0.00833345205, 0.0416657962, 0.166666657, 0.5):
        p = p * f + c(k)
    p = p * f * f + f + c(1.0)
    two_n = tirx.reinterpret(_F32, tirx.shift_left(tirx.Cast("int32", n) + tirx.const(127, "int32"),
                                                    tirx.const(23, "int32")))
    return tirx.Select(x < c(_EXP_LO), c(0.0), two_n * p)


@functools.lru_cache(maxsize=64)
def pack_k_func(spec: AttentionSpec, tiles: AttentionTiles) -> tirx.PrimFunc:
    """K [B, Hk, Sk, D] -> Kᵀ [B, Hk, D, Skp], zero past Sk (see the module doc)."""
    HK, D = spec.heads_kv, spec.head_dim
    KL = _layouts(spec)[1]

    @T.prim_func(private=True, s_tir=True)
    def pack(k: T.handle, kt: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": K_OPAQUE})
        b = T.int64()
        sk = T.int64()
        skp = T.int64()
        K = T.match_buffer(k, KL.shape(b, HK, sk, D), _F32)
        Kt = T.match_buffer(kt, (b, HK, D, skp), _F32)
        with T.sblock("root"):  # Relax's pattern analysis expects a root block
            for bh in T.parallel(b * HK):
                for j, d in T.grid(skp, D):
                    Kt[bh // HK, bh % HK, d, j] = T.if_then_else(
                        j < sk, KL.at(K, bh // HK, bh % HK, T.min(j, sk - 1), d), T.float32(0))

    return pack


@functools.lru_cache(maxsize=64)
def attention_func(spec: AttentionSpec, tiles: AttentionTiles) -> tirx.PrimFunc:
    """The fused attention PrimFunc for ``spec`` (see the module doc).

    Parameters: Q [B, Hq, Sq, D], Kᵀ [B, Hk, D, Skp] (from ``pack_k_func``), V [B, Hk, Sk, Dv],
    the mask [mb, mh, mq, mk] when ``spec.mask``, and the output Y [B, Hq, Sq, Dv]."""
    HQ, HK, D, DV = spec.heads_q, spec.heads_kv, spec.head_dim, spec.head_dim_v
    G = HQ // HK
    L, KT, RI, QT, VL = tiles.lanes, tiles.kt, tiles.ri, tiles.qt, tiles.dv_lanes
    NV, NV2, NDV = KT // L, KT // L // 2, DV // VL  # vectors per key tile, per half tile
    CW = tiles.dv_chunk or NDV  # Dv vectors per p . V pass
    NC = NDV // CW
    KT2 = KT // 2
    scale = float(spec.scale)
    QL, _, VL_, YL = _layouts(spec)
    YSM = spec.seq_major[3]
    causal = bool(spec.causal)
    has_mask = spec.mask is not None
    bool_mask = spec.mask == "bool"
    mdt = spec.mask if has_mask else _F32
    mb_b, mh_b, mq_b, mk_b = spec.mask_bcast
    neg_inf = -math.inf
    exp0 = _exp0

    def midx(bi, h, r, kk, tail, sk):
        """Mask indices (broadcast dims read 0; the tail clamps the key index)."""
        zero = tirx.const(0, "int64")
        kidx = tirx.min(kk, sk - 1) if tail else kk
        return (zero if mb_b else bi, zero if mh_b else h, zero if mq_b else r, zero if mk_b else kidx)

    def score(sv, M, bi, h, r, kk, sq, sk, tail):
        """One scaled, masked score (plain PrimExpr arithmetic, vectorizes over the key lanes)."""
        val = sv * tirx.const(scale, _F32)
        if M is not None:
            rr = tirx.min(r, sq - 1)
            i = midx(bi, h, rr, kk, tail, sk)
            m = M[i[0], i[1], i[2], i[3]]
            val = tirx.Select(m, val, tirx.const(neg_inf, _F32)) if bool_mask else val + m
        if causal:
            val = tirx.Select(kk <= r, val, tirx.const(neg_inf, _F32))
        if tail:
            val = tirx.Select(kk < sk, val, tirx.const(neg_inf, _F32))
        return val

    @T.macro
    def tree(part, op):
        # part[0] = op over part[0:L], in halving vector steps (no scalar chain)
        if L >= 32:
            for l in T.vectorized(16):
                part[l] = op(part[l], part[l + 16])
        if L >= 16:
            for l in T.vectorized(8):
                part[l] = op(part[l], part[l + 8])
        if L >= 8:
            for l in T.vectorized(4):
                part[l] = op(part[l], part[l + 4])
        if L >= 4:
            for l in T.vectorized(2):
                part[l] = op(part[l], part[l + 2])
        if L >= 2:
            part[0] = op(part[0], part[1])

    @T.macro
    def tile(Q, Kt, V, M, s, mrow, mnew, mexp, alpha, lsum, acc, bi, h, hk, r0, sq, sk, kn, k0, nv, tail):
        # 1. scores s[RI, nv*L] = Q[r0:r0+RI] . Kt[:, k0:k0+nv*L]
        for ii, j in T.grid(RI, nv * L):
            s[ii, j] = T.float32(0)
        for dd in range(D):
            for ii in T.unroll(RI):
                for jv in T.unroll(nv):
                    for l in T.vectorized(L):
                        s[ii, jv * L + l] = s[ii, jv * L + l] + QL.at(Q, bi, h, T.min(r0 + ii, sq - 1), dd) * Kt[
                            bi, hk, dd, k0 + jv * L + l]
        # 2. scale, mask, causal, tail -> new row max (lane partials, then a halving tree)
        for ii in range(RI):
            part = T.decl_buffer((L,), _F32, scope="local")
            for l in T.vectorized(L):
                part[l] = T.float32(neg_inf)
            for jv in T.unroll(nv):
                for l in T.vectorized(L):
                    s[ii, jv * L + l] = score(s[ii, jv * L + l], M, bi, h, r0 + ii, k0 + jv * L + l, sq, sk, tail)
                    part[l] = T.max(part[l], s[ii, jv * L + l])
            tree(part, tirx.max)
            mnew[ii] = T.max(mrow[ii], part[0])
        # 3. online softmax. The row factors for all RI rows as one vector (no scalar exp chain
        #    per row): the max used for exp (0 while a row has seen only masked keys) and the
        #    rescale alpha = exp(m_old - m); then per row p = exp(s - m), the running sum and the
        #    accumulator rescaled by alpha
        for ii in T.vectorized(RI):
            mexp[ii] = T.Select(mnew[ii] == T.float32(neg_inf), T.float32(0), mnew[ii])
            alpha[ii] = exp0(mrow[ii] - mexp[ii])
            mrow[ii] = mnew[ii]
        for ii in range(RI):
            part = T.decl_buffer((L,), _F32, scope="local")
            for l in T.vectorized(L):
                part[l] = T.float32(0)
            for jv in T.unroll(nv):
                for l in T.vectorized(L):
                    s[ii, jv * L + l] = exp0(s[ii, jv * L + l] - mexp[ii])
                    part[l] = part[l] + s[ii, jv * L + l]
            for l in T.vectorized(L):
                lsum[ii, l] = lsum[ii, l] * alpha[ii] + part[l]
            for dv in T.vectorized(DV):
                acc[ii, dv] = acc[ii, dv] * alpha[ii]
        # 4. acc += p . V tile, in NC passes over the keys of CW Dv vectors each: a pass's
        #    RI x CW accumulators stay in registers (RI x NDV may not fit: NEON, head dim 32)
        for c in T.unroll(NC):
            for j in range(kn - k0 if tail else nv * L):
                for ii in T.unroll(RI):
                    for dvo in T.unroll(CW):
                        for l in T.vectorized(VL):
                            acc[ii, (c * CW + dvo) * VL + l] = acc[ii, (c * CW + dvo) * VL + l] + s[ii, j] * VL_.at(
                                V, bi, hk, k0 + j, (c * CW + dvo) * VL + l)

    @T.macro
    def body(Q, Kt, V, M, Y, b, sq, sk):
        nqt = T.meta_var((sq + (QT - 1)) // QT)
        for task in T.parallel(b * HQ * nqt):
            s = T.decl_buffer((RI, KT), _F32, scope="local")
            mrow = T.decl_buffer((RI,), _F32, scope="local")
            mnew = T.decl_buffer((RI,), _F32, scope="local")
            mexp = T.decl_buffer((RI,), _F32, scope="local")
            alpha = T.decl_buffer((RI,), _F32, scope="local")
            lsum = T.decl_buffer((RI, L), _F32, scope="local")
            acc = T.decl_buffer((RI, DV), _F32, scope="local")
            bi = T.meta_var(task // (HQ * nqt))
            h = T.meta_var(task % (HQ * nqt) // nqt)
            hk = T.meta_var(h // G)
            q0 = T.meta_var(task % nqt * QT)
            for io in range((T.min(sq - q0, QT) + (RI - 1)) // RI):
                r0 = T.meta_var(q0 + io * RI)
                for ii in range(RI):
                    mrow[ii] = T.float32(neg_inf)
                for ii, l in T.grid(RI, L):
                    lsum[ii, l] = T.float32(0)
                for ii, dv in T.grid(RI, DV):
                    acc[ii, dv] = T.float32(0)
                kend = T.meta_var(T.min(sk, r0 + RI) if causal else sk)
                # whole key tiles, then at most one whole half tile, then the partial half tile
                for kt_i in range(kend // KT):
                    tile(Q, Kt, V, M, s, mrow, mnew, mexp, alpha, lsum, acc, bi, h, hk, r0, sq, sk, kend,
                         kt_i * KT, NV, False)
                if kend % KT >= KT2:
                    tile(Q, Kt, V, M, s, mrow, mnew, mexp, alpha, lsum, acc, bi, h, hk, r0, sq, sk, kend,
                         kend // KT * KT, NV2, False)
                if kend % KT2 != 0:
                    tile(Q, Kt, V, M, s, mrow, mnew, mexp, alpha, lsum, acc, bi, h, hk, r0, sq, sk, kend,
                         kend // KT2 * KT2, NV2, True)
                for ii in range(RI):
                    if r0 + ii < sq:
                        tot = T.decl_buffer((L,), _F32, scope="local")
                        for l in T.vectorized(L):
                            tot[l] = lsum[ii, l]
                        tree(tot, _add)
                        tot[0] = T.Select(tot[0] > T.float32(0), T.float32(1) / tot[0], T.float32(0))
                        if YSM:
                            for dv in T.vectorized(DV):
                                Y[bi, r0 + ii, h, dv] = acc[ii, dv] * tot[0]
                        else:
                            for dv in T.vectorized(DV):
                                Y[bi, h, r0 + ii, dv] = acc[ii, dv] * tot[0]

    @T.prim_func(private=True, s_tir=True)
    def attn_mask(q: T.handle, kt: T.handle, v: T.handle, mask: T.handle, y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": K_OPAQUE})
        b = T.int64()
        sq = T.int64()
        sk = T.int64()
        skp = T.int64()
        mb = T.int64()
        mh = T.int64()
        mq = T.int64()
        mk = T.int64()
        Q = T.match_buffer(q, QL.shape(b, HQ, sq, D), _F32)
        Kt = T.match_buffer(kt, (b, HK, D, skp), _F32)
        V = T.match_buffer(v, VL_.shape(b, HK, sk, DV), _F32)
        M = T.match_buffer(mask, (mb, mh, mq, mk), mdt)
        Y = T.match_buffer(y, YL.shape(b, HQ, sq, DV), _F32)
        with T.sblock("root"):
            body(Q, Kt, V, M, Y, b, sq, sk)

    @T.prim_func(private=True, s_tir=True)
    def attn(q: T.handle, kt: T.handle, v: T.handle, y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": K_OPAQUE})
        b = T.int64()
        sq = T.int64()
        sk = T.int64()
        skp = T.int64()
        Q = T.match_buffer(q, QL.shape(b, HQ, sq, D), _F32)
        Kt = T.match_buffer(kt, (b, HK, D, skp), _F32)
        V = T.match_buffer(v, VL_.shape(b, HK, sk, DV), _F32)
        Y = T.match_buffer(y, YL.shape(b, HQ, sq, DV), _F32)
        with T.sblock("root"):
            body(Q, Kt, V, None, Y, b, sq, sk)

    return attn_mask if has_mask else attn


# ----------------------------------------------------------------------------- lowering support
_HALF = ("float16", "bfloat16")


def plan(node, target) -> tuple[AttentionSpec | None, str]:
    """The kernel variant for an IR ``Attention`` node on ``target``, or ``(None, why not)``.

    Decided on the IR's types alone, so the build can report every node that keeps the
    matmul/softmax/matmul decomposition (``notes``) with the same rule the lowering used."""
    if target is None or getattr(target, "kind", None) != "cpu":
        return None, "the fused kernel is for CPU targets"
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    dt = q.dtype.long_name
    if dt != "float32" and dt not in _HALF:
        return None, f"{dt} attention (the kernel computes in float32; only f32/f16/bf16 inputs)"
    shapes = [t.shape for t in (q, k, v)]
    if any(s is None or len(s) != 4 for s in shapes):
        return None, "Q/K/V not 4-D with known shapes"
    (_, hq, _, d), (_, hk, _, dk), (_, hv, _, dv) = shapes
    if not all(isinstance(x, int) for x in (hq, hk, hv, d, dk, dv)):
        return None, "symbolic head counts or head dims"
    if hk != hv or hk <= 0 or hq % hk or d != dk or d <= 0 or dv <= 0:
        return None, "inconsistent head counts or head dims"
    bcast = (False, False, False, False)
    mkind = None
    if mask is not None:
        if mask.shape is None or len(mask.shape) > 4:
            return None, "mask of unknown rank or rank > 4"
        mdt = mask.dtype.long_name
        if mdt != "bool" and mdt != dt:
            return None, f"{mdt} mask on {dt} attention"
        full = (1,) * (4 - len(mask.shape)) + tuple(mask.shape)
        want = (shapes[0][0], hq, shapes[0][2], shapes[1][2])
        if any(m != 1 and (m is None or m != w) for m, w in zip(full, want)):
            # a dim that is neither 1 nor the attention's own dim (e.g. a symbolic dim that may be
            # 1 at run time) would be read out of bounds
            return None, f"mask {list(mask.shape)} does not broadcast statically to {list(want)}"
        bcast = tuple(x == 1 for x in full)
        mkind = "bool" if mdt == "bool" else "float32"
    scale = node.attrs["scale"]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    return AttentionSpec(hq, hk, d, dv, scale, bool(node.attrs["is_causal"]), mkind, bcast), ""


_SWAP = [0, 2, 1, 3]  # [b, h, s, d] <-> [b, s, h, d]


def _seq_major_source(ctx, x):
    """The [b, s, h, d] tensor ``x`` is a ``permute_dims(·, [0, 2, 1, 3])`` of, or None: the
    kernel then reads it in place and the transpose becomes dead code."""
    e = _bound(ctx, x)
    if _is_op(e, "relax.permute_dims"):
        axes = e.attrs.axes
        if axes is not None and [int(a) for a in axes] == _SWAP and ctx.rank(e.args[0]) == 4:
            return e.args[0]
    return None


def _bound(ctx, x):
    """The expression bound to the variable ``x``, or None."""
    try:
        return ctx.bb.lookup_binding(x)
    except Exception:  # noqa: BLE001  (not a bound var)
        return None


def _is_op(e, name: str) -> bool:
    from tvm import relax

    return isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name


def _packed_source(ctx, x):
    """``(tensor, columns, offset)`` when the [b, s, h, d] tensor ``x`` is a reshape of one part
    of a split along the last axis of a [b, s, columns] tensor (a fused QKV projection: the int8
    siblings optc merges, GPT-2's ``c_attn``): the kernel then reads that part in place and the
    split, a copy of the whole projection, becomes dead code. Else None."""
    from tvm import relax

    if x is None or ctx.rank(x) != 4:
        return None
    reshape = _bound(ctx, x)
    if not _is_op(reshape, "relax.reshape"):
        return None
    item = _bound(ctx, reshape.args[0])
    if not isinstance(item, relax.TupleGetItem):
        return None
    split = _bound(ctx, item.tuple_value)
    if not _is_op(split, "relax.split"):
        return None
    src = split.args[0]
    shape, part = ctx.shape(src), ctx.shape(x)
    if shape is None or part is None or len(shape) != 3 or not isinstance(shape[2], int):
        return None
    if int(split.attrs.axis) not in (2, -1):
        return None
    cols = shape[2]
    sections = split.attrs.indices_or_sections
    if isinstance(sections, (int, tirx.IntImm)):
        n = int(sections)
        bounds = [cols * i // n for i in range(n + 1)]
    else:
        bounds = [0] + [int(i) for i in sections] + [cols]
    i = int(item.index)
    start, stop = bounds[i], bounds[i + 1]
    h, d = part[2], part[3]
    if not (isinstance(h, int) and isinstance(d, int) and h * d == stop - start and 0 <= start < stop <= cols):
        return None
    prove = Analyzer()
    expr = lambda a: tirx.const(a, "int64") if isinstance(a, int) else a  # noqa: E731
    if not all(prove.can_prove_equal(expr(a), expr(b)) for a, b in zip(part[:2], shape[:2])):
        return None
    return src, cols, start


def _output_transposed(node) -> bool:
    """Whether the node's only use is a Transpose back to [b, s, h, d] (the output projection)."""
    uses = node.outputs[0].uses
    if len(uses) != 1:
        return False
    user = uses[0][0]
    return user.op == "Transpose" and list(user.attrs.get("perm") or []) == _SWAP


def emit(ctx, node, spec: AttentionSpec, q, k, v, mask=None):
    """Emit the packed-Kᵀ and attention ``call_tir``s for ``node``; returns the output expr.

    Q/K/V that are transposes of [b, s, h, d] projections are read in place (and, where those
    are parts of one split projection, from that projection's output: ``_packed_source``); an
    output whose only use transposes it back is written [b, s, h, d] and transposed here, and
    ``FoldTransposePairs`` cancels the pair (no transpose or split kernels around the attention)."""
    from tvm import relax

    R = ctx.R
    dt = ctx.dtype(q)
    layout = [False, False, False, False]
    if dt != _F32:
        q, k, v = (ctx.emit(R.astype(t, _F32)) for t in (q, k, v))
        if mask is not None and ctx.dtype(mask) != "bool":
            mask = ctx.emit(R.astype(mask, _F32))
    packed = [(0, 0)] * 3
    if dt == _F32:
        qkv = [q, k, v]
        for i, x in enumerate(qkv):
            src = _seq_major_source(ctx, x)
            if src is not None:
                layout[i] = True
                qkv[i] = src
                part = _packed_source(ctx, src)
                if part is not None:
                    qkv[i], packed[i] = part[0], part[1:]
        q, k, v = qkv
        layout[3] = _output_transposed(node)
    spec = dataclasses.replace(spec, seq_major=tuple(layout), packed=tuple(packed))
    tiles = AttentionTiles.choose(ctx.target, spec)
    qs, ks = ctx.shape(q), ctx.shape(k)
    b, sq = qs[0], (qs[1] if layout[0] else qs[2])
    sk = ks[1] if layout[1] else ks[2]
    skp = -(-sk // tiles.kt) * tiles.kt if isinstance(sk, int) else key_pad(sk, tiles.kt)
    pack = ctx.bb.add_func(pack_k_func(spec, tiles), PACK_K)
    kt = ctx.emit(relax.call_tir(pack, [k], relax.TensorType([b, spec.heads_kv, spec.head_dim, skp], _F32)))
    args = [q, kt, v]
    if mask is not None:
        r = ctx.rank(mask)
        if r < 4:
            shp = ctx.shape(mask)
            mask = ctx.emit(R.reshape(mask, [1] * (4 - r) + list(shp)))
        args.append(mask)
    fn = ctx.bb.add_func(attention_func(spec, tiles), KERNEL)
    yshape = [b, sq, spec.heads_q, spec.head_dim_v] if layout[3] else [b, spec.heads_q, sq, spec.head_dim_v]
    y = ctx.emit(relax.call_tir(fn, args, relax.TensorType(yshape, _F32)))
    if layout[3]:
        y = ctx.emit(R.permute_dims(y, _SWAP))
    if dt != _F32:
        y = ctx.emit(R.astype(y, dt))
    return y


def decomposed_notes(graph, target) -> list[str]:
    """One line per ``Attention`` node of ``graph`` that does not get the fused kernel, and why."""
    out = []
    for node in graph.nodes:
        if node.op == "Attention":
            spec, why = plan(node, target)
            if spec is None:
                out.append(f"Attention {node.name}: matmul/softmax/matmul decomposition, no fused kernel ({why})")
    return out


# ----------------------------------------------------------------------------- Relax pass
@mutator
class _FoldPairs(PyExprMutator):
    def visit_call_(self, call):  # noqa: N802
        call = super().visit_call_(call)
        outer = _permute_axes(call)
        if outer is None or not isinstance(call.args[0], relax.Var):
            return call
        inner_call = self.lookup_binding(call.args[0])
        inner = _permute_axes(inner_call)
        if inner is None or len(inner) != len(outer) or any(inner[a] != i for i, a in enumerate(outer)):
            return call
        return inner_call.args[0]


def _permute_axes(e) -> list[int] | None:
    if (isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.permute_dims"
            and e.attrs.axes is not None):
        return [int(a) for a in e.attrs.axes]
    return None


@tvm.ir.transform.module_pass(opt_level=0, name="optc.FoldTransposePairs")
class FoldTransposePairs:
    """``permute_dims(permute_dims(x, a), b)`` with ``a∘b`` the identity -> ``x``, then dead-code
    elimination: the attention kernel writes [b, s, h, d] and the lowering transposes it to the
    IR's [b, h, s, d]; the output projection's transpose back cancels it (see ``emit``), and the
    transposes whose input the kernel reads in place drop out."""

    def transform_module(self, mod, _ctx):
        rw = _FoldPairs(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rw.builder_.update_func(gv, rw.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rw.builder_.get())
