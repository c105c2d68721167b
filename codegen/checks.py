"""Run-time checks compiled into the module: the kernels behind ``LowerContext.check_each`` and
``check_once`` (``codegen/lower.py``).

A check is a small TIR function — a ``tirx.AssertStmt`` inside a loop nest over one tensor, or a
single assert over symbolic dims — called with ``R.call_tir_inplace`` on the tensor the guarded
kernel is about to read. It writes nothing, and its result (the same buffer, no copy) is what the
guarded kernel takes instead, so:

* the check runs before the kernel by data flow, not by luck of ordering;
* it is a pure call inside the dataflow block: FuseOps still fuses everything around it (the
  check itself is opaque, a kernel of its own), and dead-code elimination cannot drop it;
* the assert compiles to native code that raises through TVM's C ABI with the error kind
  ``OptcCheckError`` and our one-line message: no Python callback, so it works in any runner on
  the TVM runtime (Relax's ``assert_op`` calls back into Python and could not).

Costs: one VM call and one serial pass over the checked tensor (index tensors are small; a loop of
compares on 128 token ids is ~100 ns). Static facts are never checked at run time: constants are
checked when the module is built, and ``LowerContext.int_range`` proves indices derived from
constants in range.

GPU targets (not built yet): an assert cannot run in device code, so there a check becomes a
device reduction to a flag, copied to the host and asserted by a host function; the lowering API
(``check_each``/``check_once``) does not change.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np

CHECK_ERROR_KIND = "OptcCheckError"
"""The TVM error kind a failing check raises (``codegen.runtime`` maps it to ``InvalidValueError``)."""

_I64_MAX = 2**63 - 1


def register_error_kind(cls: type) -> None:
    """Make TVM raise ``cls`` (in Python) for a failing check."""
    import tvm_ffi

    tvm_ffi.register_error(CHECK_ERROR_KIND, cls)


def func_name(node_name: str | None, what: str) -> str:
    """A readable global name for a check kernel (``check_<node>``)."""
    base = re.sub(r"\W+", "_", node_name or what).strip("_") or "input"
    return f"check_{base[:48]}"


def _as_int64(tirx, v, dtype: str):
    """An element of ``dtype`` as an int64 PrimExpr the predicate can compare with dims;
    uint64 values past int64 become INT64_MAX (out of range of any dim)."""
    if dtype == "int64":
        return v
    if dtype == "uint64":
        return tirx.Select(v > tirx.const(_I64_MAX, "uint64"), tirx.const(_I64_MAX, "int64"), tirx.Cast("int64", v))
    if dtype.startswith(("int", "uint", "bool")):
        return tirx.Cast("int64", v)
    return v  # floats: the predicate compares them itself


def as_bool(tirx, ok):
    """A predicate's result as a bool PrimExpr (``==``/``!=`` give deferred objects; Python
    bools come from static operands)."""
    if isinstance(ok, (bool, np.bool_)):
        return tirx.IntImm("bool", bool(ok))
    if hasattr(ok, "asobject"):
        ok = ok.asobject()
    dt = str(ok.ty)
    if dt != "bool":
        return ok != tirx.const(0, dt)
    return ok


def check_func(shape: Sequence[Any], dtype: str, message: str, ok: Callable, nargs: int, each: bool):
    """The PrimFunc of one check on a tensor of ``shape`` (ints, or None where the extent is
    only known at run time) and ``dtype``: ``ok(element, position, *args)`` (``each``) or
    ``ok(*args)`` must hold, else the call raises ``message``. ``args`` are int64 scalars passed
    after the tensor."""
    import tvm
    from tvm import tirx

    dims = [tirx.IntImm("int64", d) if isinstance(d, int) else tirx.Var(f"n{i}", "int64") for i, d in enumerate(shape)]
    buf = tirx.decl_buffer(dims, dtype, "x")
    args = [tirx.Var(f"a{i}", "int64") for i in range(nargs)]
    if each:
        pos = [tirx.Var(f"i{k}", "int64") for k in range(len(dims))]
        elem = _as_int64(tirx, tirx.BufferLoad(buf, pos), dtype)
        cond = as_bool(tirx, ok(elem, pos, *args))
    else:
        cond = as_bool(tirx, ok(*args))
    body = tirx._ffi_api.AssertStmt(cond, tvm.ir.StringImm(CHECK_ERROR_KIND), [tvm.ir.StringImm(message)], None)
    if each:
        for k in reversed(range(len(dims))):
            body = tirx.For(pos[k], tirx.IntImm("int64", 0), dims[k], tirx.ForKind.SERIAL, body)
    func = tirx.PrimFunc([buf] + args, body)
    # opaque (never fused into a neighbour), already scheduled (the schedule rules and the
    # fallback leave it alone), noalias (a function without it makes LLVM drop aliasing info for
    # the whole module: DESIGN.md).
    return func.with_attrs({"op_pattern": 8, "tirx.is_scheduled": 1, "tirx.noalias": True, "optc.check": message})
