"""Sizes as sympy expressions: a SymInt, an int or an expression, compared and combined at
import time, before anything is materialized in the graph."""

from __future__ import annotations

import numpy as np
import sympy
import torch

from ...ir import UnsupportedOpError


def size_expr(x) -> sympy.Expr:
    """The sympy expression of a size (a SymInt, a python / numpy int or bool, or an expression)."""
    if isinstance(x, torch.SymInt):
        return x.node.expr
    if isinstance(x, (bool, np.bool_)):
        return sympy.Integer(int(x))
    if isinstance(x, (int, np.integer)):
        return sympy.Integer(int(x))
    if isinstance(x, sympy.Basic):
        return x
    raise UnsupportedOpError(f"torch frontend: expected a size, got {x!r}")


def same_size(a, b) -> bool:
    """Whether two sizes are provably equal for every value of their symbols."""
    ea, eb = size_expr(a), size_expr(b)
    if ea == eb:
        return True
    if ea.is_Integer and eb.is_Integer:
        return False
    try:
        return bool(sympy.expand(ea - eb) == 0)
    except Exception:  # noqa: BLE001
        return False


def is_sym_value(v) -> bool:
    """Whether an FX value is a python or symbolic scalar (size arithmetic), not a tensor."""
    return isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)) and not isinstance(v, torch.Tensor)
