"""Handlers of the reductions (sum / mean / max ..., arg-max, any / all, variance, vector
norms), the softmax family and the normalization layers (layer, RMS, instance, group and
inference-mode batch norm)."""

from __future__ import annotations

import math
import operator

import numpy as np
import torch

from ...ir import DType, UnsupportedOpError, Value
from .importer import Importer, fake_of, norm_axis, out_dtype
from .registry import handles, overload


def _axes(a, rank: int) -> list[int] | None:
    """The ``dim`` argument as non-negative axes; None for all axes."""
    dims = a.get("dim")
    if dims is None:
        return None
    if isinstance(dims, int):
        dims = [dims]
    dims = [norm_axis(int(d), max(rank, 1)) for d in dims]
    return dims or None


def _keepdims(a) -> int:
    return int(bool(a.get("keepdim", False)))


# -- reductions --------------------------------------------------------------------------------
def _reduce(op: str, cast_input: bool = True):
    def h(m: Importer, node, a):
        x = m.v(a["self"])
        dt = out_dtype(node)
        if cast_input:
            x = m.cast(x, dt)
        axes = _axes(a, x.type.rank)
        keep = _keepdims(a)
        if x.type.rank == 0:
            return x
        return m.emit(op, x, m.i64(axes) if axes is not None else None, keepdims=keep)

    return h


for _spec, _op in [("mean.dim", "ReduceMean"), ("mean", "ReduceMean"), ("sum.dim_IntList", "ReduceSum"), ("sum", "ReduceSum"),
                   ("amax", "ReduceMax"), ("amin", "ReduceMin"), ("prod.dim_int", "ReduceProd"), ("prod", "ReduceProd")]:
    handles(_spec)(_reduce(_op))


@handles("max.dim", "min.dim")
def _max_dim(m: Importer, node, a):
    x = m.v(a["self"])
    axis = norm_axis(int(a["dim"]), max(x.type.rank, 1))
    keep = _keepdims(a)
    is_max = node.target.__name__.startswith("max")
    vals = m.emit("ReduceMax" if is_max else "ReduceMin", x, m.i64([axis]), keepdims=keep)
    idx = m.emit("ArgMax" if is_max else "ArgMin", x, axis=axis, keepdims=keep)
    return [vals, idx]


@handles("max", "min")
def _max_all(m: Importer, node, a):
    x = m.v(a["self"])
    return m.emit("ReduceMax" if node.target.__name__.startswith("max") else "ReduceMin", x, keepdims=0)


@handles("argmax", "argmin")
def _argmax(m: Importer, node, a):
    x = m.v(a["self"])
    op = "ArgMax" if node.target.__name__.startswith("argmax") else "ArgMin"
    dim = a.get("dim")
    keep = _keepdims(a)
    if dim is None:
        flat = m.emit("Reshape", x, m.i64([-1]))
        y = m.emit(op, flat, axis=0, keepdims=0)
        return m.emit("Reshape", y, m.i64([1] * x.type.rank)) if keep else y
    return m.emit(op, x, axis=norm_axis(int(dim), max(x.type.rank, 1)), keepdims=keep)


@handles("any", "any.dim", "any.dims", "all", "all.dim", "all.dims")
def _any(m: Importer, node, a):
    x = m.cast(m.cast(m.v(a["self"]), DType.BOOL), DType.INT32)
    axes = _axes(a, x.type.rank)
    op = "ReduceMax" if node.target.__name__.startswith("any") else "ReduceMin"
    y = m.emit(op, x, m.i64(axes) if axes is not None else None, keepdims=_keepdims(a))
    return m.cast(y, DType.BOOL)


def _count(m: Importer, fake: torch.Tensor, axes: list[int] | None, dt: DType) -> Value:
    """How many elements a reduction over ``axes`` sees, as a 0-d tensor of ``dt``."""
    dims = [fake.shape[i] for i in (axes if axes is not None else range(fake.dim()))]
    n = math.prod(dims) if dims else 1
    if isinstance(n, int):
        return m.scalar(n, dt)
    return m.cast(m.sym_scalar(n), dt)


def _variance(m: Importer, node, a) -> tuple[Value, Value]:
    x = m.v(a["self"])
    fake = fake_of(a["self"])
    axes = _axes(a, x.type.rank)
    keep = _keepdims(a)
    corr = a.get("correction")
    corr = 1 if corr is None and a.get("unbiased", True) else (corr or 0)
    ax = m.i64(axes) if axes is not None else None
    mean_k = m.emit("ReduceMean", x, ax, keepdims=1)
    d = m.emit("Sub", x, mean_k)
    ss = m.emit("ReduceSum", m.emit("Mul", d, d), ax, keepdims=keep)
    n = _count(m, fake, axes, x.dtype)
    denom = m.emit("Sub", n, m.scalar(float(corr), x.dtype)) if corr else n
    var = m.emit("Div", ss, denom)
    mean = mean_k if keep else m.emit("ReduceMean", x, ax, keepdims=0)
    return var, mean


@handles("var.correction", "var.dim", "var")
def _var(m: Importer, node, a):
    return _variance(m, node, a)[0]


@handles("std.correction", "std.dim", "std")
def _std(m: Importer, node, a):
    return m.emit("Sqrt", _variance(m, node, a)[0])


@handles("var_mean.correction", "var_mean.dim")
def _var_mean(m: Importer, node, a):
    return list(_variance(m, node, a))


@handles("linalg_vector_norm", "norm.ScalarOpt_dim", "frobenius_norm.dim")
def _vector_norm(m: Importer, node, a):
    x = m.v(a.get("self", a.get("input")))
    dt = out_dtype(node)
    x = m.cast(x, dt)
    ord_ = m.lit(a.get("ord", a.get("p", 2)))
    ord_ = 2.0 if ord_ is None else float(ord_)
    axes = _axes(a, x.type.rank)
    ax = m.i64(axes) if axes is not None else None
    keep = _keepdims(a)
    if ord_ == 2:
        return m.emit("ReduceL2", x, ax, keepdims=keep)
    if ord_ == 1:
        return m.emit("ReduceL1", x, ax, keepdims=keep)
    if math.isinf(ord_):
        return m.emit("ReduceMax" if ord_ > 0 else "ReduceMin", m.emit("Abs", x), ax, keepdims=keep)
    if ord_ == 0:
        return m.emit("ReduceSum", m.cast(m.emit("Not", m.emit("Equal", x, m.scalar(0, dt))), dt), ax, keepdims=keep)
    p = m.scalar(ord_, dt)
    s_ = m.emit("ReduceSum", m.emit("Pow", m.emit("Abs", x), p), ax, keepdims=keep)
    return m.emit("Pow", s_, m.scalar(1.0 / ord_, dt))


# -- softmax -----------------------------------------------------------------------------------
def _softmax(op: str):
    def h(m: Importer, node, a):
        x = m.cast(m.v(a["self"]), out_dtype(node))
        return m.emit(op, x, axis=norm_axis(int(a["dim"]), max(x.type.rank, 1)))

    return h


handles("softmax.int", "_softmax")(_softmax("Softmax"))
handles("log_softmax.int", "_log_softmax")(_softmax("LogSoftmax"))


@handles("_safe_softmax")
def _safe_softmax(m: Importer, node, a):
    """Softmax whose rows that are entirely -inf give 0 instead of NaN."""
    x = m.cast(m.v(a["self"]), out_dtype(node))
    axis = norm_axis(int(a["dim"]), max(x.type.rank, 1))
    y = m.emit("Softmax", x, axis=axis)
    row_max = m.emit("ReduceMax", x, m.i64([axis]), keepdims=1)
    dead = m.emit("Equal", row_max, m.scalar(-np.inf, x.dtype))
    return m.emit("Where", dead, m.scalar(0, x.dtype), y)


# -- normalization layers ----------------------------------------------------------------------
def _param_or_fill(m: Importer, a, key: str, shape, dt: DType, value: float) -> Value:
    """The optional tensor argument ``key``, or a constant of ``shape`` filled with ``value``
    when it is absent (an affine-less norm: weight 1, bias 0)."""
    if a.get(key) is not None:
        return m.v(a[key])
    return m.const(np.full([int(d) for d in shape], value, dtype=dt.numpy))


def _channel_affine(m: Importer, a, x: Value) -> tuple[Value, Value]:
    """Per-channel scale and bias of an instance / group / batch norm (1 and 0 when absent)."""
    c = int(fake_of(a["input"]).shape[1])
    return _param_or_fill(m, a, "weight", [c], x.dtype, 1.0), _param_or_fill(m, a, "bias", [c], x.dtype, 0.0)


def _trailing_norm_args(m: Importer, a) -> tuple[Value, list[int], Value]:
    """Input, ``normalized_shape`` and scale (1 when absent) of a layer / RMS norm, which
    normalizes over the trailing dims."""
    x = m.v(a["input"])
    nshape = [int(d) for d in m.lit(a["normalized_shape"])]
    return x, nshape, _param_or_fill(m, a, "weight", nshape, x.dtype, 1.0)


@handles("layer_norm", "native_layer_norm")
def _layer_norm(m: Importer, node, a):
    x, nshape, scale = _trailing_norm_args(m, a)
    bias = m.v(a["bias"]) if a.get("bias") is not None else None
    eps = float(a.get("eps", 1e-5))
    axis = -len(nshape) if nshape else -1
    if node.target == overload("native_layer_norm"):
        used = {u.args[1] for u in node.users if u.target is operator.getitem}
        n = 3 if used & {1, 2} else 1
        outs = m.emit("LayerNormalization", x, scale, bias, axis=axis, epsilon=eps, num_outputs=n)
        if n == 1:
            return [outs, None, None]
        mean, rstd = (m.cast(o, x.dtype) for o in outs[1:])
        return [outs[0], mean, rstd]
    return m.emit("LayerNormalization", x, scale, bias, axis=axis, epsilon=eps)


@handles("rms_norm", "_fused_rms_norm")
def _rms_norm(m: Importer, node, a):
    x, nshape, scale = _trailing_norm_args(m, a)
    eps = a.get("eps")
    if eps is None:
        eps = float(torch.finfo(fake_of(a["input"]).dtype).eps)
    y = m.emit("RMSNormalization", x, scale, axis=-len(nshape), epsilon=float(eps))
    if node.target == overload("_fused_rms_norm"):
        return [y, None]
    return y


@handles("instance_norm")
def _instance_norm(m: Importer, node, a):
    x = m.v(a["input"])
    scale, bias = _channel_affine(m, a, x)
    eps = float(a.get("eps", 1e-5))
    if a.get("use_input_stats", True) or a.get("running_mean") is None:
        return m.emit("InstanceNormalization", x, scale, bias, epsilon=eps)
    return m.emit("BatchNormalization", x, scale, bias, m.v(a["running_mean"]), m.v(a["running_var"]), epsilon=eps)


@handles("group_norm", "native_group_norm")
def _group_norm(m: Importer, node, a):
    x = m.v(a["input"])
    groups = int(m.lit(a.get("num_groups", a.get("group"))))
    scale, bias = _channel_affine(m, a, x)
    eps = float(a.get("eps", 1e-5))
    y = m.emit("GroupNormalization", x, scale, bias, epsilon=eps, num_groups=groups)
    return [y, None, None] if node.target == overload("native_group_norm") else y


@handles("_native_batch_norm_legit_no_training", "batch_norm")
def _batch_norm(m: Importer, node, a):
    if node.target == overload("batch_norm") and a.get("training"):
        raise UnsupportedOpError(f"torch frontend: batch_norm in training mode ({node.name})")
    x = m.v(a["input"])
    scale, bias = _channel_affine(m, a, x)
    y = m.emit("BatchNormalization", x, scale, bias, m.v(a["running_mean"]), m.v(a["running_var"]),
               epsilon=float(a.get("eps", 1e-5)))
    return y if node.target == overload("batch_norm") else [y, None, None]
