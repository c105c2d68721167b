"""Thread bindings for optc's own GPU kernels.

optc writes a GPU kernel's *algorithm* as plain TIR: serial loops, with the loops that become
the grid and the thread block annotated ``optc.bind = "blockIdx.x"`` / ``"threadIdx.x"``, and
shared/local buffers allocated inside the per-block ``SBlock``. Each phase of a block's work is
its own ``for tx`` loop (all threads do phase 1, then all do phase 2), which is exactly what the
serial loops compute — so the unbound function runs on the CPU (``llvm``) and is tested against
the reference interpreter there. ``bind`` is the separate schedule step: it turns the annotated
loops into thread bindings and nothing else. TVM's lowering then compacts each thread's local
buffers to its own slice, keeps shared buffers per block and inserts ``__syncthreads`` between
phases that share memory (``ThreadSync``).

``ParallelToThreads`` maps the other kind of pre-scheduled kernel — CPU-scheduled TIR that
lowerings emit already scheduled (``tirx.is_scheduled``, e.g. the scan of CumSum/CumProd) — onto
the GPU: each outermost ``parallel`` loop becomes ``blockIdx.x`` x ``threadIdx.x`` (the loop body,
serial, runs per thread; vectorized inner loops stay as they are).
"""

from __future__ import annotations

import tvm

BIND = "optc.bind"
THREADS_PER_BLOCK = 256


def _iter_var(tag: str, extent, dtype):
    from tvm import tirx

    return tirx.IterVar(tvm.ir.Range(tirx.const(0, dtype), extent), tirx.Var(tag, dtype), tirx.IterVar.ThreadIndex, tag)


def bind(func):
    """``func`` with every loop annotated ``optc.bind = TAG`` bound to the thread axis ``TAG``."""
    import tvm_ffi
    from tvm import tirx

    def post(loop):
        ann = loop.annotations
        if not ann or BIND not in ann:
            return loop
        tag = str(ann[BIND])
        rest = {k: v for k, v in ann.items() if k != BIND}
        iv = tirx.IterVar(tvm.ir.Range(loop.min, loop.extent), tirx.Var(tag, loop.loop_var.ty),
                          tirx.IterVar.ThreadIndex, tag)
        return tirx.For(loop.loop_var, loop.min, loop.extent, tirx.ForKind.THREAD_BINDING, loop.body, iv, rest)

    return tvm_ffi.structural_map(func, (tirx.For, post))


def has_thread_binding(func) -> bool:
    import tvm_ffi
    from tvm import tirx

    found = []

    def visit(node):
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.THREAD_BINDING:
            found.append(node)
        elif isinstance(node, tirx.AttrStmt) and node.attr_key == "thread_extent":
            found.append(node)

    tvm_ffi.structural_walk(func.body, [(tirx.For, visit), (tirx.AttrStmt, visit)])
    return bool(found)


def parallel_to_threads(func, threads: int = THREADS_PER_BLOCK):
    """Each outermost ``parallel`` loop of ``func`` split over ``blockIdx.x`` x ``threadIdx.x``
    (guarded for the tail); ``func`` unchanged when it has none."""
    import tvm_ffi
    from tvm import tirx

    changed = []

    def visit(loop, visitor):
        if loop.kind != tirx.ForKind.PARALLEL:
            return visitor.default_mutate(loop)
        dt = loop.loop_var.ty
        n = loop.extent
        t = tirx.const(threads, dt)
        bx = tirx.Var("bx", dt)
        tx = tirx.Var("tx", dt)
        idx = loop.min + bx * t + tx
        body = _substitute(loop.body, loop.loop_var, idx)
        body = tirx.IfThenElse(bx * t + tx < n, body, None)
        inner = tirx.For(tx, tirx.const(0, dt), t, tirx.ForKind.THREAD_BINDING, body,
                         _iter_var("threadIdx.x", t, dt))
        nb = tirx.floordiv(n + (threads - 1), t)
        changed.append(loop)
        return tirx.For(bx, tirx.const(0, dt), nb, tirx.ForKind.THREAD_BINDING, inner, _iter_var("blockIdx.x", nb, dt))

    out = tvm_ffi.structural_mutate(func, [(tirx.For, visit)])
    return out if changed else func


def _substitute(stmt, var, value):
    """``stmt`` with ``var`` replaced by ``value``."""
    import tvm_ffi
    from tvm import ir

    def repl(v):
        return value if v.same_as(var) else v

    return tvm_ffi.structural_map(stmt, (ir.Var, repl))


@tvm.transform.module_pass(opt_level=0, name="optc.ParallelToThreads")
class ParallelToThreads:
    """Bind the ``parallel`` loops of the module's pre-scheduled CPU-style PrimFuncs to GPU
    threads (see the module doc)."""

    def transform_module(self, mod, _ctx):
        from tvm import tirx

        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or has_thread_binding(func):
                continue
            new = parallel_to_threads(func)
            if not new.same_as(func):
                updates[gv] = new
        if not updates:
            return mod
        mod = mod.shallow_copy() if hasattr(mod, "shallow_copy") else mod
        for gv, func in updates.items():
            mod[gv] = func
        return mod
