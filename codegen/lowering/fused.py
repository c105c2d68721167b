"""Lowerings of the composite ops that fusion creates (ir/ops/nn.py): ``Linear``,
``AddLayerNorm`` and ``FusedConv``.

``Linear`` and ``FusedConv`` lower to the same Relax ops as the nodes they replaced (matmul or
conv, bias add, activation): ``PackDenseWeights`` then turns the matmul with its constant weight
into the packed dense kernel and FuseOps hands the bias/activation to ``DenseRule`` as its
epilogue. ``AddLayerNorm`` on CPU (f32, last axis) becomes one row kernel that adds while it
reads (``codegen/schedules/rows.py``); elsewhere it is an add and a layer norm.
"""

from __future__ import annotations

from . import lowering
from .nn import _conv


def activation(ctx, name: str, y):
    """The Relax form of a fused ``activation`` epilogue (the same ops as the standalone
    Relu/Gelu/Silu lowerings, so the schedules see what they saw before fusion)."""
    R = ctx.R
    if name == "none":
        return y
    if not isinstance(y, ctx.relax.Var):  # re-emitting a Var adds an alias that blocks FuseOps
        y = ctx.emit(y)
    if name == "relu":
        from .elementwise import relu

        return relu(ctx, y)
    if name == "gelu":
        return R.nn.gelu(y)
    if name == "gelu_tanh":
        return R.nn.gelu_tanh(y)
    if name == "silu":
        return R.multiply(y, R.sigmoid(y))
    raise ctx.fail(f"activation {name!r}")


@lowering("Linear")
def _linear(ctx, node, x, w, b=None):
    y = ctx.R.matmul(x, w)
    if b is not None:
        y = ctx.R.add(ctx.emit(y), b)
    return activation(ctx, node.attrs["activation"], y)


@lowering("FusedConv")
def _fused_conv(ctx, node, x, w, b=None):
    return activation(ctx, node.attrs["activation"], _conv(ctx, node, x, w, b))


@lowering("AddLayerNorm")
def _add_layer_norm(ctx, node, x, r, scale, bias=None):
    from ..schedules.rows import add_layer_norm_call

    R = ctx.R
    rank = ctx.rank(x)
    axis = node.attrs["axis"] % rank
    eps = node.attrs["epsilon"]
    want_sum = len(node.outputs) > 1
    if ctx.target is not None and getattr(ctx.target, "kind", None) == "cpu":
        fast = add_layer_norm_call(ctx, x, r, scale, bias, axis, eps, want_sum)
        if fast is not None:
            return fast
    s = ctx.emit(R.add(x, r))
    dt = ctx.dtype(s)
    stash = "float64" if dt == "float64" else "float32"
    axes = list(range(axis, rank))
    if dt == stash and _per_row(ctx, s, axis, scale) and (bias is None or _per_row(ctx, s, axis, bias)):
        # e.g. a broadcast residual (embedding sums): RowKernels still makes this a row kernel
        beta = bias if bias is not None else ctx.emit(R.zeros_like(scale))
        y = ctx.emit(R.nn.layer_norm(s, scale, beta, axes, eps))
        return (y, s) if want_sum else y
    xs = s if dt == stash else ctx.emit(R.astype(s, stash))
    mean = ctx.emit(R.mean(xs, axes, True))
    d = ctx.emit(R.subtract(xs, mean))
    var = ctx.emit(R.mean(R.multiply(d, d), axes, True))
    y = ctx.emit(R.divide(d, R.sqrt(R.add(var, ctx.scalar(eps, stash)))))
    if dt != stash:
        y = ctx.emit(R.astype(y, dt))
    y = ctx.emit(R.multiply(y, scale))
    if bias is not None:
        y = ctx.emit(R.add(y, bias))
    return (y, s) if want_sum else y


def _per_row(ctx, s, axis: int, p) -> bool:
    """Whether ``p`` has exactly the normalized shape ``s.shape[axis:]`` (what nn.layer_norm takes)."""
    ss, ps = ctx.shape(s), ctx.shape(p)
    if ss is None or ps is None or len(ps) != len(ss) - axis:
        return False
    for a, b in zip(ss[axis:], ps):
        if isinstance(a, int) or isinstance(b, int):
            if a != b:
                return False
        elif not ctx.analyzer.can_prove_equal(a, b):
            return False
    return True
