"""Run-time checks on a GPU: a device kernel computes a flag, the host asserts it.

The lowering's checks (``LowerContext.check_each``, kernels from ``codegen/checks.py``) are TIR
asserts in a loop over the checked tensor. On a GPU that tensor lives in device memory and an
assert cannot run in device code, so ``DeviceChecks`` (a Relax pass of the CUDA target) rewrites
every element-wise check

    y = call_tir_inplace(check, (x, *args), [0])            # assert ok(x[i], i, *args) for all i

into

    ok = call_tir(check_flag, (x, *args))                   # device: 1 if every element passes, else 0
    s = tensor_to_shape(ok)                                 # copies the one int64 to the host
    s1 = match_cast(s, [f])
    view = reshape(ok, s1)                                  # a view of extent f (0 or 1 elements)
    y = call_tir_inplace(check_assert, (x, view, *args), [0])  # host: assert f == 1, same message

so the check still runs before every kernel that reads ``y`` (data flow: FuseOps orders bindings
by it, so the value reaches the assert through the view's shape, not a bare symbolic var), still
raises the same one-line ``OptcCheckError`` message, and the predicate is the one the lowering
wrote (taken from the check function itself). Checks on dims only (``check_once``) touch no tensor data: they stay
as they are and run on the host. The flag kernel is one thread block (``FLAG_THREADS`` threads
striding over the tensor); index tensors are small. Cost: one device-to-host copy of 8 bytes per
element-wise check (a synchronization), e.g. two per MiniLM call (token ids, mask gather).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from ..checks import CHECK_ERROR_KIND
from .threads import BIND, bind

FLAG_THREADS = 256


def _check_parts(func):
    """``(loops, assert)`` of an element-wise check function: the ``For`` nest from the outside
    in (none for a 0-d tensor) and the assert inside it; ``None`` for a check on dims only (its
    assert reads no tensor)."""
    from tvm import tirx

    from ..gpu_check import unbound_accesses

    body = func.body
    loops = []
    while isinstance(body, tirx.For):
        loops.append(body)
        body = body.body
    if not isinstance(body, tirx.AssertStmt) or not unbound_accesses(func):
        return None
    return loops, body


def flag_func(func, loops, assert_stmt):
    """The device kernel: ``ok[0] = 1`` if the assert of ``func`` holds for every element, else 0
    (``flag_algorithm`` bound to threads)."""
    return bind(flag_algorithm(func, loops, assert_stmt))


def flag_algorithm(func, loops, assert_stmt):
    """The flag kernel before thread binding: serial loops, runs on a CPU too. Parameters: the
    checked tensor, the check's scalar arguments, then the int64[1] ``ok`` (``call_tir`` order)."""
    from tvm import s_tir, tirx

    x, *args = func.params
    i64 = "int64"
    flag = tirx.decl_buffer([tirx.IntImm(i64, 1)], i64, "ok")
    seen = tirx.decl_buffer([tirx.IntImm(i64, 1)], "int32", "seen", scope="shared")
    total = tirx.IntImm(i64, 1)
    for lp in loops:
        total = total * lp.extent
    nt = tirx.IntImm(i64, FLAG_THREADS)

    def tloop(body_of):
        """``for tx in range(FLAG_THREADS)`` (bound to threadIdx.x) around ``body_of(tx)``."""
        tx = tirx.Var("tx", i64)
        return tirx.For(tx, tirx.IntImm(i64, 0), nt, tirx.ForKind.SERIAL, body_of(tx), annotations={BIND: "threadIdx.x"})

    zero, one, at0 = tirx.IntImm("int32", 0), tirx.IntImm("int32", 1), [tirx.IntImm(i64, 0)]
    init = tloop(lambda tx: tirx.IfThenElse(tx == 0, tirx.BufferStore(seen, one, at0), None))

    def scan_body(tx):
        # every element: unravel the flat index into the check's loop vars and test its condition
        it = tirx.Var("it", i64)
        flat = it * nt + tx
        rest, binds = flat, {}
        for lp in reversed(loops):
            binds[lp.loop_var] = tirx.floormod(rest, lp.extent)
            rest = tirx.floordiv(rest, lp.extent)
        cond = _substitute(assert_stmt.condition, binds)
        test = tirx.IfThenElse(tirx.Not(cond), tirx.BufferStore(seen, zero, at0), None)
        return tirx.For(it, tirx.IntImm(i64, 0), tirx.floordiv(total + (FLAG_THREADS - 1), nt), tirx.ForKind.SERIAL,
                        tirx.IfThenElse(flat < total, test, None))

    scan = tloop(scan_body)
    out = tloop(lambda tx: tirx.IfThenElse(
        tx == 0, tirx.BufferStore(flag, tirx.Cast(i64, tirx.BufferLoad(seen, at0)), at0), None))
    block = s_tir.SBlock([], [], [], "flag", tirx.SeqStmt([init, scan, out]), alloc_buffers=[seen])
    bx = tirx.Var("bx", i64)
    body = tirx.For(bx, tirx.IntImm(i64, 0), tirx.IntImm(i64, 1), tirx.ForKind.SERIAL,
                    s_tir.SBlockRealize([], True, block), annotations={BIND: "blockIdx.x"})
    body = s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", body))
    f = tirx.PrimFunc([x] + list(args) + [flag], body)
    return f.with_attrs({"op_pattern": 8, "tirx.is_scheduled": 1, "tirx.noalias": True,
                               "optc.check_flag": func.attrs["optc.check"]})


def assert_func(func, message: str):
    """The host function: ``assert ok == 1`` with the check's message, ``ok`` being the extent of
    its second parameter (the flag's view, see the module doc) -- it reads no tensor data."""
    from tvm import tirx

    x, *args = func.params
    ok = tirx.Var("ok", "int64")
    view = tirx.decl_buffer([ok], "int64", "ok_view")
    cond = ok == tirx.IntImm("int64", 1)
    body = tirx._ffi_api.AssertStmt(cond, tvm.ir.StringImm(CHECK_ERROR_KIND), [tvm.ir.StringImm(message)], None)
    g = tirx.PrimFunc([x, view] + list(args), body)
    return g.with_attrs({"op_pattern": 8, "tirx.is_scheduled": 1, "tirx.noalias": True, "optc.check": message})


def _substitute(expr, binds):
    import tvm_ffi
    from tvm import ir

    def repl(v):
        for k, val in binds.items():
            if v.same_as(k):
                return val
        return v

    return tvm_ffi.structural_map(expr, (ir.Var, repl))


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod
        self.done: dict = {}  # check GlobalVar -> (flag gv, assert gv) or None

    def _variants(self, gv):
        if gv in self.done:
            return self.done[gv]
        from tvm import tirx

        func = self.mod_[gv]
        out = None
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and "optc.check" in func.attrs:
            parts = _check_parts(func)
            if parts is not None:
                message = str(func.attrs["optc.check"])
                fl = self.builder_.add_func(flag_func(func, *parts), gv.name_hint + "_flag")
                asrt = self.builder_.add_func(assert_func(func, message), gv.name_hint + "_assert")
                out = (fl, asrt)
        self.done[gv] = out
        return out

    def visit_call_(self, call):  # noqa: N802  (TVM's visitor naming)
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_tir_inplace"):
            return call
        gv = call.args[0]
        if not isinstance(gv, relax.GlobalVar):
            return call
        variants = self._variants(gv)
        if variants is None:
            return call
        fl, asrt = variants
        x, *args = list(call.args[1].fields)
        bb = self.builder_
        ok = bb.emit(relax.call_tir(fl, relax.Tuple([x] + args), relax.TensorType([1], "int64")), "check_ok")
        host = bb.emit(relax.op.call_pure_packed("vm.builtin.tensor_to_shape", ok,
                                                 ty_args=[relax.ShapeType(ndim=1)]), "check_ok_host")
        value = tvm.tirx.Var("check_ok", "int64")
        shape = bb.match_cast(host, relax.ShapeType([value]))
        # a view of ``ok`` whose extent is its value: the host assert reads the value from the
        # view's shape, and the chain ok -> host copy -> view -> assert is data flow (FuseOps
        # reorders by data flow and would move a bare symbolic-var use before its definition)
        view = bb.emit(relax.op.call_pure_packed("vm.builtin.reshape", ok, shape,
                                                 ty_args=[relax.TensorType([value], "int64")]), "check_ok_view")
        return relax.op.call_tir_inplace(asrt, relax.Tuple([x, view] + args), [0], call.ty)


@tvm.transform.module_pass(opt_level=0, name="optc.DeviceChecks")
class DeviceChecks:
    """Element-wise run-time checks as device flag + host assert (see the module doc)."""

    def transform_module(self, mod, _ctx):
        rw = _Rewriter(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rw.builder_.update_func(gv, rw.visit_expr(func))
        out = rw.builder_.get()
        return relax.transform.DeadCodeElimination()(out)
