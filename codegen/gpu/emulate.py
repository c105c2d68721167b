"""Run a CUDA-scheduled module on the CPU: the numbers of the GPU kernels, checked without a GPU.

``build_emulated(graph, target)`` runs the CUDA build up to and including scheduling (the same
Relax passes, legalization, fusion, dlight rules, optc's attention and check kernels,
``ParallelToThreads``, ``gpu_check``), then turns every thread binding back into a serial loop and
compiles the result for the host CPU. What runs is the scheduled TIR of every GPU kernel — the
loop structure, the index arithmetic, the shared/local staging, the predicates of the tails —
executed one thread after another.

Why that is sound for the kernels a CUDA build has: a scheduled kernel writes each phase of a
block's work as its own thread loop (a cooperative load, then the compute), and a reduction over
threads as a block whose reduction loop is bound to ``threadIdx`` (TVM lowers it to a
cross-thread all-reduce later). Run serially, a phase loop does the work of all threads before
the next phase starts — what the barrier TVM inserts between them guarantees on the GPU — and a
thread-bound reduction loop is an ordinary reduction. A nested loop bound to the same thread
axis (dlight's cooperative fetch inside the thread loops of a matmul) just loads the whole tile
for each thread: redundant, same values. Kernels written with ``launch_thread`` (TVM's own GPU
kernels for scatter, sort, top-k) run the same way as long as they do not synchronize their
threads explicitly; one that does (a barrier or a warp shuffle in the middle of a thread's code)
raises ``NotEmulable``: it can only be checked on a GPU. What emulation does not check: races and
missing barriers (serial code has none), warp-level code (optc's kernels have none; TVM inserts
it only when lowering all-reduces, after this point), code generation by nvcc, and the speed.
"""

from __future__ import annotations


class NotEmulable(Exception):
    """A kernel whose serial run would not compute what the GPU computes (see the module doc)."""


_BARRIERS = ("tirx.tvm_storage_sync", "tirx.tvm_warp_shuffle", "tirx.tvm_warp_shuffle_up",
             "tirx.tvm_warp_shuffle_down", "tirx.tvm_warp_activemask", "tirx.tvm_thread_allreduce")


def barriers(func) -> list[str]:
    """The thread-synchronizing intrinsics ``func`` calls explicitly (kernels TVM writes with
    ``launch_thread``, e.g. its GPU sort): a serial run of such a kernel is not the GPU's."""
    import tvm_ffi
    from tvm import ir

    found = []

    def visit(call):
        op = call.op
        name = getattr(op, "name", "")
        if isinstance(op, ir.Op) and name in _BARRIERS and name not in found:
            found.append(name)

    tvm_ffi.structural_walk(func.body, [(ir.Call, visit)])
    return found


def strip_thread_bindings(func):
    """``func`` with every thread-bound loop, and every ``launch_thread`` scope, made a serial
    loop (see the module doc). Raises ``NotEmulable`` for a kernel that synchronizes its
    threads explicitly."""
    import tvm_ffi
    from tvm import tirx

    sync = barriers(func)
    if sync:
        raise NotEmulable(f"calls {', '.join(sync)}")

    def loop(node):
        if node.kind != tirx.ForKind.THREAD_BINDING:
            return node
        return tirx.For(node.loop_var, node.min, node.extent, tirx.ForKind.SERIAL, node.body, None, node.annotations)

    def attr(node):
        if node.attr_key not in ("thread_extent", "virtual_thread"):
            return node
        iv = node.node
        return tirx.For(iv.var, tirx.const(0, iv.var.ty), node.value, tirx.ForKind.SERIAL, node.body)

    return tvm_ffi.structural_map(func, [(tirx.For, loop), (tirx.AttrStmt, attr)])


def build_emulated(graph, target="cuda-sm90", *, checked: bool = True, host: str = "x86"):
    """A ``CompiledModel`` running ``graph`` as the CUDA build schedules it, on the CPU."""
    import tvm
    from tvm import tirx
    from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

    from ...ir.folding import fold_graph
    from ...targets import get_target
    from ..build import BuildError, Signature, _specs, embed_signature, schedule_module
    from ..lower import lower
    from ..runtime import CompiledModel

    target = get_target(target)
    cpu = get_target(host)
    target.check_toolchain()
    work = graph.clone()
    fold_graph(work)
    lowered = lower(work, target, checked=checked)
    tvm_target = target.tvm()
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(list(target.relax_passes()) + target.legalize_passes(tvm_target))(lowered.mod)
        mod, _, unscheduled = schedule_module(mod, target)
        bad = target.check_scheduled(mod)
    if bad:
        raise BuildError(f"not schedulable for {target.name}: {', '.join(bad)}")
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            try:
                func = strip_thread_bindings(func)
            except NotEmulable as e:
                raise NotEmulable(f"kernel {gv.name_hint} {e}: a serial run is not what the GPU computes") from None
            if func.attrs is not None and "target" in func.attrs:
                func = func.without_attr("target")
            updates[gv] = func
    for gv, func in updates.items():
        mod[gv] = func
    cpu_target = cpu.tvm()
    with cpu_target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(cpu_pipeline.dataflow_lower_passes(cpu_target)
                                       + cpu_pipeline.finalize_passes(cpu_target))(mod)
        sig = Signature(_specs(graph.inputs), _specs(graph.outputs), list(lowered.assumptions), cpu.describe(), checked)
        ex = tvm.compile(embed_signature(mod, sig), cpu_target, relax_pipeline=None)
    return CompiledModel(ex, sig)
