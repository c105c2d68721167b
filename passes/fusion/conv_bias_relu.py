"""Convolution epilogues: ``Conv(X, W, B?) [+ per-channel constant] -> Relu`` →
``FusedConv(X, W, B, activation="relu")`` (as ONNX Runtime's com.microsoft FusedConv).

Why: codegen then emits one kernel that applies the bias and activation while the output tile
is still in registers, instead of extra passes over the feature map.

Pattern: a ``Conv`` used by nothing else, then optionally an ``Add`` of a constant holding one
value per output channel (``[C,1,1]``, ``[1,C,1,1]``, or one scalar) that folds into the bias
(only when the Conv's own bias is a constant or absent), then optionally one activation used by
nothing else: ``Relu`` (also ``Silu``/``Gelu``, which FusedConv supports too). A Conv with a
folded bias but no activation stays a ``Conv`` (with the new bias): that is still one op less.
"""

from __future__ import annotations

import numpy as np

from optc.ir.graph import Graph, Node, Value

from ._match import epilogue_activation, sole_user, strip
from ._rewriter import Rule, apply_rule, require


def _channel_vector(c: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``c`` as one value per channel, if adding it to an [N, C, ...] tensor of ``rank`` adds
    exactly that per-channel vector."""
    if c.ndim > rank or c.size not in (1, channels):
        return None
    if c.size == 1:
        return np.full(channels, c.reshape(()), dtype=c.dtype)
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    if shape[1] != channels or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return c.reshape(-1).copy()


def _bias_add(conv: Node, out: Value) -> tuple[Node, np.ndarray] | None:
    """The per-channel constant Add reading ``out`` alone, and its vector."""
    add = sole_user(out)
    if add is None or add.op != "Add" or out.shape is None:
        return None
    a, b = strip(add.input(0)), strip(add.input(1))
    other = b if a is strip(out) else a if b is strip(out) else None
    if other is None or other is strip(out) or other.const is None or other.dtype != out.dtype:
        return None
    if add.output.type != out.type:
        return None
    vec = _channel_vector(other.const, out.shape[1], len(out.shape))
    return None if vec is None else (add, vec)


def _match(conv: Node):
    require(conv.output.shape is not None, "the Conv's output shape is unknown")
    out, bias, folded = conv.output, conv.input(2), None
    found = _bias_add(conv, out)
    if found is not None and (bias is None or strip(bias).const is not None):
        folded, out = found[1], found[0].output
    act = sole_user(out)
    activation = epilogue_activation(act)
    require(activation is not None or folded is not None,
            "no per-channel constant Add and no Relu/Silu/Gelu used by it alone after the Conv")
    return folded, out, act, activation


def _rewrite(graph: Graph, conv: Node, found):
    folded, out, act, activation = found
    bias = conv.input(2)
    if folded is not None:
        old = np.zeros_like(folded) if bias is None else strip(bias).const.reshape(-1)
        bias = graph.add_constant((old + folded).astype(folded.dtype), graph.unique_name(f"{conv.name}_bias"))
    ins = [conv.input(0), conv.input(1), bias]
    if activation is None:
        new = graph.add_node("Conv", ins, dict(conv.attrs), before=conv, name=f"{conv.name}_biased")
        return [(out, new.output)]
    new = graph.add_node("FusedConv", ins, {**conv.attrs, "activation": activation}, before=conv,
                         name=f"{conv.name}_fused")
    return [(act.output, new.output)]


RULE = Rule("conv_bias_relu", ("Conv",), _match, _rewrite)


def fuse_conv_bias_relu(graph: Graph) -> int:
    """Fuse Conv, a per-channel bias Add and Relu into FusedConv (or fold just the bias)."""
    return apply_rule(graph, RULE).matched
