"""Inference BatchNormalization after a convolution, folded into the convolution's constants:
``BN(Conv(X, W, B))`` → ``Conv(X, W * k, (B - mean) * k + beta)`` with
``k = scale / sqrt(var + eps)`` per output channel.

Why: BN in inference is a per-channel affine map, so it costs nothing once it lives in the
weights; the result is exact up to float rounding (the fold is computed in float64).

Pattern: ``BatchNormalization`` (inference, one output) whose input is a ``Conv`` or
``ConvTranspose`` used by nothing else, with a constant weight, a constant or absent bias, and
constant BN parameters of one entry per output channel.
"""

from __future__ import annotations

import numpy as np

from optc.ir.graph import Graph, Node

from ._match import producer, sole_user, strip
from ._rewriter import Rule, apply_rule, require


def _const(node: Node, i: int) -> np.ndarray | None:
    v = strip(node.input(i))
    return None if v is None else v.const


def _folded(conv: Node, bn: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(new weight, new bias) of ``conv`` with ``bn`` folded in, or None when it does not fit."""
    w = _const(conv, 1)
    params = [_const(bn, i) for i in range(1, 5)]
    if w is None or w.ndim < 3 or any(p is None for p in params):
        return None
    group = conv.attrs["group"]
    cout = w.shape[0] if conv.op == "Conv" else w.shape[1] * group
    if any(p.size != cout for p in params):
        return None
    b = _const(conv, 2)
    if conv.input(2) is not None and (b is None or b.size != cout):
        return None
    scale, beta, mean, var = (p.reshape(-1).astype(np.float64) for p in params)
    k = scale / np.sqrt(var + bn.attrs["epsilon"])
    w64 = w.astype(np.float64)
    if conv.op == "Conv":  # W [Cout, Cin/g, k...]
        w_new = w64 * k.reshape((-1,) + (1,) * (w.ndim - 1))
    else:  # ConvTranspose W [Cin, Cout/g, k...]; output channel = group * (Cout/g) + j
        cin = w.shape[0]
        per = w64.reshape((group, cin // group) + w.shape[1:])
        w_new = (per * k.reshape((group, 1, -1) + (1,) * (w.ndim - 2))).reshape(w.shape)
    b64 = np.zeros(cout) if b is None else b.reshape(-1).astype(np.float64)
    b_new = (b64 - mean) * k + beta
    return w_new.astype(w.dtype), b_new.astype(w.dtype)


def _match(bn: Node):
    require(len(bn.outputs) == 1 and not bn.attrs["training_mode"], "a training-mode BatchNormalization")
    conv = producer(bn.input(0), "Conv", "ConvTranspose")
    require(conv is not None, "its input is not a Conv")
    require(sole_user(conv.output) is bn, f"{conv.name}'s output has other users")
    require(conv.output.dtype == bn.output.dtype, "the Conv and the BatchNormalization have different types")
    folded = _folded(conv, bn)
    require(folded is not None, "the weight, bias or normalization parameters are not constants of one entry per channel")
    return conv, folded


def _rewrite(graph: Graph, bn: Node, found):
    conv, (w, b) = found
    ins = [conv.input(0), graph.add_constant(w, graph.unique_name(f"{conv.name}_w_bn")),
           graph.add_constant(b, graph.unique_name(f"{conv.name}_b_bn"))]
    new = graph.add_node(conv.op, ins, dict(conv.attrs), before=bn, name=f"{conv.name}_bn")
    return [(bn.output, new.output)]


RULE = Rule("conv_bn", ("BatchNormalization",), _match, _rewrite)


def fuse_conv_bn(graph: Graph) -> int:
    """Fold inference BatchNormalization into the constant weight and bias of the Conv before it."""
    return apply_rule(graph, RULE).matched
