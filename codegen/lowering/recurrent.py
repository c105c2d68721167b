"""Lowerings of the recurrent ops (ir/ops/recurrent.py): ``RNN``, ``GRU``, ``LSTM``.

Unrolled over a static sequence length (``MAX_UNROLLED_STEPS`` steps at most, directions
counted): the input projection ``X W^T + Wb`` of all steps is one matmul, then each step is a
small matmul with ``R`` and the gate arithmetic of the ONNX equations (the same as the
interpreter kernel). ``sequence_lens`` becomes a per-step mask (``t < len[b]``) that freezes a
finished entry's state and zeroes its ``Y`` rows: every step reads only its own slice. A length
outside ``[0, T]`` is refused at run time (``ctx.check_each``), as by the interpreter.
"""

from __future__ import annotations

from ...ir.ops.recurrent import Activation, recurrent_spec, sequence_lens_out_of_range
from . import lowering
from .elementwise import _clip01, _expm1, _softplus_expr

MAX_UNROLLED_STEPS = 1024
"""The most time steps (x directions) an RNN/GRU/LSTM unrolls into."""


def _act(ctx, a: Activation, x, dt: str):
    R = ctx.R

    def s(v):
        return ctx.scalar(v, dt)

    name = a.name
    if name == "Relu":
        return R.maximum(x, s(0))
    if name == "Tanh":
        return R.tanh(x)
    if name == "Sigmoid":
        return R.sigmoid(x)
    if name == "Affine":
        return R.add(R.multiply(x, s(a.alpha)), s(a.beta))
    if name == "LeakyRelu":
        return R.where(R.greater_equal(x, s(0)), x, R.multiply(x, s(a.alpha)))
    if name == "ThresholdedRelu":
        return R.where(R.greater(x, s(a.alpha)), x, s(0))
    if name == "ScaledTanh":
        return R.multiply(R.tanh(R.multiply(x, s(a.beta))), s(a.alpha))
    if name == "HardSigmoid":
        return _clip01(ctx, ctx.emit(R.add(R.multiply(x, s(a.alpha)), s(a.beta))))
    if name == "Elu":
        return R.where(R.greater_equal(x, s(0)), x, R.multiply(s(a.alpha), _expm1(ctx, x)))
    if name == "Softsign":
        return R.divide(x, R.add(s(1), R.abs(x)))
    if name == "Softplus":
        return _softplus_expr(ctx, x)
    raise ctx.fail(f"activation {name!r}")


@lowering("RNN", "GRU", "LSTM")
def _recurrent(ctx, node, x, w, r, b=None, seq_lens=None, init_h=None, init_c=None, p=None):
    R = ctx.R
    r_shape = ctx.static_shape(r)
    spec = recurrent_spec(node.op, node.attrs, r_shape[2] if r_shape else None)
    dt = ctx.dtype(x)
    hs, g = spec.hidden, spec.gates
    if spec.layout == 1:
        x = ctx.emit(R.permute_dims(x, [1, 0, 2]))
        init_h = None if init_h is None else ctx.emit(R.permute_dims(init_h, [1, 0, 2]))
        init_c = None if init_c is None else ctx.emit(R.permute_dims(init_c, [1, 0, 2]))
    shape = ctx.shape(x)
    steps = shape[0] if shape is not None else None
    if not isinstance(steps, int):
        raise ctx.fail(f"{node.op} over a sequence whose length is not static cannot be unrolled")
    if steps * len(spec.directions) > MAX_UNROLLED_STEPS:
        raise ctx.fail(f"{node.op} would unroll into {steps * len(spec.directions)} steps, more than the "
                       f"budget of {MAX_UNROLLED_STEPS}")
    batch = shape[1]

    def emit(e):
        return ctx.emit(e)

    def clamp(e):
        if spec.clip is None:
            return e
        return emit(R.clip(e, -spec.clip, spec.clip))

    def act(k, e, d):
        return emit(_act(ctx, spec.activations[d][k], e, dt))

    def row(t, d):  # t[d], dropping the leading axis
        return emit(R.squeeze(emit(R.strided_slice(t, axes=[0], begin=[d], end=[d + 1])), [0]))

    def cols(t, lo, hi):  # t[..., lo:hi]
        return emit(R.strided_slice(t, axes=[ctx.rank(t) - 1], begin=[lo], end=[hi]))

    masks = []
    if seq_lens is not None:
        what = sequence_lens_out_of_range(steps)
        lens = node.inputs[4].const
        if lens is not None:
            if ((lens < 0) | (lens > steps)).any():
                raise ctx.invalid(what)
        else:
            seq_lens = ctx.check_each(seq_lens, lambda v, pos, n: (v >= 0) & (v <= n), what, [steps])
        for t in range(steps):
            live = emit(R.less(ctx.scalar(t, "int32"), seq_lens))  # [B]
            masks.append(emit(R.expand_dims(live, [1])))  # [B, 1]
    zeros = emit(R.zeros([batch, hs], dt))
    ys, hs_out, cs_out = [], [], []
    for d, direction in enumerate(spec.directions):
        wd, rd = row(w, d), row(r, d)
        xw = emit(R.matmul(x, emit(R.permute_dims(wd, [1, 0]))))  # [T, B, G*H]
        rb = None
        if b is not None:
            bd = row(b, d)
            xw = emit(R.add(xw, cols(bd, 0, g * hs)))
            rb = cols(bd, g * hs, 2 * g * hs)
        h = row(init_h, d) if init_h is not None else zeros
        c = row(init_c, d) if init_c is not None else zeros
        pd = row(p, d) if p is not None else None
        order = range(steps) if direction == "forward" else range(steps - 1, -1, -1)
        y = [None] * steps
        for t in order:
            xw_t = row(xw, t)
            new_h, new_c = _step(ctx, spec, d, xw_t, h, c, rd, rb, pd, emit, clamp, act, cols)
            if masks:
                h = emit(R.where(masks[t], new_h, h))
                if new_c is not None:
                    c = emit(R.where(masks[t], new_c, c))
                y[t] = emit(R.where(masks[t], new_h, zeros))
            else:
                h, c = new_h, (new_c if new_c is not None else c)
                y[t] = new_h
        ys.append(emit(R.concat([emit(R.expand_dims(v, [0])) for v in y], axis=0)))  # [T, B, H]
        hs_out.append(h)
        cs_out.append(c)

    def stack(items, axis):
        return emit(R.concat([emit(R.expand_dims(v, [axis])) for v in items], axis=axis))

    y_all = stack(ys, 1)  # [T, D, B, H]
    y_h, y_c = stack(hs_out, 0), stack(cs_out, 0)  # [D, B, H]
    if spec.layout == 1:
        y_all = emit(R.permute_dims(y_all, [2, 0, 1, 3]))
        y_h = emit(R.permute_dims(y_h, [1, 0, 2]))
        y_c = emit(R.permute_dims(y_c, [1, 0, 2]))
    return [y_all, y_h, y_c][:len(node.outputs)]


def _step(ctx, spec, d, xw_t, h, c, rd, rb, pd, emit, clamp, act, cols):
    """One time step of direction ``d``: (new h, new c or None)."""
    R = ctx.R
    hs = spec.hidden

    def mm(a, wt):  # a @ wt^T
        return emit(R.matmul(a, emit(R.permute_dims(wt, [1, 0]))))

    def rows(t, lo, hi):  # t[lo:hi] of a 2-D weight / 1-D bias
        return emit(R.strided_slice(t, axes=[0], begin=[lo], end=[hi]))

    if spec.op == "RNN":
        pre = emit(R.add(xw_t, mm(h, rd)))
        if rb is not None:
            pre = emit(R.add(pre, rb))
        return act(0, clamp(pre), d), None
    if spec.op == "GRU":
        rz = mm(h, rows(rd, 0, 2 * hs))
        if rb is not None:
            rz = emit(R.add(rz, rows(rb, 0, 2 * hs)))
        z = act(0, clamp(emit(R.add(cols(xw_t, 0, hs), cols(rz, 0, hs)))), d)
        rg = act(0, clamp(emit(R.add(cols(xw_t, hs, 2 * hs), cols(rz, hs, 2 * hs)))), d)
        rh = rows(rd, 2 * hs, 3 * hs)
        rbh = rows(rb, 2 * hs, 3 * hs) if rb is not None else None
        if spec.linear_before_reset:
            hr = mm(h, rh)
            if rbh is not None:
                hr = emit(R.add(hr, rbh))
            hh = act(1, clamp(emit(R.add(cols(xw_t, 2 * hs, 3 * hs), emit(R.multiply(rg, hr))))), d)
        else:
            hr = mm(emit(R.multiply(rg, h)), rh)
            if rbh is not None:
                hr = emit(R.add(hr, rbh))
            hh = act(1, clamp(emit(R.add(cols(xw_t, 2 * hs, 3 * hs), hr))), d)
        one_minus_z = emit(R.subtract(ctx.scalar(1, ctx.dtype(z)), z))
        return emit(R.add(emit(R.multiply(one_minus_z, hh)), emit(R.multiply(z, h)))), None
    pre = emit(R.add(xw_t, mm(h, rd)))
    if rb is not None:
        pre = emit(R.add(pre, rb))
    gi, go, gf, gc = (cols(pre, k * hs, (k + 1) * hs) for k in range(4))
    if pd is not None:
        gi = emit(R.add(gi, emit(R.multiply(rows(pd, 0, hs), c))))
        gf = emit(R.add(gf, emit(R.multiply(rows(pd, 2 * hs, 3 * hs), c))))
    i = act(0, clamp(gi), d)
    if spec.input_forget:
        ft = emit(R.subtract(ctx.scalar(1, ctx.dtype(i)), i))
    else:
        ft = act(0, clamp(gf), d)
    new_c = emit(R.add(emit(R.multiply(ft, c)), emit(R.multiply(i, act(1, clamp(gc), d)))))
    if pd is not None:
        go = emit(R.add(go, emit(R.multiply(rows(pd, hs, 2 * hs), new_c))))
    o = act(0, clamp(go), d)
    return emit(R.multiply(o, act(2, new_c, d))), new_c
