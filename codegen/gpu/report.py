"""Which rule scheduled which GPU kernel: a diagnostic for tests and ``bench``.

``kernel_inventory(graph, target)`` runs the front half of ``codegen.build.build`` (lower, the
target's Relax and legalization passes, ``schedule_module``) and then the Relax lowering, and
lists every PrimFunc the final module still calls with how it was scheduled:

* a dlight rule or ``Injective`` (``rules.py``: ``optc.schedule_rule``), or ``Fallback``;
* ``optc attention`` (``attention.py``), ``check flag`` (device half of a run-time check),
  ``host`` (code without device work: a check's assert on shape values),
* ``pre-bound`` (``rules.PreBound``: kernels TVM's legalization wrote for the GPU, e.g. scatter,
  sort, top-k), ``pre-scheduled`` for other kernels that arrived scheduled (the scan that
  ``ParallelToThreads`` mapped).

Reshapes that the Relax VM turns into views (``RewriteDataflowReshape``) are not kernels and are
not listed. It repeats the build's steps: keep it in step with ``build.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kernel:
    name: str
    rule: str
    device: bool  # launches GPU threads


def classify(name: str, func) -> str:
    from .rules import RULE_ATTR
    from .threads import has_thread_binding

    attrs = func.attrs if func.attrs is not None else {}
    if RULE_ATTR in attrs:
        return str(attrs[RULE_ATTR])
    if name.startswith("optc_gpu_attention"):
        return "optc attention"
    if "optc.check_flag" in attrs:
        return "check flag"
    if not has_thread_binding(func):
        return "host"
    return "pre-scheduled"


def kernel_inventory(graph, target, *, checked: bool = True) -> list[Kernel]:
    """Every PrimFunc the built module calls, and what scheduled it (see the module doc)."""
    import tvm
    from tvm import relax, tirx

    from ...ir.folding import fold_graph
    from ...targets import get_target
    from ..build import schedule_module
    from ..lower import lower
    from .threads import has_thread_binding

    target = get_target(target)
    target.check_toolchain()
    work = graph.clone()
    fold_graph(work)
    mod = lower(work, target, checked=checked).mod
    tvm_target = target.tvm()
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(list(target.relax_passes()) + target.legalize_passes(tvm_target))(mod)
        mod, _, _ = schedule_module(mod, target)
        lowered = tvm.transform.Sequential(target.lower_passes(tvm_target))(mod)
    called = set()

    def visit(e):
        if isinstance(e, relax.GlobalVar):
            called.add(e.name_hint)

    for _, func in lowered.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    out = []
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and gv.name_hint in called:
            out.append(Kernel(gv.name_hint, classify(gv.name_hint, func), has_thread_binding(func)))
    return sorted(out, key=lambda k: k.name)
