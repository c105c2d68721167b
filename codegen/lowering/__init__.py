"""Lowerings from IR ops to Relax, one module per op family (mirroring ``ir/interpreter``'s
``kernels_*.py``). ``@lowering("Op")`` registers ``fn(ctx, node, *inputs)``: ``ctx`` is the
``codegen.lower.LowerContext``, ``inputs`` the Relax expressions of the node's inputs (None for an
absent optional input). It returns one Relax expression or a tuple, one per node output; the
driver emits them and reconciles their shapes with the IR's types.

A lowering that meets a case it cannot express raises ``ctx.fail(...)`` (an
``UnsupportedOpError`` naming the node), never a bare exception.
"""

from __future__ import annotations

from typing import Callable

LoweringFn = Callable[..., object]
_LOWERINGS: dict[str, LoweringFn] = {}


def lowering(*ops: str) -> Callable[[LoweringFn], LoweringFn]:
    def wrap(fn: LoweringFn) -> LoweringFn:
        for name in ops:
            if name in _LOWERINGS:
                raise ValueError(f"lowering for {name} registered twice")
            _LOWERINGS[name] = fn
        return fn

    return wrap


def get_lowering(op: str) -> LoweringFn | None:
    return _LOWERINGS.get(op)


# op -> predicate: whether lowering this node needs a run-time branch (relax.If), which cannot
# live in a dataflow block (``codegen.lower`` then lowers ``main`` into plain binding blocks).
_BRANCHING: dict[str, Callable[[object], bool]] = {}


def branching(op: str) -> Callable[[Callable[[object], bool]], Callable[[object], bool]]:
    """Register ``pred(node)``: whether ``node`` lowers to a run-time branch."""

    def wrap(pred: Callable[[object], bool]) -> Callable[[object], bool]:
        _BRANCHING[op] = pred
        return pred

    return wrap


def needs_binding_blocks(node) -> bool:
    pred = _BRANCHING.get(node.op)
    return bool(pred is not None and pred(node))


def lowered_ops() -> set[str]:
    """Every op with a lowering."""
    return set(_LOWERINGS)


from . import elementwise, fused, nn, reduce, shape  # noqa: E402,F401  (register the lowerings)
from . import activation, image, loss, sequence, signal  # noqa: E402,F401  (ONNX loss / image / sequence / signal ops)
from . import control_flow, recurrent  # noqa: E402,F401  (If / Loop / Scan; RNN / GRU / LSTM)
from . import quant  # noqa: E402,F401  (quantization ops, BitCast, low-precision Cast)
from . import qlinear  # noqa: E402,F401  (QLinear)
