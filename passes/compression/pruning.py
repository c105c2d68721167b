"""The driver both structured-pruning passes share: check the request, select what to remove on
the probe (``structured``), rewrite a clone, check it reproduces the probe, measure the
fidelity on the calibration sets nothing was fitted to (``Probe.held``), report, and only then
replace the graph's contents."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ...ir.analysis import Polynomial, bind_dims, node_flops, summarize
from ...ir.errors import OptcError
from ...ir.folding import eliminate_dead_code
from ...ir.graph import Graph
from ...ir.interpreter import Interpreter
from ..base import PassError, PassResult
from .fidelity import measure, refuse_ruin
from .projections import as_projection, replace_weight
from .shape_edits import StructureError
from .structured import Plan, Probe, keep_refit_if_better, prune_to_budget, prune_to_count, reference_run

IMPORTANCE = ("fisher", "magnitude", "ablation")


def _check_options(p) -> None:
    name = p.name
    if not 0.0 <= p.ratio < 1.0:
        raise PassError(f"{name}: ratio must be in [0, 1), got {p.ratio}")
    if not 0.0 <= p.layer_ratio <= 1.0:
        raise PassError(f"{name}: layer_ratio must be in [0, 1], got {p.layer_ratio}")
    if p.ratio > 0 and p.layer_ratio > 0:
        raise PassError(f"{name}: give ratio or layer_ratio, not both")
    if not 0.0 <= p.min_cosine <= 1.0:
        raise PassError(f"{name}: min_cosine must be in [0, 1], got {p.min_cosine}")
    if p.importance not in IMPORTANCE:
        raise PassError(f"{name}: importance must be one of {', '.join(IMPORTANCE)}, got {p.importance!r}")
    if p.refit_target not in ("local", "residual"):
        raise PassError(f"{name}: refit_target must be local or residual, got {p.refit_target!r}")
    if p.steps < 1 or p.ridge < 0:
        raise PassError(f"{name}: steps must be >= 1 and ridge >= 0")


def _apply_compensation(work: Graph, probe: Probe, state) -> None:
    """Give the compensation sites' projections in ``work`` their re-fitted weights."""
    nodes = {n.name: n for n in work.nodes}
    for s, fit in zip(probe.sites[probe.pruned:], state.refits[probe.pruned:]):
        proj = as_projection(nodes[s.refit.node.name]) if s.refit.node.name in nodes else None
        if fit is None or proj is None:
            continue
        replace_weight(work, proj, fit[0], None if proj.bias is None else fit[1])


def _layer_stats(graph: Graph, node_names: list[str], dims: dict[str, int]) -> dict:
    nodes = {n.name: n for n in graph.nodes}
    params, flops = 0, Polynomial()
    for name in node_names:
        n = nodes.get(name)
        if n is None:
            continue
        params += sum(int(v.const.size) for v in n.inputs if v is not None and v.is_constant and v.dtype.is_float and v.const.ndim >= 1)
        flops.add(node_flops(n))
    return {"params": params, "flops": flops.evaluate(dims)}


def run_structured(p, graph: Graph, ctx, *, kind: str, sites_of: Callable[[Graph], list],
                   blocks_of: Callable[[Graph], Any], rewrite: Callable, layer_nodes: Callable[[Any], list[list[str]]],
                   compensation_of: Callable[[Graph], list] | None = None) -> PassResult:
    t0 = time.perf_counter()
    _check_options(p)
    info = blocks_of(graph)
    skipped = list(info.skipped)
    if not info.blocks:
        why = f" (skipped: {skipped[0]['core']}: {skipped[0]['reason']})" if skipped else ""
        what = "attention blocks" if kind == "heads" else "feed-forward blocks"
        raise PassError(f"{p.name}: the model has no {what} this pass understands{why}")
    if p.ratio == 0 and p.layer_ratio == 0 and p.min_cosine == 0:
        return PassResult(False, {"importance": p.importance, "removed": 0, "note": "nothing requested (ratio, layer_ratio and min_cosine are 0)"})
    inputs = [dict(c) for c in ctx.calibration]
    if not inputs and (p.importance != "magnitude" or p.refit or p.min_cosine > 0):
        raise PassError(f"{p.name}: needs calibration data (--calib) for importance={p.importance}"
                        f"{', refit' if p.refit else ''}{', min_cosine' if p.min_cosine > 0 else ''}")
    try:
        return _run(p, graph, inputs, kind, sites_of, blocks_of, rewrite, layer_nodes, info, skipped, t0,
                    compensation_of, ctx)
    except (StructureError, OptcError, ValueError, RuntimeError, np.linalg.LinAlgError) as e:
        if isinstance(e, PassError):
            raise
        raise PassError(f"{p.name}: {e}".splitlines()[0]) from None


def _run(p, graph, inputs, kind, sites_of, blocks_of, rewrite, layer_nodes, info, skipped, t0,
         compensation_of, ctx) -> PassResult:
    from ...progress import Progress

    plan = Plan(importance=p.importance, steps=p.steps, refit=p.refit, ridge=p.ridge, seed=0, shortlist=p.shortlist)
    with Progress(f"analysing the {kind} and their calibration activations", prefix=f"{p.name}: ") as plan.progress:
        result = _select_and_rewrite(p, graph, inputs, kind, sites_of, blocks_of, rewrite, layer_nodes, info, skipped,
                                     t0, compensation_of, ctx, plan)
        plan.say(f"{result.report.get('removed', 0)} {kind} removed")
        return result


def _select_and_rewrite(p, graph, inputs, kind, sites_of, blocks_of, rewrite, layer_nodes, info, skipped, t0,
                        compensation_of, ctx, plan) -> PassResult:
    residual = p.refit and p.refit_target == "residual"
    fitted = p.refit or p.importance != "magnitude"  # else nothing is fitted: measure on every set
    probe = Probe(graph, sites_of, inputs, compensation_of if residual else None, hold_back=fitted)  # nothing to restore locally
    sites = probe.sites[:probe.pruned]
    ev, targets = reference_run(probe, targets=residual) if inputs else (None, None)
    groups = [len(s.groups) for s in probe.sites]  # compensation sites: 0
    total = sum(groups)
    if p.min_cosine > 0 and p.ratio == 0 and p.layer_ratio == 0:
        state, _ = prune_to_budget(plan, probe, ev, targets, p.min_cosine, limit=total - 1,
                                   chunk=max(1, round(0.05 * total)))
    else:
        if p.layer_ratio > 0:
            quota = [int(np.floor(p.layer_ratio * g + 1e-9)) for g in groups]
            count = sum(quota)
        else:
            quota, count = None, int(round(p.ratio * total))
        if count == 0:
            return PassResult(False, {"importance": p.importance, "removed": 0,
                                      "note": f"ratio {p.ratio or p.layer_ratio} removes no {kind}"})
        state = prune_to_count(plan, probe, ev, targets, count, quota)
        if p.min_cosine > 0:
            cos = ev.cosine(state)[0]
            if cos < p.min_cosine:
                raise PassError(f"{p.name}: removing {count} {kind} gives held-back calibration mean cosine {cos:.4f} "
                                f"< min_cosine {p.min_cosine}; lower ratio or min_cosine")
    # prune_to_count checks each round's re-fits; a budget search's trials are checked here
    refit_kept = None
    if p.refit:
        last = plan.log[-1] if plan.log else {}
        refit_kept = last["refit_kept"] if "refit_kept" in last else keep_refit_if_better(probe, ev, state)
    kept = [state.kept_units(sites, i) for i in range(len(sites))]
    removed = sum(s.units - len(k) for s, k in zip(sites, kept))
    if removed == 0:
        return PassResult(False, {"importance": p.importance, "removed": 0,
                                  "calibration_fidelity": None, "steps": plan.log})

    work = graph.clone()
    winfo = blocks_of(work)
    if len(winfo.blocks) != len(sites):
        raise PassError(f"{p.name}: the analysis differs on a clone of the graph")
    rewrite(work, winfo, kept, state.refits[:probe.pruned])
    _apply_compensation(work, probe, state)
    work.infer_types()
    eliminate_dead_code(work)
    work.infer_types()
    # The rewrite must reproduce the masked, re-fitted probe it was selected on.
    if inputs:
        want = probe.forward(state, 0)[probe.output_name].double().numpy()
        got = Interpreter(work).run(inputs[0])[work.outputs[0].name].astype(np.float64)
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        if got.shape != want.shape or err > 1e-3:
            raise PassError(f"{p.name}: the rewritten graph does not reproduce the masked model (relative error {err:.2e})")
    held = [inputs[b] for b in probe.held]
    fid = measure(graph, work, held) if inputs else None
    if p.min_cosine > 0 and fid is not None and fid.mean_cosine < p.min_cosine:
        raise PassError(f"{p.name}: held-back calibration mean cosine {fid.mean_cosine:.4f} < min_cosine {p.min_cosine}")
    if fid is not None:
        refuse_ruin(p.name, fid, "held-back calibration" if len(held) < len(inputs) else "calibration", ctx,
                    f"remove fewer {kind} (ratio=...), or set min_cosine=")

    dims = bind_dims(graph, {k: np.shape(v) for k, v in inputs[0].items()}) if inputs else {}
    before_sum, after_sum = summarize(graph), summarize(work)
    per_layer = []
    for s, k, names in zip(sites, kept, layer_nodes(info)):
        b, a = _layer_stats(graph, names, dims), _layer_stats(work, names, dims)
        per_layer.append({"layer": s.name, f"{kind}_before": s.units, f"{kind}_after": len(k),
                          "removed": sorted(set(range(s.units)) - set(k)) if kind == "heads" else s.units - len(k),
                          "params_before": b["params"], "params_after": a["params"],
                          "flops_before": b["flops"], "flops_after": a["flops"]})
    report = {
        "importance": p.importance, "refit": p.refit, "removed": removed,
        "refit_target": p.refit_target if p.refit else None, "refit_kept": refit_kept,
        "compensated": [s.refit.name for s, fit in zip(probe.sites[probe.pruned:], state.refits[probe.pruned:]) if fit is not None],
        f"{kind}_before": sum(s.units for s in sites), f"{kind}_after": sum(len(k) for k in kept),
        "blocks_removed": sum(1 for k in kept if not k),
        "params_before": before_sum.params, "params_after": after_sum.params,
        "flops_before": before_sum.flops.evaluate(dims), "flops_after": after_sum.flops.evaluate(dims),
        "flops_dims": dims, "layers": per_layer,
        "calibration_fidelity": fid.as_dict() if fid is not None else None,
        "measured_on": (f"the {len(held)} of {len(inputs)} calibration sets not fitted to" if len(held) < len(inputs)
                        else "calibration") if inputs else None,
        "skipped": skipped, "steps": plan.log,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    graph.take_contents(work)
    return PassResult(True, report)
