"""The kernels of a model at one shape bucket: what ``optc tune`` measures and MetaSchedule tunes.

A workload is one fused PrimFunc of the bucket's static module (the graph with its symbolic dims
bound, ``ir/specialize.py``), exactly as ``build`` produces it before scheduling, keyed by its
structural hash — the key MetaSchedule's database uses, stable across processes, so a kernel
tuned once is found again by every model and bucket that contains it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import relax, tirx

from ...ir import Graph

__all__ = ["Workload", "bucket_label", "kernel_module", "static_module", "workload_key", "workloads"]

# Run-time checks (codegen/checks.py) and pure data movement are not worth a tuning trial.
_SKIP_PREFIXES = ("check_",)


@dataclass
class Workload:
    name: str  # the kernel's name in the bucket's module
    mod: tvm.IRModule  # {"main": the unscheduled PrimFunc, global_symbol "main"}
    key: str  # structural hash (hex)
    calls: int  # call sites in the model


def bucket_label(sizes: dict[str, int]) -> str:
    """``seq=128,batch=1`` style, sorted by name: how buckets are written in reports and files."""
    return ",".join(f"{k}={v}" for k, v in sorted(sizes.items()))


def kernel_module(func: tirx.PrimFunc) -> tvm.IRModule:
    """A one-function module ``{"main": func}`` (MetaSchedule's workload form), deep-copied:
    dlight's scheduling pass and MetaSchedule's search both edit the module they are given in
    place (a workload committed after a search was the scheduled kernel, and its records no
    longer replayed)."""
    func = func.with_attr("global_symbol", "main")
    return tvm.ir.load_json(tvm.ir.save_json(tvm.IRModule({"main": func})))


def workload_key(func: tirx.PrimFunc) -> str:
    return f"{tvm_ffi.structural_hash(kernel_module(func)) & (2**64 - 1):016x}"


def static_module(graph: Graph, target, sizes: dict[str, int]) -> tvm.IRModule:
    """The bucket's Relax module after optc's kernel passes and fusion, before scheduling."""
    from ..build import prepare_graph
    from ..lower import lower

    mod = lower(prepare_graph(graph, sizes), target).mod
    tvm_target = target.tvm()
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(list(target.relax_passes()) + target.legalize_passes(tvm_target))(mod)


def _is_static(func: tirx.PrimFunc) -> bool:
    for p in func.params:
        shape = getattr(p.ty, "shape", None)
        if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape):
            return False
    return True


def _call_counts(mod: tvm.IRModule) -> Counter:
    counts: Counter = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call):
            for arg in expr.args:
                if isinstance(arg, tvm.ir.GlobalVar):
                    counts[arg.name_hint] += 1

    for _gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return counts


def workloads(mod: tvm.IRModule, untunable: list[str] | None = None) -> list[Workload]:
    """The module's tunable kernels: static PrimFuncs called from its Relax functions, one per
    structural key (the first name wins), checks left out. The names of the kernels that stay
    symbolic even at a bucket (optc's hand-written attention kernel takes its sizes as
    parameters) are appended to ``untunable``."""
    counts = _call_counts(mod)
    seen: dict[str, Workload] = {}
    for gv, func in mod.functions_items():
        name = gv.name_hint
        if not isinstance(func, tirx.PrimFunc) or name.startswith(_SKIP_PREFIXES) or not counts.get(name):
            continue
        if not _is_static(func):
            if untunable is not None:
                untunable.append(name)
            continue
        key = workload_key(func)
        if key in seen:
            seen[key].calls += counts[name]
        else:
            seen[key] = Workload(name, kernel_module(func), key, counts[name])
    return list(seen.values())
