"""Build a graph into a TVM module: lower → optc's Relax passes → legalize / fuse → schedule →
compile for the target.

    >>> cm = build(graph, "x86")          # a CompiledModule
    >>> cm.fallback_funcs                 # kernels only the generic fallback scheduled
    >>> model = cm.load()                 # a runtime.CompiledModel: model.run({...})
    >>> cm.export("out/model.so")         # the library (its signature embedded)

Everything that differs per target — the Relax pipeline, schedule rules, fallback, toolchain —
comes from the target object (``targets/``); this driver runs the same steps for every target.

Scheduling: every fused TIR function first meets the fast rules of ``target.schedule_rules()``
(dlight style); the ones no rule takes get the target's fallback (on CPUs the generic parallel +
vectorized schedule of ``codegen/schedules/fallback.py``) and are listed in
``fallback_funcs`` (and logged): un-scheduled TIR is ~100x slower than ONNX Runtime and must
never ship silently. A function even the fallback cannot schedule is listed in ``unscheduled``
and logged as a warning.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ir import Graph
from ..ir.errors import OptcError
from ..ir.folding import fold_graph
from ..passes.fusion.siblings import merge_sibling_projections
from .lower import Assumption, lower
from .signature import SIGNATURE_FUNC, Signature, TensorSpec  # noqa: F401  (TensorSpec: re-exported)

log = logging.getLogger("optc.codegen")


class BuildError(OptcError):
    """TVM failed to build a lowered module (a gap in optc's lowering or schedules)."""


@dataclass
class CompiledModule:
    """A built module and its signature."""

    executable: Any  # tvm.relax.Executable
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target: Any  # optc Target
    assumptions: list[Assumption] = field(default_factory=list)
    fallback_funcs: list[str] = field(default_factory=list)  # only the generic fallback schedule
    unscheduled: list[str] = field(default_factory=list)  # not even that
    timings: dict[str, float] = field(default_factory=dict)  # seconds per build phase
    notes: list[str] = field(default_factory=list)  # kernel choices worth knowing (e.g. a decomposed op)
    tuned: list[str] = field(default_factory=list)  # kernels scheduled from a tuning database
    buckets: list[dict] = field(default_factory=list)  # shape buckets with their own static function
    checked: bool = True  # run-time index/divisor/assumption checks compiled in
    checks: list[str] = field(default_factory=list)  # the message of each run-time check (codegen/checks.py)
    entries: dict[str, Signature] = field(default_factory=dict)  # functions besides main (a decoder's decode)
    kv_cache: dict | None = None  # a decoder's cache (ir/decoder.py)

    @property
    def signature(self) -> Signature:
        """What the module takes, returns and assumes (also embedded in the library)."""
        target = self.target.describe() if self.target is not None else None
        checked = bool(getattr(self, "checked", True))
        entries = {name: Signature(e.inputs, e.outputs, e.assumptions, target, checked)
                   for name, e in getattr(self, "entries", {}).items()}
        return Signature(list(self.inputs), list(self.outputs), list(self.assumptions), target, checked,
                         entries, getattr(self, "kv_cache", None))

    def load(self):
        """The module ready to run: a ``CompiledModel`` in this process, or — built for another
        architecture whose artifacts ship the native runner (arm64) — a ``NativeArtifact`` that
        runs it through that runner (under qemu-user here)."""
        from ..targets.base import foreign_arch
        from .runtime import CompiledModel

        runner_arch = self.target.extra.get("native_runner") if self.target is not None else None
        if runner_arch and foreign_arch(self.target.describe()):
            from .native_artifact import NativeArtifact

            return NativeArtifact.scratch(self, runner_arch)
        return CompiledModel(self.executable, self.signature)

    def export(self, path: str | os.PathLike) -> Path:
        """Write the library to ``path`` (``.so``) atomically (a temp file in the same folder,
        flushed, then renamed); its signature is embedded in it."""
        from ..fileio import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            self.target.export(self.executable, str(tmp))
        return path


def embed_signature(mod, signature: Signature):
    """Add a Relax function returning ``signature`` as JSON to ``mod``, so the library carries
    its own signature (see ``codegen/signature.py``)."""
    from tvm import relax
    from tvm.relax.expr import String

    bb = relax.BlockBuilder(mod)
    with bb.function(SIGNATURE_FUNC, []):
        bb.emit_func_output(String(signature.dumps()))
    return bb.get()


def _specs(values) -> list[TensorSpec]:
    return [TensorSpec(v.name, v.dtype, v.shape) for v in values]


class _Guarded:
    """A schedule rule whose exceptions are logged and read as "not applicable", so one rule's
    bug costs one kernel its fast schedule (it gets the fallback), not the whole build."""

    def __init__(self, rule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except Exception as e:  # noqa: BLE001
            name = func.attrs["global_symbol"] if func.attrs is not None and "global_symbol" in func.attrs else "?"
            msg = str(e).strip().splitlines()
            log.warning("schedule rule %s failed on %s (falls back): %s", type(self.rule).__name__, name,
                        msg[-1] if msg else type(e).__name__)
            return None

    def is_target_available(self, target) -> bool:
        return getattr(self.rule, "is_target_available", lambda _t: True)(target)


def schedule_module(mod, target, fast_schedules: bool = True) -> tuple[Any, list[str], list[str]]:
    """Apply the target's schedule rules, then its fallback to what they left; returns
    ``(mod, fallback_funcs, unscheduled)``."""
    from tvm import tirx
    from tvm.s_tir import dlight as dl

    rules = [_Guarded(r) for r in target.schedule_rules()] if fast_schedules else []
    if rules:
        mod = dl.ApplyDefaultSchedule(*rules)(mod)

    def pending(m):
        out = []
        for gv, f in m.functions_items():
            if isinstance(f, tirx.PrimFunc) and not (f.attrs is not None and "tirx.is_scheduled" in f.attrs
                                                     and int(f.attrs["tirx.is_scheduled"]) == 1):
                out.append(gv.name_hint)
        return sorted(out)

    before = pending(mod)
    if before:
        mod = dl.ApplyDefaultSchedule(target.fallback_rule())(mod)
    after = pending(mod)
    fallback = [n for n in before if n not in after]
    if fallback:
        log.info("%d kernel(s) got only the generic fallback schedule: %s", len(fallback), ", ".join(fallback))
    if after:
        log.warning("%d kernel(s) are unscheduled (serial scalar loops): %s", len(after), ", ".join(after))
    return mod, fallback, after


def prepare_graph(graph: Graph, sizes: dict[str, int] | None = None) -> Graph:
    """The graph as the build lowers it: its dims bound to ``sizes`` (a shape bucket), shape
    chains folded, sibling projections merged. Tuning extracts its kernels from this same form,
    so the kernels it records are the ones the build meets."""
    from ..ir.specialize import specialize_dims

    work = specialize_dims(graph, sizes) if sizes else graph.clone()
    fold_graph(work)  # shape chains the frontend left (e.g. Shape of a static tensor) become constants
    merge_sibling_projections(work)  # Q/K/V as one GEMM (the passes keep them apart)
    return work


def _tuned_buckets(graph: Graph, tuning) -> list[dict[str, int]]:
    """The buckets of ``tuning`` that bind exactly the graph's symbolic dims."""
    from ..ir.specialize import symbolic_dims

    dims = set(symbolic_dims(graph))
    out = []
    for label in tuning.buckets():
        sizes = dict((k, int(v)) for k, v in (item.split("=") for item in label.split(",") if item))
        if set(sizes) == dims and dims:
            out.append(sizes)
    return out


def _lower_with_buckets(graph: Graph, target, checked: bool, buckets: list[dict[str, int]]):
    """``main_any`` (the graph as is), a static ``main_<bucket>`` per bucket, and ``main``
    dispatching on the input sizes (``codegen/dispatch.py``)."""
    from tvm import relax

    from .dispatch import bucket_function_name, emit_dispatch
    from .lower import finish_module

    bb = relax.BlockBuilder()
    general = lower(prepare_graph(graph), target, checked=checked, builder=bb, name="main_any")
    parts, named = [general], []
    for sizes in buckets:
        name = bucket_function_name(sizes)
        parts.append(lower(prepare_graph(graph, sizes), target, checked=checked, builder=bb, name=name))
        named.append((sizes, name))
    emit_dispatch(bb, "main_any", named)
    general.mod = finish_module(bb, parts)
    general.checks = sorted({c for p in parts for c in p.checks})
    return general


def _lower_decoder(graph: Graph, target, checked: bool, cache):
    """A decoder's steps (``ir/decoder.py``) as the functions ``main`` (prefill: the prompts, no
    cache) and ``decode`` (one token of one sequence onto a cache) of one module, sharing their
    weights — and, for a graph that takes an attention mask (rows of different lengths, padded),
    ``decode_batch``: one token of each of a batch of sequences.
    Returns the combined ``Lowered`` (``main``'s assumptions) and each step's graph and lowering."""
    from tvm import relax

    from ..ir.decoder import MASK, decode_graph, prefill_graph
    from .lower import finish_module

    bb, shared = relax.BlockBuilder(), {}
    steps = {"main": prepare_graph(prefill_graph(graph, cache)),
             "decode": prepare_graph(decode_graph(graph, cache, batch=1))}
    if MASK in graph.input_names():
        steps["decode_batch"] = prepare_graph(decode_graph(graph, cache))
    parts = {name: lower(g, target, checked=checked, builder=bb, name=name, constants=shared)
             for name, g in steps.items()}
    main = parts["main"]
    main.mod = finish_module(bb, list(parts.values()))
    main.checks = sorted({c for p in parts.values() for c in p.checks})
    return main, steps, parts


def build(graph: Graph, target="x86", *, fast_schedules: bool = True, checked: bool = True,
          tuning=None) -> CompiledModule:
    """Compile ``graph`` for ``target`` (a name such as ``"x86"`` or an optc ``Target``).

    ``fast_schedules=False`` skips optc's kernel hooks (``relax_passes``/``schedule_rules``) so
    every kernel gets the generic fallback: slow, but a second opinion when a result is wrong.

    ``checked`` (default) compiles the run-time checks in (``LowerContext.check_each``): indices
    read from data, integer divisors, run-time broadcasts, the assumptions and zero-size dims are
    verified inside the module, which raises a one-line ``InvalidValueError`` instead of reading
    or writing out of bounds. ``checked=False`` trusts the inputs: out-of-range values are
    undefined behaviour (a wrong answer or a crash).

    ``tuning`` (a ``codegen.tuning.TuningDatabase``) applies the kernels it kept tuned: for a
    graph with symbolic dims, each bucket the database tuned gets its own static function behind
    a size dispatch (``codegen/dispatch.py``); every other size runs the default schedules.

    A decoder graph with a KV cache (``ir/decoder.py``) builds into two functions sharing their
    weights: ``main`` runs the prompt (``input_ids`` alone, returning the logits and the cache)
    and ``decode`` one token onto a cache (with an attention mask, ``decode_batch`` one token of
    each row of a batch too); the signature lists them under ``entries``.
    """
    import tvm

    from ..targets import get_target

    target = get_target(target)
    target.check_toolchain()
    tvm_target = target.tvm()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    from ..ir.decoder import find_kv_cache

    cache = find_kv_cache(graph)
    entries: dict[str, Signature] = {}
    if cache is not None:
        lowered, steps, parts = _lower_decoder(graph, target, checked, cache)
        work, buckets = steps["main"], []
        entries = {name: Signature(_specs(g.inputs), _specs(g.outputs), list(parts[name].assumptions))
                   for name, g in steps.items() if name != "main"}
    else:
        work = prepare_graph(graph)
        buckets = _tuned_buckets(graph, tuning) if tuning is not None else []
        lowered = _lower_with_buckets(graph, target, checked, buckets) if buckets else lower(work, target, checked=checked)
    mod = lowered.mod
    notes = target.build_notes(work)
    for note in notes:
        log.warning("%s", note)
    timings["lower"] = time.perf_counter() - t0
    try:
        with tvm_target, tvm.transform.PassContext(opt_level=3):
            t = time.perf_counter()
            passes = list(target.relax_passes()) if fast_schedules else []
            mod = tvm.transform.Sequential(passes + target.legalize_passes(tvm_target))(mod)
            timings["legalize_fuse"] = time.perf_counter() - t
            t = time.perf_counter()
            tuned: list[str] = []
            if tuning is not None and fast_schedules:
                from .tuning.apply import apply_tuned

                mod, tuned = apply_tuned(mod, tuning)
            mod, fallback, unscheduled = schedule_module(mod, target, fast_schedules)
            timings["schedule"] = time.perf_counter() - t
            bad = target.check_scheduled(mod)
            if bad:
                raise BuildError(f"{len(bad)} kernel(s) of graph {graph.name!r} cannot run on {target.name} as "
                                 f"scheduled (no thread binding): {', '.join(bad)}")
            t = time.perf_counter()
            mod = tvm.transform.Sequential(target.lower_passes(tvm_target) + target.finalize_passes())(mod)
            io = work if cache is not None else graph  # a decoder's main is its prefill step
            sig = Signature(_specs(io.inputs), _specs(io.outputs), list(lowered.assumptions),
                            target.describe(), checked,
                            {name: Signature(e.inputs, e.outputs, e.assumptions, target.describe(), checked)
                             for name, e in entries.items()},
                            cache.to_json() if cache is not None else None)
            ex = tvm.compile(embed_signature(mod, sig), tvm_target, relax_pipeline=None)
            target.check_executable(ex)
            timings["compile"] = time.perf_counter() - t
    except OptcError:
        raise
    except Exception as e:  # TVM errors: report them as a build failure naming the graph
        msg = str(e).strip().splitlines()
        raise BuildError(f"TVM could not build graph {graph.name!r}: {type(e).__name__}: "
                         f"{msg[-1] if msg else e}") from e
    timings["total"] = time.perf_counter() - t0
    return CompiledModule(ex, list(sig.inputs), list(sig.outputs), target, list(lowered.assumptions),
                          fallback, unscheduled, timings, notes, tuned, buckets, checked, list(lowered.checks),
                          entries, sig.kv_cache)
