"""Which GPU kernels of a scheduled module would not run on the GPU as scheduled.

A TIR function for a GPU target runs its statements on the *host* unless they sit under a thread
binding (a ``blockIdx``/``threadIdx`` loop, or a ``thread_extent`` attribute); only code under a
binding becomes a device kernel. So a load or store of a global (device) buffer outside every
binding is host code dereferencing device memory: TVM's ``VerifyMemory`` rejects it late (with a
message about forgetting to bind), and were it compiled it would crash or read garbage. A
function that binds some blocks but left one (an init, a second stage) unbound has the same
problem in that block.

``unbound_kernels`` lists every such function; the build refuses to ship them. What is allowed:

* a serial loop *inside* a binding, however long (a per-thread reduction, a scan over one row);
* host code that touches no buffer data: asserts on shape values (optc's ``check_once``
  kernels), calls of packed functions that get buffers as arguments (library sorts), shape
  arithmetic;
* functions for another target (the host ``llvm`` functions of a heterogeneous module).
"""

from __future__ import annotations


def unbound_kernels(mod, tvm_target=None) -> list[str]:
    """Names of the PrimFuncs in ``mod`` that read or write a global buffer outside any thread
    binding (see the module doc)."""
    return sorted(name for name, _ in unbound_report(mod))


def unbound_report(mod) -> list[tuple[str, list[str]]]:
    """``(function name, ["load X", "store Y", ...])`` for every PrimFunc of ``mod`` that touches a
    global buffer outside any thread binding."""
    from tvm import tirx

    out = []
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or _is_host_func(func):
            continue
        bad = unbound_accesses(func)
        if bad:
            out.append((gv.name_hint, bad))
    return out


def unbound_accesses(func) -> list[str]:
    """``"load NAME"`` / ``"store NAME"`` for each global buffer ``func`` accesses outside any
    thread binding (each buffer and kind once, in visiting order)."""
    import tvm_ffi
    from tvm import ir, tirx

    found: list[str] = []

    def note(kind, buf):
        if _is_global(buf):
            what = f"{kind} {buf.name}"
            if what not in found:
                found.append(what)

    def on_for(node, visitor):
        if node.kind == tirx.ForKind.THREAD_BINDING:
            return None  # device code below: anything goes
        return visitor.default_visit(node)

    def on_attr(node, visitor):
        if node.attr_key in ("thread_extent", "virtual_thread"):
            return None
        return visitor.default_visit(node)

    def on_load(node, visitor):  # tirx.BufferLoad is an ir.TensorLoad whose source is the buffer
        if _is_buffer(node.source):
            note("load", node.source)
        return visitor.default_visit(node)

    def on_store(node, visitor):
        note("store", node.buffer)
        return visitor.default_visit(node)

    tvm_ffi.structural_visit(func.body, [(tirx.For, on_for), (tirx.AttrStmt, on_attr),
                                         (ir.TensorLoad, on_load), (tirx.BufferStore, on_store)])
    return found


def _is_buffer(v) -> bool:
    from tvm import tirx

    return isinstance(getattr(v, "ty", None), tirx.buffer.BufferType)


def _is_global(buf) -> bool:
    return str(buf.scope()) in ("", "global")


def _is_host_func(func) -> bool:
    attrs = func.attrs
    if attrs is None:
        return False
    if "target" in attrs and attrs["target"] is not None and str(attrs["target"].kind.name) != "cuda":
        return True
    return "tirx.is_host_func" in attrs and bool(attrs["tirx.is_host_func"])
