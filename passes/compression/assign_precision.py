"""``assign-precision``: a precision per layer, from measured sensitivity, under a budget.

    assign-precision{min_cosine=0.995}                 the smallest (or fastest) plan keeping the
                                                       calibration mean cosine >= 0.995
    assign-precision{size=0.3}                         the most accurate plan whose quantizable
                                                       weights take <= 30% of their fp32 bytes
    assign-precision{latency=0.5}                      ... whose dense layers take <= 50% of their
                                                       fp32 time on the target (measured cost table)
    assign-precision{candidates="int8,bf16,fp32"}      the precisions a layer may get

Sensitivity: each layer alone at each candidate precision, the loss ``1 - mean cosine`` on the
first ``probe_sets`` calibration sets, cut to about ``fidelity.PROBE_VECTORS`` output vectors.
The plan is the exact solution of the multiple-choice knapsack over those losses (``mckp.py``),
treating them as additive; the plan is then measured, and for a fidelity budget the additive
loss budget is bisected so that the *measured* cosine meets ``min_cosine`` with as little to
spare as the search resolves. Every candidate plan is measured; the answer is one of them, and
the report says what was tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from ...ir.errors import OptcError
from ...ir.graph import Graph
from ...ir.verifier import verify
from ..base import Pass, PassError, PassResult, option, register_pass
from .fidelity import Fidelity, SensitivityProbe, refuse_ruin
from .mckp import least_cost, least_loss
from .quant_model import PRECISIONS, QuantModel, eligible
from .quantize import PrecisionOptions, check_kernels, precision_report

SEARCH_STEPS = 7  # bisection steps on the additive loss budget (min_cosine mode)


@register_pass
@dataclass
class AssignPrecision(PrecisionOptions, Pass):
    """Choose each dense layer's precision (int4 / int8 / bf16 / fp16 / fp32) from its measured
    sensitivity: the cheapest plan within a fidelity budget, or the most accurate within a size
    or latency budget (multiple-choice knapsack, checked by measurement)."""

    name: ClassVar[str] = "assign-precision"
    lossy: ClassVar[bool] = True
    candidates: str = option("int4,int8,bf16,fp32", "precisions a layer may get (comma-separated; fp32 = unchanged)")
    min_cosine: float = option(0.0, "fidelity budget: smallest calibration mean cosine allowed")
    size: float = option(0.0, "size budget: the quantizable weights' bytes as a fraction of their fp32 bytes")
    latency: float = option(0.0, "latency budget: the dense layers' time as a fraction of their fp32 time, from the "
                                 "target's measured cost table")
    objective: str = option("size", "with min_cosine: minimize size or latency")
    method: str = option("auto", "integer weights: rtn, gptq or auto (gptq for int4, rtn for int8)")
    group_size: int = option(128, "int4: weight rows per scale (32, 64 or 128)")
    grid: str = option("symmetric", "int4 codes: symmetric (int4, no zero point), asymmetric (uint4, integer zero "
                                    "point) or minmax (uint4, float zero point: each group's own range, GGUF's Q4_1)")
    act: str = option("dynamic", "int8 activations: dynamic, static or none (weight-only)")
    act_qmax: int = option(0, "largest int8 activation code: 0 = what the target's kernel multiplies exactly, 127 or 255")
    smooth: float = option(0.5, "int8 activations: SmoothQuant's migration strength alpha on normalized inputs; 0 = off")
    probe_sets: int = option(1, "calibration input sets the per-layer sensitivity probes draw from, up to "
                                    "about 512 output vectors (fidelity.PROBE_VECTORS: a decoder's first set of "
                                    "windows already gives them)")
    include: str = option("", "only weights whose name matches one of these patterns")
    exclude: str = option("pooler|classifier|lm_head", "skip weights whose name matches one of these patterns")

    def _mode(self) -> str:
        given = [k for k in ("min_cosine", "size", "latency") if getattr(self, k)]
        if len(given) != 1:
            raise PassError("assign-precision: give exactly one budget: min_cosine, size or latency"
                            + (f" (got {', '.join(given)})" if given else ""))
        if self.size and not 0 < self.size <= 1 or self.latency and not 0 < self.latency <= 1:
            raise PassError("assign-precision: size and latency are fractions in (0, 1]")
        if self.objective not in ("size", "latency"):
            raise PassError(f"assign-precision: objective must be size or latency, got {self.objective!r}")
        if self.probe_sets < 1:
            raise PassError("assign-precision: probe_sets must be >= 1")
        return given[0]

    def _candidates(self) -> list[str]:
        cands = [c.strip() for c in self.candidates.split(",") if c.strip()]
        bad = [c for c in cands if c not in PRECISIONS]
        if bad or not cands:
            raise PassError(f"assign-precision: candidates must be among {', '.join(PRECISIONS)}, got {self.candidates!r}")
        return list(dict.fromkeys(cands))

    def run(self, graph: Graph, ctx) -> PassResult:
        mode = self._mode()
        cands = self._candidates()
        config = self._config(ctx)
        check_kernels("assign-precision", ctx, cands, self.act)
        fit, calib, source = self._calibration(graph, ctx, "sensitivity measurement", config.fits(cands))
        layers, skipped = eligible(graph, self.include, self.exclude)
        if not layers:
            raise PassError("assign-precision: no eligible weights (float32 projections by a constant weight)")
        model = QuantModel(graph, layers, calib, config, fit)
        costs = self._cost_table(model, cands, ctx, mode)
        from ...progress import Progress

        with Progress(f"sensitivity of {len(layers)} layers", prefix=f"{self.name}: ") as progress:
            try:
                sens = self._sensitivity(model, cands, progress.say)
                progress.say(f"measuring the plans of the {mode} budget")
                plan, fid, search = self._plan(model, cands, sens, costs, mode)
                quantized = model.apply(plan)
                verify(quantized)
            except OptcError as e:
                raise PassError(f"assign-precision: {' '.join(str(e).split())}") from e
        refuse_ruin("assign-precision", fid, source, ctx)
        report = precision_report(model, plan, graph, quantized, fid, source, skipped, sens)
        report.update({"mode": mode, "candidates": cands, "search": search})
        if costs is not None and costs.get("latency"):
            lat = costs["latency"]
            report["latency"] = {"fp32_s": sum(lat[(l.name, "fp32")] for l in layers),
                                 "planned_s": sum(lat[(l.name, plan[l.name])] for l in layers),
                                 "table": costs.get("source", "")}
        changed = any(p != "fp32" for p in plan.values())
        if changed:
            model.apply(plan, graph)
        return PassResult(changed, report)

    # -- measurements --------------------------------------------------------------------------
    def _sensitivity(self, model: QuantModel, cands: list[str],
                     say: Callable[[str], None]) -> dict[str, dict[str, float]]:
        """1 - mean cosine with the layer alone at each candidate (fp32: 0), on
        ``SensitivityProbe``'s rows of the first ``probe_sets`` calibration sets."""
        probe = SensitivityProbe(model.graph, model.calibration[:min(self.probe_sets, len(model.calibration))])
        out: dict[str, dict[str, float]] = {}
        for i, l in enumerate(model.layers):
            say(f"sensitivity of layer {i + 1}/{len(model.layers)}")
            out[l.name] = {p: 0.0 if p == "fp32" else max(0.0, probe.loss(model.apply({l.name: p}))) for p in cands}
        return out

    def _cost_table(self, model: QuantModel, cands: list[str], ctx, mode: str) -> dict | None:
        if mode != "latency" and not (mode == "min_cosine" and self.objective == "latency"):
            return None
        from .latency_table import layer_latencies

        try:
            return layer_latencies(model.layers, cands, model.config, ctx.target)
        except OptcError as e:
            raise PassError(f"assign-precision: {' '.join(str(e).split())}") from e

    def _options(self, model: QuantModel, cands: list[str], sens, costs, by: str):
        """Per layer, the knapsack options (precision, cost, loss)."""
        out = []
        for l in model.layers:
            opts = []
            for p in cands:
                cost = costs["latency"][(l.name, p)] if by == "latency" else float(model.bytes_at(l, p))
                opts.append((p, cost, sens[l.name][p]))
            out.append(opts)
        return out

    def _plan(self, model: QuantModel, cands, sens, costs, mode: str) -> tuple[dict[str, str], Fidelity, dict[str, Any]]:
        by = "latency" if mode == "latency" or (mode == "min_cosine" and self.objective == "latency") else "size"
        options = self._options(model, cands, sens, costs, by)
        names = [l.name for l in model.layers]
        full = (sum(4.0 * l.params for l in model.layers) if by == "size" else
                sum(costs["latency"][(l.name, "fp32")] for l in model.layers))

        def as_plan(picks):
            return {n: opts[i][0] for n, opts, i in zip(names, options, picks)}

        if mode in ("size", "latency"):
            fraction = self.size or self.latency
            picks = least_loss(options, fraction * full)
            if picks is None:
                cheapest = sum(min(c for _, c, _ in opts) for opts in options) / max(full, 1e-30)
                raise PassError(f"assign-precision: no assignment meets {mode}={fraction} (the cheapest candidates give "
                                f"{cheapest:.3f} of fp32)")
            plan = as_plan(picks)
            fid = model.fidelity(plan)
            cost = sum(o[i][1] for o, i in zip(options, picks))
            return plan, fid, {"budget": fraction, "planned_fraction": round(cost / full, 6),
                               "predicted_loss": round(sum(o[i][2] for o, i in zip(options, picks)), 6)}
        return self._search(model, options, as_plan, full)

    def _search(self, model: QuantModel, options, as_plan, full: float):
        """Bisect the additive loss budget so the *measured* calibration cosine meets min_cosine
        at the least cost; every plan tried is measured."""
        target = 1.0 - self.min_cosine
        tried: list[dict[str, Any]] = []
        seen: dict[tuple, Fidelity] = {}
        best: tuple[dict[str, str], Fidelity, float] | None = None
        lo, hi = 0.0, max(target * 4.0, 1e-6)  # additive budgets: lo known to meet (0 = all fp32-ish), hi maybe not
        budget = target
        for _ in range(SEARCH_STEPS):
            picks = least_cost(options, budget)
            if picks is None:
                lo = budget
                budget = 0.5 * (lo + hi)
                continue
            plan = as_plan(picks)
            key = tuple(sorted(plan.items()))
            fid = seen.get(key) or model.fidelity(plan)
            seen[key] = fid
            cost = sum(o[i][1] for o, i in zip(options, picks))
            tried.append({"loss_budget": round(budget, 6), "cost_fraction": round(cost / full, 6),
                          "mean_cosine": round(fid.mean_cosine, 6)})
            if fid.mean_cosine >= self.min_cosine:
                if best is None or cost < best[2]:
                    best = (plan, fid, cost)
                lo = budget
            else:
                hi = budget
            budget = 0.5 * (lo + hi)
        if best is None:
            safest = as_plan([min(range(len(opts)), key=lambda i: opts[i][2]) for opts in options])
            fid = model.fidelity(safest)
            if fid.mean_cosine < self.min_cosine:
                raise PassError(f"assign-precision: no assignment keeps the calibration mean cosine >= {self.min_cosine} "
                                f"(the most accurate candidates give {fid.mean_cosine:.4f})")
            best = (safest, fid, 0.0)
        return best[0], best[1], {"min_cosine": self.min_cosine, "tried": tried}
