"""Kernels of the recurrent ops (ir/ops/recurrent.py): ``RNN``, ``GRU`` and ``LSTM``.

Written from the ONNX equations, one time step at a time, so every attribute has its ONNX
meaning (checked against ONNX Runtime and torch.nn in tests/test_rnn.py): ``clip`` bounds the
inputs of the gate activations (not the LSTM's output activation ``h(Ct)``, as in ONNX Runtime);
alpha/beta are consumed in order by the activations that take them; ``sequence_lens`` stops a
batch entry's state after its length (its ``Y`` rows are zero there), and a reverse direction
starts at each entry's own last step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..checks import invalid
from ..graph import Node
from ..ops.recurrent import Activation, recurrent_spec, sequence_lens_out_of_range
from .engine import kernel


def activation_fn(a: Activation) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch function of one ONNX RNN activation."""
    al, be = a.alpha, a.beta
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "Relu": torch.relu,
        "Tanh": torch.tanh,
        "Sigmoid": torch.sigmoid,
        "Affine": lambda x: x * al + be,
        "LeakyRelu": lambda x: torch.where(x >= 0, x, x * al),
        "ThresholdedRelu": lambda x: torch.where(x > al, x, torch.zeros_like(x)),
        "ScaledTanh": lambda x: torch.tanh(x * be) * al,
        "HardSigmoid": lambda x: (x * al + be).clamp(0, 1),
        "Elu": lambda x: torch.where(x >= 0, x, (torch.exp(x) - 1) * al),
        "Softsign": lambda x: x / (1 + x.abs()),
        "Softplus": lambda x: F.softplus(x, beta=1.0, threshold=20.0),
    }
    return fns[a.name]


@kernel("RNN", "GRU", "LSTM")
def _recurrent(node: Node, x, w, r, b=None, seq_lens=None, init_h=None, init_c=None, p=None):
    spec = recurrent_spec(node.op, node.attrs, int(r.shape[2]))
    if spec.layout == 1:
        x = x.transpose(0, 1)
        init_h = None if init_h is None else init_h.transpose(0, 1)
        init_c = None if init_c is None else init_c.transpose(0, 1)
    steps, batch = int(x.shape[0]), int(x.shape[1])
    h_size, g = spec.hidden, spec.gates
    lens = None
    if seq_lens is not None:
        lens = seq_lens.to(torch.int64)
        if bool(((lens < 0) | (lens > steps)).any()):
            raise invalid(node, sequence_lens_out_of_range(steps))
    clip = spec.clip
    clamp = (lambda t: t.clamp(-clip, clip)) if clip is not None else (lambda t: t)
    ys, hs, cs = [], [], []
    for d, direction in enumerate(spec.directions):
        acts = [activation_fn(a) for a in spec.activations[d]]
        wd, rd = w[d], r[d]
        wb = b[d, :g * h_size] if b is not None else None
        rb = b[d, g * h_size:] if b is not None else None
        h = init_h[d] if init_h is not None else x.new_zeros((batch, h_size))
        c = init_c[d] if init_c is not None else x.new_zeros((batch, h_size))
        pd = p[d] if p is not None else None
        xw = torch.matmul(x, wd.transpose(0, 1))
        if wb is not None:
            xw = xw + wb
        order = range(steps) if direction == "forward" else range(steps - 1, -1, -1)
        y = [None] * steps
        for t in order:
            new_h, new_c = _step(spec, acts, clamp, xw[t], h, c, rd, rb, pd)
            if lens is not None:
                live = (lens > t).unsqueeze(1)
                h = torch.where(live, new_h, h)
                c = torch.where(live, new_c, c)
                y[t] = torch.where(live, new_h, torch.zeros_like(new_h))
            else:
                h, c = new_h, new_c
                y[t] = new_h
        ys.append(torch.stack(y) if steps else x.new_zeros((0, batch, h_size)))
        hs.append(h)
        cs.append(c)
    y_all = torch.stack(ys, dim=1)  # [T, D, B, H]
    y_h, y_c = torch.stack(hs), torch.stack(cs)  # [D, B, H]
    if spec.layout == 1:
        y_all = y_all.permute(2, 0, 1, 3)
        y_h, y_c = y_h.transpose(0, 1), y_c.transpose(0, 1)
    return (y_all, y_h, y_c) if node.op == "LSTM" else (y_all, y_h)


def _step(spec, acts, clamp, xw_t, h, c, rd, rb, pd):
    """One time step: (new h, new c) from the input projection ``xw_t`` (with Wb) and the state."""
    hs = spec.hidden
    if spec.op == "RNN":
        pre = xw_t + torch.matmul(h, rd.transpose(0, 1))
        if rb is not None:
            pre = pre + rb
        return acts[0](clamp(pre)), c
    if spec.op == "GRU":
        f, gfn = acts
        rz = torch.matmul(h, rd[:2 * hs].transpose(0, 1))
        if rb is not None:
            rz = rz + rb[:2 * hs]
        z = f(clamp(xw_t[:, :hs] + rz[:, :hs]))
        rg = f(clamp(xw_t[:, hs:2 * hs] + rz[:, hs:]))
        rh, rbh = rd[2 * hs:], (rb[2 * hs:] if rb is not None else None)
        if spec.linear_before_reset:
            hr = torch.matmul(h, rh.transpose(0, 1))
            if rbh is not None:
                hr = hr + rbh
            hh = gfn(clamp(xw_t[:, 2 * hs:] + rg * hr))
        else:
            hr = torch.matmul(rg * h, rh.transpose(0, 1))
            if rbh is not None:
                hr = hr + rbh
            hh = gfn(clamp(xw_t[:, 2 * hs:] + hr))
        return (1 - z) * hh + z * h, c
    # LSTM: gates i, o, f, c; peepholes Pi, Po, Pf.
    f, gfn, hfn = acts
    pre = xw_t + torch.matmul(h, rd.transpose(0, 1))
    if rb is not None:
        pre = pre + rb
    gi, go, gf, gc = pre[:, :hs], pre[:, hs:2 * hs], pre[:, 2 * hs:3 * hs], pre[:, 3 * hs:]
    if pd is not None:
        gi = gi + pd[:hs] * c
        gf = gf + pd[2 * hs:] * c
    i = f(clamp(gi))
    ft = 1 - i if spec.input_forget else f(clamp(gf))
    new_c = ft * c + i * gfn(clamp(gc))
    if pd is not None:
        go = go + pd[hs:2 * hs] * new_c
    o = f(clamp(go))
    return o * hfn(new_c), new_c
