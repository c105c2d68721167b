"""Fused scaled-dot-product attention on the GPU, flash-attention style.

``softmax(Q Kᵀ · scale + mask) V`` on ``[batch, heads, seq, head_dim]`` in one kernel that never
writes the ``[seq_q, seq_k]`` scores to global memory. One thread block per (batch, head, tile of
``QR`` query rows), ``NT`` threads; per key tile of ``KT`` keys, in phases separated by barriers:

1. load the K and V tile into shared memory (coalesced, zeros past Sk); the Q tile is loaded once;
2. scores ``S[QR, KT]`` = Q tile x K tileᵀ, scaled, masked (bool keeps / float adds, broadcast
   over batch, head and query), causal and the Sk tail set to -inf — each thread computes
   ``QR·KT/NT`` of them, S lives in shared memory;
3. online softmax, one thread per query row: the tile's row max, ``P = exp(S - m)`` (a second
   shared tile: rewriting S in place would need a barrier inside the row thread's branch), the
   running sum ``l`` and the accumulator's rescale factor ``exp(m_old - m_new)``;
4. ``acc = acc·alpha + P V``: each thread owns ``QR·Dv/NT`` outputs of the ``[QR, Dv]``
   accumulator and keeps them in registers across all key tiles.

At the end each thread writes its outputs divided by ``l`` (0 for a row whose keys are all masked:
the interpreter's semantics). With ``is_causal`` a block stops at the last key its last row sees.
Grouped-query attention reads kv head ``h // (Hq / Hk)``. Q/K/V/Y may be stored ``[b, s, h, d]``
(the projections' layout) and are then read/written in place (``seq_major``, as the CPU kernel).
Only f32 math; half precision is cast around it.

The kernel is written once as plain TIR (``attention_algorithm``): serial loops, the grid and the
thread loops annotated for binding, one thread loop per phase. That function runs on the CPU and
is tested there against the reference interpreter; ``threads.bind`` is the separate schedule step
that makes it the GPU kernel (see ``threads.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from tvm import relax, tirx
from tvm.script import tirx as T

from ..schedules.attention import AttentionSpec, _output_transposed, _seq_major_source
from .threads import BIND, bind

KERNEL = "optc_gpu_attention"
_F32 = "float32"
_HALF = ("float16", "bfloat16")
SHARED_BYTES = 48 * 1024  # static shared memory every CUDA GPU since sm_20 gives a block


@dataclass(frozen=True)
class GPUTiles:
    """qr  query rows per block; kt  keys per tile; nt  threads per block."""

    qr: int
    kt: int
    nt: int = 128

    @staticmethod
    def shared_floats(qr: int, kt: int, d: int, dv: int) -> int:
        return qr * d + kt * _padded(d) + kt * dv + 2 * qr * _padded(kt) + 3 * qr

    @staticmethod
    def choose(spec: AttentionSpec) -> "GPUTiles | None":
        d, dv = spec.head_dim, spec.head_dim_v
        for qr, kt in ((32, 32), (16, 32), (16, 16), (16, 8), (8, 8)):
            if GPUTiles.shared_floats(qr, kt, d, dv) * 4 <= SHARED_BYTES:
                return GPUTiles(qr, kt)
        return None


def _padded(d: int) -> int:
    """Row stride of a shared tile: odd, so threads reading one column of different rows hit
    different banks."""
    return d + 1 if d % 2 == 0 else d


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _shape(seq_major: bool, b, h, n, d):
    return (b, n, h, d) if seq_major else (b, h, n, d)


@functools.lru_cache(maxsize=64)
def attention_algorithm(spec: AttentionSpec, tiles: GPUTiles) -> tirx.PrimFunc:
    """The kernel before thread binding (see the module doc). Parameters: Q, K, V, the 4-D mask
    when ``spec.mask``, then Y."""
    HQ, HK, D, DV = spec.heads_q, spec.heads_kv, spec.head_dim, spec.head_dim_v
    G = HQ // HK
    QR, KT, NT = tiles.qr, tiles.kt, tiles.nt
    DP, SP = _padded(D), _padded(KT)
    scale = float(spec.scale)
    QSM, KSM, VSM, YSM = spec.seq_major
    causal = bool(spec.causal)
    has_mask = spec.mask is not None
    bool_mask = spec.mask == "bool"
    mdt = spec.mask if has_mask else _F32
    mb_b, mh_b, mq_b, mk_b = spec.mask_bcast
    neg_inf = -math.inf
    PER_Q, PER_K, PER_V = _ceil(QR * D, NT), _ceil(KT * D, NT), _ceil(KT * DV, NT)
    PER_S, PER_O = _ceil(QR * KT, NT), _ceil(QR * DV, NT)
    block = {BIND: "blockIdx.x"}
    thread = {BIND: "threadIdx.x"}

    def at(buf, sm, b, h, n, d):
        return buf[b, n, h, d] if sm else buf[b, h, n, d]

    def score(M, dot, bi, h, r, kk, sq, sk):
        """One scaled, masked score (r, kk: absolute query row and key)."""
        val = dot * tirx.const(scale, _F32)
        if M is not None:
            zero = tirx.const(0, "int64")
            i = (zero if mb_b else bi, zero if mh_b else h, zero if mq_b else tirx.min(r, sq - 1),
                 zero if mk_b else tirx.min(kk, sk - 1))
            m = M[i[0], i[1], i[2], i[3]]
            val = tirx.Select(m, val, tirx.const(neg_inf, _F32)) if bool_mask else val + m
        if causal:
            val = tirx.Select(kk <= r, val, tirx.const(neg_inf, _F32))
        return tirx.Select(kk < sk, val, tirx.const(neg_inf, _F32))

    @T.macro
    def body(Q, K, V, M, Y, b, sq, sk):
        nqt = T.meta_var((sq + (QR - 1)) // QR)
        for blk in T.serial(b * HQ * nqt, annotations=block):
            with T.sblock("tile"):
                T.reads()
                T.writes()
                Qs = T.alloc_buffer((QR, D), _F32, scope="shared")
                # flat tiles with odd row strides (a 2-D [KT, DP] buffer would be compacted back to
                # [KT, D]: the pad column is never touched)
                Ks = T.alloc_buffer((KT * DP,), _F32, scope="shared")
                Vs = T.alloc_buffer((KT, DV), _F32, scope="shared")
                S = T.alloc_buffer((QR * SP,), _F32, scope="shared")
                P = T.alloc_buffer((QR * SP,), _F32, scope="shared")
                m = T.alloc_buffer((QR,), _F32, scope="shared")
                lsum = T.alloc_buffer((QR,), _F32, scope="shared")
                alpha = T.alloc_buffer((QR,), _F32, scope="shared")
                acc = T.alloc_buffer((NT, PER_O), _F32, scope="local")
                bi = T.meta_var(blk // (HQ * nqt))
                h = T.meta_var(blk % (HQ * nqt) // nqt)
                hk = T.meta_var(h // G)
                q0 = T.meta_var(blk % nqt * QR)
                kend = T.meta_var(T.min(sk, q0 + QR) if causal else sk)
                # the Q tile (rows past Sq read the last row: computed, never written), state
                for tx in T.serial(NT, annotations=thread):
                    for i in T.unroll(PER_Q):
                        if tx + i * NT < QR * D:
                            Qs[(tx + i * NT) // D, (tx + i * NT) % D] = at(
                                Q, QSM, bi, h, T.min(q0 + (tx + i * NT) // D, sq - 1), (tx + i * NT) % D)
                    if tx < QR:
                        m[tx] = T.float32(neg_inf)
                        lsum[tx] = T.float32(0)
                    for i in T.unroll(PER_O):
                        acc[tx, i] = T.float32(0)
                for kt in T.serial((kend + (KT - 1)) // KT):
                    k0 = T.meta_var(kt * KT)
                    # 1. K and V tiles (zeros past Sk)
                    for tx in T.serial(NT, annotations=thread):
                        for i in T.unroll(PER_K):
                            if tx + i * NT < KT * D:
                                Ks[(tx + i * NT) // D * DP + (tx + i * NT) % D] = T.if_then_else(
                                    k0 + (tx + i * NT) // D < sk,
                                    at(K, KSM, bi, hk, T.min(k0 + (tx + i * NT) // D, sk - 1), (tx + i * NT) % D),
                                    T.float32(0))
                        for i in T.unroll(PER_V):
                            if tx + i * NT < KT * DV:
                                Vs[(tx + i * NT) // DV, (tx + i * NT) % DV] = T.if_then_else(
                                    k0 + (tx + i * NT) // DV < sk,
                                    at(V, VSM, bi, hk, T.min(k0 + (tx + i * NT) // DV, sk - 1), (tx + i * NT) % DV),
                                    T.float32(0))
                    # 2. scores
                    for tx in T.serial(NT, annotations=thread):
                        for i in T.unroll(PER_S):
                            if tx + i * NT < QR * KT:
                                dot = T.decl_buffer((1,), _F32, scope="local")
                                dot[0] = T.float32(0)
                                for dd in T.serial(D):
                                    dot[0] = dot[0] + Qs[(tx + i * NT) // KT, dd] * Ks[(tx + i * NT) % KT * DP + dd]
                                S[(tx + i * NT) // KT * SP + (tx + i * NT) % KT] = score(
                                    M, dot[0], bi, h, q0 + (tx + i * NT) // KT, k0 + (tx + i * NT) % KT, sq, sk)
                    # 3. online softmax, one thread per row
                    for tx in T.serial(NT, annotations=thread):
                        if tx < QR:
                            # registers: new max, max used for exp, sum, p, alpha (no shared value is
                            # read back after this thread wrote it: no barrier inside the branch)
                            st = T.decl_buffer((5,), _F32, scope="local")
                            st[0] = m[tx]
                            for j in T.serial(KT):
                                st[0] = T.max(st[0], S[tx * SP + j])
                            st[1] = T.Select(st[0] == T.float32(neg_inf), T.float32(0), st[0])
                            st[2] = T.float32(0)
                            for j in T.serial(KT):
                                st[3] = T.exp(S[tx * SP + j] - st[1])
                                P[tx * SP + j] = st[3]
                                st[2] = st[2] + st[3]
                            st[4] = T.exp(m[tx] - st[1])
                            alpha[tx] = st[4]
                            lsum[tx] = lsum[tx] * st[4] + st[2]
                            m[tx] = st[0]
                    # 4. acc = acc * alpha + P V
                    for tx in T.serial(NT, annotations=thread):
                        for i in T.unroll(PER_O):
                            if tx + i * NT < QR * DV:
                                acc[tx, i] = acc[tx, i] * alpha[(tx + i * NT) // DV]
                                for j in T.serial(KT):
                                    acc[tx, i] = acc[tx, i] + P[(tx + i * NT) // DV * SP + j] * Vs[j, (tx + i * NT) % DV]
                # write Y = acc / l (0 where every key was masked)
                for tx in T.serial(NT, annotations=thread):
                    for i in T.unroll(PER_O):
                        if tx + i * NT < QR * DV and q0 + (tx + i * NT) // DV < sq:
                            if YSM:
                                Y[bi, q0 + (tx + i * NT) // DV, h, (tx + i * NT) % DV] = T.Select(
                                    lsum[(tx + i * NT) // DV] > T.float32(0),
                                    acc[tx, i] / lsum[(tx + i * NT) // DV], T.float32(0))
                            else:
                                Y[bi, h, q0 + (tx + i * NT) // DV, (tx + i * NT) % DV] = T.Select(
                                    lsum[(tx + i * NT) // DV] > T.float32(0),
                                    acc[tx, i] / lsum[(tx + i * NT) // DV], T.float32(0))

    @T.prim_func(private=True, s_tir=True)
    def attn_mask(q: T.handle, k: T.handle, v: T.handle, mask: T.handle, y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        b = T.int64()
        sq = T.int64()
        sk = T.int64()
        mb = T.int64()
        mh = T.int64()
        mq = T.int64()
        mk = T.int64()
        Q = T.match_buffer(q, _shape(QSM, b, HQ, sq, D), _F32)
        K = T.match_buffer(k, _shape(KSM, b, HK, sk, D), _F32)
        V = T.match_buffer(v, _shape(VSM, b, HK, sk, DV), _F32)
        M = T.match_buffer(mask, (mb, mh, mq, mk), mdt)
        Y = T.match_buffer(y, _shape(YSM, b, HQ, sq, DV), _F32)
        with T.sblock("root"):
            body(Q, K, V, M, Y, b, sq, sk)

    @T.prim_func(private=True, s_tir=True)
    def attn(q: T.handle, k: T.handle, v: T.handle, y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        b = T.int64()
        sq = T.int64()
        sk = T.int64()
        Q = T.match_buffer(q, _shape(QSM, b, HQ, sq, D), _F32)
        K = T.match_buffer(k, _shape(KSM, b, HK, sk, D), _F32)
        V = T.match_buffer(v, _shape(VSM, b, HK, sk, DV), _F32)
        Y = T.match_buffer(y, _shape(YSM, b, HQ, sq, DV), _F32)
        with T.sblock("root"):
            body(Q, K, V, None, Y, b, sq, sk)

    return attn_mask if has_mask else attn


@functools.lru_cache(maxsize=64)
def attention_kernel(spec: AttentionSpec, tiles: GPUTiles) -> tirx.PrimFunc:
    """The GPU kernel: ``attention_algorithm`` with its grid and thread loops bound."""
    return bind(attention_algorithm(spec, tiles))


class GPUAttention:
    """What the ``Attention`` lowering asks a target for (``Target.attention_kernel``): ``plan``
    decides per IR node, ``emit`` adds the call. ``bind=False`` emits the unbound algorithm (a
    CPU build of it is how the tests check the kernel's numbers without a GPU)."""

    def __init__(self, bind: bool = True):
        self.bind = bind

    def plan(self, node, target) -> tuple[AttentionSpec | None, str]:
        from ..schedules import attention as cpu

        spec, why = cpu.plan(node, _AsCPU())
        if spec is None:
            return None, why
        if GPUTiles.choose(spec) is None:
            return None, f"head dims {spec.head_dim}/{spec.head_dim_v} need more than {SHARED_BYTES // 1024} KiB of shared memory"
        return spec, ""

    def emit(self, ctx, node, spec: AttentionSpec, q, k, v, mask=None):
        R = ctx.R
        dt = ctx.dtype(q)
        layout = [False, False, False, False]
        if dt != _F32:
            q, k, v = (ctx.emit(R.astype(t, _F32)) for t in (q, k, v))
            if mask is not None and ctx.dtype(mask) != "bool":
                mask = ctx.emit(R.astype(mask, _F32))
        else:
            srcs = [_seq_major_source(ctx, x) for x in (q, k, v)]
            layout = [s is not None for s in srcs] + [_output_transposed(node)]
            q, k, v = (s if s is not None else x for s, x in zip(srcs, (q, k, v)))
        spec = dataclasses.replace(spec, seq_major=tuple(layout))
        tiles = GPUTiles.choose(spec)
        qs = ctx.shape(q)
        b, sq = qs[0], (qs[1] if layout[0] else qs[2])
        args = [q, k, v]
        if mask is not None:
            r = ctx.rank(mask)
            if r < 4:
                mask = ctx.emit(R.reshape(mask, [1] * (4 - r) + list(ctx.shape(mask))))
            args.append(mask)
        func = attention_kernel(spec, tiles) if self.bind else attention_algorithm(spec, tiles)
        gv = ctx.bb.add_func(func, KERNEL)
        yshape = [b, sq, spec.heads_q, spec.head_dim_v] if layout[3] else [b, spec.heads_q, sq, spec.head_dim_v]
        y = ctx.emit(relax.call_tir(gv, args, relax.TensorType(yshape, _F32)))
        if layout[3]:
            y = ctx.emit(R.permute_dims(y, [0, 2, 1, 3]))
        if dt != _F32:
            y = ctx.emit(R.astype(y, dt))
        return y

    def notes(self, graph, target) -> list[str]:
        """One line per ``Attention`` node of ``graph`` that keeps the decomposition, and why."""
        out = []
        for node in graph.nodes:
            if node.op == "Attention":
                spec, why = self.plan(node, target)
                if spec is None:
                    out.append(f"Attention {node.name}: matmul/softmax/matmul decomposition, no fused kernel ({why})")
        return out


class _AsCPU:
    """The CPU ``plan``'s variant rules (dtypes, static heads, mask broadcast) are the GPU
    kernel's too; it asks only for the target kind."""

    kind = "cpu"
