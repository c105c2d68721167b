"""Sequence ops: ``CumProd`` (opset 26), ``ReverseSequence`` and ``RotaryEmbedding`` (opset 23,
the ONNX op itself; its ``_expanded`` function body imports as ordinary ops)."""

from __future__ import annotations

from ..checks import dim_text
from ..types import DType
from ._common import INT, A, norm_axis, op, require_float


def sequence_length_out_of_range(steps) -> str:
    """The run-time check's wording (``ir/checks.py`` style) for a ReverseSequence length outside
    [0, T]; ``steps`` is the IR dim T."""
    return f"sequence length out of range [0, {dim_text(steps)}]"


@op("CumProd", ["x", "axis"], ["y"], attrs={"exclusive": A(INT, 0), "reverse": A(INT, 0)})
def _cumprod(ctx):
    """Running product along ``axis`` (a 0-d or 1-element int tensor); ``exclusive`` starts
    from 1, ``reverse`` runs from the end."""
    if ctx.dtype(0) is DType.BOOL:
        raise ctx.fail("x must be numeric, got bool")
    if not ctx.dtype(1).is_int:
        raise ctx.fail(f"axis must be an integer tensor, got {ctx.dtype(1).value}")
    return [ctx.type(0)]


@op("ReverseSequence", ["input", "sequence_lens"], ["Y"], attrs={"batch_axis": A(INT, 1), "time_axis": A(INT, 0)})
def _reverse_sequence(ctx):
    """For each batch entry b, reverse the first sequence_lens[b] steps along the time axis;
    the rest is copied. ``sequence_lens`` is data: each length must lie in [0, T]."""
    t = ctx.type(0)
    if ctx.dtype(1) not in (DType.INT32, DType.INT64):
        raise ctx.fail(f"sequence_lens must be int32 or int64, got {ctx.dtype(1).value}")
    if t.shape is not None:
        if t.rank < 2:
            raise ctx.fail(f"input must have rank >= 2, got {t.rank}")
        b = norm_axis(ctx.attr("batch_axis"), t.rank, "batch_axis")
        ta = norm_axis(ctx.attr("time_axis"), t.rank, "time_axis")
        if b == ta or {b, ta} - {0, 1}:
            raise ctx.fail(f"batch_axis and time_axis must be 0 and 1 (in some order), got {ctx.attr('batch_axis')} "
                           f"and {ctx.attr('time_axis')}")
        ls = ctx.shape(1)
        if ls is not None and (len(ls) != 1 or (isinstance(ls[0], int) and isinstance(t.shape[b], int)
                                                and ls[0] != t.shape[b])):
            raise ctx.fail(f"sequence_lens must be [batch] = [{t.shape[b]}], got {list(ls)}")
    return [t]


def _differs(a, b) -> bool:
    """Two dims known to differ (two ints; symbolic dims may bind to anything)."""
    return isinstance(a, int) and isinstance(b, int) and a != b


@op("RotaryEmbedding", ["X", "cos_cache", "sin_cache", "position_ids?"], ["Y"],
    attrs={"interleaved": A(INT, 0), "num_heads": A(INT, None), "rotary_embedding_dim": A(INT, 0)})
def _rotary_embedding(ctx):
    """Rotate pairs of the first ``rotary_embedding_dim`` (default: all) features of each head
    by the angle whose cos/sin the caches hold (rows picked by ``position_ids`` when given):
    halves [x1 | x2] or, ``interleaved``, even/odd features. X is [B, H, S, D] or [B, S, H*D]
    (then ``num_heads`` says H). Without position_ids the caches are [B, S, rot/2]; optc also
    lets a batch of 1 broadcast (the rotary fusion keeps a model's one table; ONNX export
    expands it)."""
    require_float(ctx, 0)
    dt = ctx.dtype(0)
    for i, what in ((1, "cos_cache"), (2, "sin_cache")):
        if ctx.dtype(i) != dt:
            raise ctx.fail(f"{what} must have X's element type {dt.value}, got {ctx.dtype(i).value}")
    if ctx.has(3) and ctx.dtype(3) is not DType.INT64:
        raise ctx.fail(f"position_ids must be int64, got {ctx.dtype(3).value}")
    cs, ss = ctx.shape(1), ctx.shape(2)
    if cs is not None and ss is not None and (len(cs) != len(ss) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(cs, ss))):
        raise ctx.fail(f"cos_cache {list(cs)} and sin_cache {list(ss)} must have the same shape")
    if ctx.has(3) and cs is not None and len(cs) != 2:
        raise ctx.fail(f"with position_ids the caches must be [max_position, rotary_dim / 2], got rank {len(cs)}")
    x = ctx.shape(0)
    if x is None:
        return [ctx.type(0)]
    if len(x) not in (3, 4):
        raise ctx.fail(f"X must be [B, H, S, D] or [B, S, H*D], got rank {len(x)}")
    heads = ctx.attr("num_heads")
    if len(x) == 3:
        if not heads or heads <= 0:
            raise ctx.fail("a 3-D X needs num_heads > 0")
        if isinstance(x[2], int) and x[2] % heads:
            raise ctx.fail(f"hidden size {x[2]} is not a multiple of num_heads {heads}")
        head = x[2] // heads if isinstance(x[2], int) else None
    else:
        head = x[3]
    if not ctx.has(3) and cs is not None and len(cs) == 3:  # [B or 1, S, rot/2] for X's B and S
        seq = x[2] if len(x) == 4 else x[1]
        if _differs(cs[0], x[0]) and cs[0] != 1 or _differs(cs[1], seq):
            raise ctx.fail(f"cos_cache {list(cs)} does not match X {list(x)}: expected [batch or 1, {seq}, rot/2]")
    rot = ctx.attr("rotary_embedding_dim") or head
    if isinstance(rot, int):
        if rot <= 0 or rot % 2 or (isinstance(head, int) and rot > head):
            raise ctx.fail(f"rotary_embedding_dim {rot} must be even and at most the head size {head}")
        for i, what in ((1, "cos_cache"), (2, "sin_cache")):
            s = ctx.shape(i)
            if s is not None and isinstance(s[-1], int) and s[-1] != rot // 2:
                raise ctx.fail(f"{what}'s last dim is {s[-1]}, expected rotary_embedding_dim / 2 = {rot // 2}")
    return [ctx.type(0)]
