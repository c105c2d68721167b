"""Building blocks shared by the op families: broadcasting, axis handling, schema factories."""

from __future__ import annotations

from typing import Callable, Sequence

from ..errors import IRError
from ..schema import REQUIRED, AttrKind, AttrSpec, InferContext, OpSchema, register
from ..symbolic import broadcast_dim
from ..types import DType, TensorType

INT = AttrKind.INT
FLOAT = AttrKind.FLOAT
STRING = AttrKind.STRING
INTS = AttrKind.INTS
FLOATS = AttrKind.FLOATS
DTYPE = AttrKind.DTYPE
TENSOR = AttrKind.TENSOR


def A(kind: AttrKind, default=REQUIRED, doc: str = "") -> AttrSpec:
    return AttrSpec(kind, default, doc)


def op(name: str, inputs: Sequence[str], outputs: Sequence[str] = ("Y",), attrs: dict | None = None,
       sym: Callable | None = None, doc: str = ""):
    """Decorator: register ``fn`` as the type inference of op ``name``."""

    def wrap(fn: Callable[[InferContext], list[TensorType]]):
        register(OpSchema(name, tuple(inputs), tuple(outputs), fn, dict(attrs or {}), sym, doc or (fn.__doc__ or "").strip()))
        return fn

    return wrap


def broadcast_shapes(*shapes):
    """Numpy broadcasting over dims that may be symbolic; None if any rank is unknown."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        d = 1
        for s in shapes:
            k = i - (rank - len(s))
            if k >= 0:
                try:
                    d = broadcast_dim(d, s[k])
                except ValueError:
                    raise IRError(f"shapes {', '.join(map(_fmt, shapes))} do not broadcast") from None
        out.append(d)
    return tuple(out)


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def norm_axis(axis: int, rank: int | None, what: str = "axis") -> int:
    if rank is None:
        raise IRError(f"{what} {axis} needs a known rank")
    if not -rank <= axis < max(rank, 1):
        raise IRError(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def same_type(ctx: InferContext) -> list[TensorType]:
    return [ctx.type(0)]


def same_float_type(ctx: InferContext) -> list[TensorType]:
    require_float(ctx, 0)
    return [ctx.type(0)]


def require_float(ctx: InferContext, i: int) -> None:
    if not ctx.dtype(i).is_float:
        raise ctx.fail(f"input {i} must be a float tensor, got {ctx.dtype(i).value}")


def require_same_dtype(ctx: InferContext, idx: Sequence[int]) -> DType:
    dts = {ctx.dtype(i) for i in idx if ctx.has(i)}
    if len(dts) > 1:
        raise ctx.fail("inputs must share an element type, got " + ", ".join(sorted(d.value for d in dts)))
    return dts.pop()


def const_ints(ctx: InferContext, i: int) -> list[int] | None:
    """The contents of input ``i`` when it is a known integer tensor (constant or symbolic
    with all-static entries)."""
    s = ctx.sym(i)
    if s is not None and all(isinstance(d, int) for d in s):
        return list(s)
    c = ctx.const(i)
    if c is not None:
        return [int(x) for x in c.reshape(-1)]
    return None


def unknown_shape_of_rank(rank: int | None):
    return None if rank is None else (None,) * rank
