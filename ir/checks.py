"""The wording of run-time value checks, shared by the reference interpreter (``ir/interpreter``)
and the checks compiled into modules (``codegen/lower.py``, ``LowerContext.check_each``), so both
backends refuse the same input with the same one-line ``InvalidValueError``.

Messages are built from the IR only (static dims, symbolic dim names), never from run-time
values: a compiled module's message is fixed when it is built, and the interpreter's must match
it word for word.

The rules both backends follow:

* an index must lie in ``[-extent, extent)`` of the axis it selects (negative ones count from the
  end); nothing is clamped — except OneHot, whose out-of-range indices give all-off rows (ONNX);
* an integer division or modulo by zero is an error; ``INT_MIN / -1`` wraps to ``INT_MIN`` (and
  ``INT_MIN % -1`` is 0) instead of trapping;
* a dim that is not fixed at compile time (symbolic or unknown) must be at least 1 at run time:
  zero-size inputs are refused by ``ir.signature.check_inputs`` and by the compiled module.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidValueError

DIVISION_BY_ZERO = "integer division by zero"


def where(node: Any) -> str:
    """``node NAME (Op)``: how every check message starts."""
    return f"node {node.name} ({node.op})"


def invalid(node: Any, what: str) -> InvalidValueError:
    """The error for a value ``node`` cannot take (``what`` says which, in the shared wording)."""
    return InvalidValueError(f"{where(node)}: {what}")


def dim_text(d: Any) -> str:
    """An IR dim as it appears in messages: an int, a symbolic name, or ``?``."""
    return "?" if d is None else str(d)


def index_out_of_range(extent: Any, axis: int) -> str:
    """An index outside ``[-extent, extent)`` on ``axis`` (``extent`` an IR dim)."""
    e = dim_text(extent)
    return f"index out of range [-{e}, {e}) on axis {axis}"


def cannot_broadcast(i: int, extent: Any, target: Any) -> str:
    """Expand: input dim ``i`` (IR dim ``extent``) against a target dim (an IR dim, or None when
    only known at run time)."""
    t = "the target" if target is None else f"{dim_text(target)}"
    return f"cannot broadcast dim {i} (extent {dim_text(extent)}) to {t}"


def too_small(what: str, i: int, extent: Any, other: str, other_extent: Any) -> str:
    """A shape constraint between two operands, e.g. GatherElements' indices dims must not exceed
    the data's."""
    return f"{what} dim {i} (extent {dim_text(extent)}) exceeds {other} dim {i} (extent {dim_text(other_extent)})"


def dims_differ(what: str, i: int, extent: Any, other: str, other_extent: Any) -> str:
    """Two operands' dim ``i`` must be equal (e.g. GatherND's batch dims)."""
    return f"{what} dim {i} (extent {dim_text(extent)}) differs from {other} dim {i} (extent {dim_text(other_extent)})"


def updates_shape(want: Any) -> str:
    """A scatter's updates must have shape ``want`` (IR dims, or None when the IR does not know)."""
    if want is None:
        return "updates do not match the shape the indices select"
    return f"updates shape must be [{', '.join(dim_text(d) for d in want)}]"


def cannot_reshape(shape: Any) -> str:
    """A reshape target (known only at run time) that does not fit the input (IR ``shape``)."""
    dims = "?" if shape is None else "[" + ", ".join(dim_text(d) for d in shape) + "]"
    return f"cannot reshape {dims} to the target shape"
