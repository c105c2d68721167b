"""Handlers of the ops that create tensors: ``full`` / ``zeros`` / ``ones`` (and their ``_like``
and ``new_`` forms), ``arange``, plus ``tril`` / ``triu`` and ``cumsum``.

Small results of static shape are folded into constants right away; others become
``ConstantOfShape`` / ``Expand`` / ``Range`` on materialized sizes."""

from __future__ import annotations

import math

import numpy as np
import torch

from ...ir import DType, Value
from .dtypes import to_numpy, torch_dtype
from .importer import Importer, norm_axis, out_dtype, out_fake
from .registry import FxNode, handles
from .sizes import size_expr

# Tensors from full/zeros/arange with at most this many elements become constants directly.
_FOLD_FILL_ELEMENTS = 4096


def _fill(m: Importer, node, value) -> Value:
    fake = out_fake(node)
    dt = torch_dtype(fake.dtype)
    shape = list(fake.shape)
    if m.is_tensor(value):
        v = m.cast(m.v(value), dt)
        if v.type.rank:
            v = m.emit("Reshape", v, m.i64([]))
        return m.expand(v, [], shape) if shape else v
    value = m.lit(value)
    static = all(size_expr(d).is_Integer for d in shape)
    if isinstance(value, (bool, int, float)):
        if static and math.prod(int(d) for d in shape) <= _FOLD_FILL_ELEMENTS:
            return m.const(np.full([int(d) for d in shape], value, dtype=dt.numpy))
        if not shape:
            return m.scalar(value, dt)
        return m.emit("ConstantOfShape", m.shape_operand(shape), value=np.array([value], dtype=dt.numpy))
    v = m.cast(m.v(value) if isinstance(value, FxNode) else m.scalar_of(value), dt)
    if not shape:
        return v
    return m.emit("Expand", v, m.shape_operand(shape))


@handles("full", "full_like", "new_full", "scalar_tensor", "fill.Scalar", "fill.Tensor")
def _full(m: Importer, node, a):
    value = a.get("fill_value", a.get("s", a.get("value")))
    return _fill(m, node, value)


@handles("zeros", "zeros_like", "new_zeros", "zero", "empty.memory_format", "empty_like", "new_empty", "empty_strided",
         "new_empty_strided", "empty_permuted")
def _zeros(m: Importer, node, a):
    return _fill(m, node, 0)


@handles("ones", "ones_like", "new_ones")
def _ones(m: Importer, node, a):
    return _fill(m, node, 1)


@handles("arange", "arange.start", "arange.start_step")
def _arange(m: Importer, node, a):
    fake = out_fake(node)
    dt = torch_dtype(fake.dtype)
    start, end, step = m.lit(a.get("start", 0)), m.lit(a["end"]), m.lit(a.get("step", 1))
    if all(isinstance(x, (int, float)) for x in (start, end, step)):
        t = torch.arange(start, end, step, dtype=fake.dtype)
        if t.numel() <= _FOLD_FILL_ELEMENTS:
            return m.const(to_numpy(t))
    if dt.is_float and not all(isinstance(x, (int, float)) for x in (start, end, step)):
        vals = [m.cast(m.sym_scalar(x) if not isinstance(x, (int, float)) else m.scalar(x, DType.FLOAT64), dt) for x in (start, end, step)]
        return m.emit("Range", *vals)
    vals = [m.scalar(x, dt) if isinstance(x, (int, float)) else m.cast(m.sym_scalar(x), dt) for x in (start, end, step)]
    return m.emit("Range", *vals)


@handles("tril", "triu")
def _trilu(m: Importer, node, a):
    return m.emit("Trilu", m.v(a["self"]), m.scalar(int(m.lit(a.get("diagonal", 0))), DType.INT64),
                  upper=int(node.target.__name__.startswith("triu")))


@handles("cumsum")
def _cumsum(m: Importer, node, a):
    x = m.cast(m.v(a["self"]), out_dtype(node))
    return m.emit("CumSum", x, m.scalar(norm_axis(int(a["dim"]), max(x.type.rank, 1)), DType.INT64))
