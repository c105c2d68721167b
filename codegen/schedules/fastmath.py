"""Vectorizable transcendental functions for CPU epilogues.

LLVM lowers ``erf`` to a scalar libm call (``erff``) per element, so a GELU epilogue fused into a
dense kernel ran element by element and made the FFN dense 3x slower than ONNX Runtime. This Relax
pass (before legalization) replaces ``nn.gelu`` and ``erf`` with TVM's rational ``fast_erf``
(|error| < 1e-6, plain mul/add/div/clamp, vectorizes), ``exp`` with ``fast_exp`` and
``nn.softmax`` with ``fast_softmax`` (legalized softmax calls libm ``expf`` per element: 50x ORT).
"""

from __future__ import annotations

import math

import tvm
from tvm import relax, te, topi
from tvm.relax.expr_functor import PyExprMutator, mutator


def _gelu_fast(x: te.Tensor):
    inv_sqrt2 = tvm.tirx.const(1.0 / math.sqrt(2.0), x.dtype)
    half = tvm.tirx.const(0.5, x.dtype)
    e = topi.fast_erf(te.compute(x.shape, lambda *i: x(*i) * inv_sqrt2, name="gelu_scale"))
    return te.compute(x.shape, lambda *i: x(*i) * (half + half * e(*i)), name="gelu")


def _erf_fast(x: te.Tensor):
    """``fast_erf`` with NaN kept: it clamps x to [-4, 4] with TVM's ``min``/``max``
    (``a < b ? a : b``), which turns NaN into the clamp bound (erf(NaN) gave 1)."""
    e = topi.fast_erf(x)
    return te.compute(x.shape, lambda *i: tvm.tirx.Select(tvm.tirx.isnan(x(*i)), x(*i), e(*i)), name="erf_nan")


@mutator
class _FastMath(PyExprMutator):
    def visit_call_(self, call):  # noqa: N802
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
            return call
        name = call.op.name
        ty = call.args[0].ty if call.args else None
        if not isinstance(ty, relax.TensorType) or ty.dtype != "float32":
            return call
        if name == "relax.nn.gelu":
            return self.builder_.call_te(_gelu_fast, call.args[0], primfunc_name_hint="gelu")
        if name == "relax.erf":
            return self.builder_.call_te(_erf_fast, call.args[0], primfunc_name_hint="erf")
        if name == "relax.nn.softmax":
            return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis),
                                         primfunc_name_hint="softmax")
        if name == "relax.exp":
            return self.builder_.call_te(topi.fast_exp, call.args[0], primfunc_name_hint="exp")
        return call


@tvm.ir.transform.module_pass(opt_level=0, name="optc.FastMath")
class FastMath:
    """Rewrite f32 ``nn.gelu``/``erf``/``exp`` into vectorizable approximations (see module doc)."""

    def transform_module(self, mod, _ctx):
        rw = _FastMath(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rw.builder_.update_func(gv, rw.visit_expr(func))
        return rw.builder_.get()
