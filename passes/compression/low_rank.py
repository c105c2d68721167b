"""``low-rank``: replace constant weights ``W [m, n]`` by two factors ``A [m, r] · B [r, n]`` where
that saves parameters and FLOPs (r < mn/(m+n)).

    low-rank                              ranks from the tolerance: the smallest r reproducing
                                          each layer's output within 1% (finds exact low rank)
    low-rank{keep=0.8}                    keep 80% of the eligible weights' parameters, ranks
                                          allocated by measured sensitivity
    low-rank{remove_flops=0.2}            remove 20% of the model's FLOPs (calibration shape)
    low-rank{min_cosine=0.98}             the most compression whose calibration mean cosine
                                          stays >= 0.98
    low-rank{keep=0.8,allocation=uniform,method=svd}   the baselines

Factors are activation-aware by default (``factorize``: SVD in the space whitened by the
calibration inputs' second moment); allocation (``rank_allocation``) weighs each layer's own
truncation error by a measured sensitivity: the drop in output cosine when that layer alone is
factored at half its parameters, per unit of its relative output error. Everything is computed on
a copy; the graph changes only at the end, when the plan has been built, verified and measured.
The whitening is fitted to the calibration inputs, so with two sets or more it uses
``fidelity.held_back``'s fit sets and the sensitivities, budgets and the reported fidelity are
measured on the held-back ones (as ``quantize`` and the re-fitting pruners do).

Codegen: both factors are constant weights, so each matmul becomes optc's packed-weight dense
kernel (bias and activation stay in the second one's epilogue). The first one's output width is
the rank, computed in whole weight panels (64 columns on AVX-512), so ranks that are multiples of
the panel width (``quantum=64``) run fastest; see bench/low_rank.py for measured latency.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from ...ir.analysis import bind_dims, summarize
from ...ir.errors import OptcError
from ...ir.graph import Graph
from ...ir.symbolic import Monomial, mul_dims
from ...ir.verifier import verify
from ..base import Pass, PassError, PassResult, option, register_pass
from .activations import input_gram
from .factorize import METHODS, Spectrum, break_even, saves, spectrum, whitener
from .fidelity import Fidelity, SensitivityProbe, held_back, measure, reference_outputs, refuse_ruin
from .low_rank_rewrite import apply_factors
from .projections import Projection, find_projections, name_matches, name_patterns
from .rank_allocation import allocate, menu, uniform

ALLOCATIONS = ("sensitivity", "uniform")
PROBE_KEEP = 0.5  # sensitivity probes factor one layer at this fraction of its parameters
SEARCH_STEPS = 8  # bisection steps of the min_cosine search (keep resolution 2^-8)


@dataclass
class Layer:
    """One eligible projection: its weight's name and shape, and rows per call (FLOP unit)."""

    name: str
    in_features: int
    out_features: int
    input_name: str
    rows: int

    @property
    def params(self) -> int:
        return self.in_features * self.out_features

    def params_at(self, rank: int) -> int:
        return rank * (self.in_features + self.out_features) if rank else self.params


def _rows_per_call(proj: Projection, dims: Mapping[str, int]) -> int:
    shape = proj.input.type.shape
    if shape is None:
        return 1
    m = Monomial.of(mul_dims(list(shape[:-1])))
    if m is None:
        return 1
    value = m.coef
    for s in m.symbols.elements():
        value *= int(dims.get(s, 1))
    return max(int(value), 1)


def eligible_layers(graph: Graph, include: str = "", exclude: str = "", quantum: int = 1,
                    dims: Mapping[str, int] | None = None) -> tuple[list[Layer], dict[str, str]]:
    """The projections low-rank may factor, and why each other one is skipped."""
    inc, exc = name_patterns(include), name_patterns(exclude)
    layers, skipped = [], {}
    projs = find_projections(graph)
    uses: dict[str, int] = {}
    for p in projs:
        uses[p.name] = len(p.weight.uses)
    for p in projs:
        m, n = p.in_features, p.out_features
        if inc and not name_matches(p.name, inc):
            skipped[p.name] = "not included"
        elif exc and name_matches(p.name, exc):
            skipped[p.name] = "excluded"
        elif uses[p.name] > 1 or p.weight in graph.outputs:
            skipped[p.name] = "weight shared"
        elif not saves(m, n, max(quantum, 1)):
            skipped[p.name] = f"too small to save (break-even rank {break_even(m, n):.1f})"
        else:
            layers.append(Layer(p.name, m, n, p.input.name, _rows_per_call(p, dims or {})))
    return layers, skipped


@dataclass
class LowRankModel:
    """What low-rank knows about one graph: its eligible layers, their spectra, and (once
    measured) their sensitivities. Built once, it turns rank choices into factors; the benchmark
    reuses one for several levels."""

    graph: Graph
    layers: list[Layer]
    spectra: dict[str, Spectrum]
    calibration: list[Mapping[str, np.ndarray]]
    sensitivity: dict[str, float] = field(default_factory=dict)
    _reference: list | None = None

    @classmethod
    def build(cls, graph: Graph, layers: list[Layer], calibration: list[Mapping[str, np.ndarray]],
              method: str = "whitened", damping: float = 0.01,
              measure_on: list[Mapping[str, np.ndarray]] | None = None) -> "LowRankModel":
        """Spectra from ``calibration``'s input statistics; sensitivities, searches and fidelities
        measured on ``measure_on`` (default: the same sets)."""
        grams = input_gram(graph, [l.input_name for l in layers], calibration) if calibration else {}
        weights = {p.name: p.matrix() for p in find_projections(graph)}
        spectra, whitening = {}, {}
        for l in layers:
            gram, rows = grams.get(l.input_name, (None, 0))
            if method == "whitened" and gram is not None and l.input_name not in whitening:
                whitening[l.input_name] = whitener(gram, rows, damping)
            spectra[l.name] = spectrum(weights[l.name], method, gram, rows, damping, whitening.get(l.input_name))
        return cls(graph, layers, spectra, list(calibration if measure_on is None else measure_on))

    def reference(self) -> list:
        if self._reference is None:
            self._reference = reference_outputs(self.graph, self.calibration)
        return self._reference

    def factors(self, ranks: Mapping[str, int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: self.spectra[name].factors(r) for name, r in ranks.items() if r}

    def apply(self, ranks: Mapping[str, int], graph: Graph | None = None) -> Graph:
        """A factored copy of the graph (or ``graph`` itself, rewritten in place)."""
        g = self.graph.clone() if graph is None else graph
        apply_factors(g, self.factors(ranks))
        return g

    def fidelity(self, ranks: Mapping[str, int], sets: int | None = None) -> Fidelity:
        """Measured fidelity of the plan on the calibration inputs (the first ``sets`` of them)."""
        n = len(self.calibration) if sets is None else sets
        return measure(self.graph, self.apply(ranks), self.calibration[:n], reference=self.reference()[:n])

    def measure_sensitivity(self, probe_sets: int = 1, quantum: int = 1,
                            say: Callable[[str], None] = lambda _: None) -> dict[str, float]:
        """Per layer: (1 − mean cosine) when it alone is factored at ``PROBE_KEEP`` of its
        parameters (on ``SensitivityProbe``'s rows of the first ``probe_sets`` sets), divided by
        its predicted relative squared output error at that rank."""
        shapes = {l.name: (l.in_features, l.out_features) for l in self.layers}
        ranks = uniform(shapes, PROBE_KEEP, quantum)
        probe = SensitivityProbe(self.graph, self.calibration[:probe_sets])
        for i, l in enumerate(self.layers):
            say(f"sensitivity of layer {i + 1}/{len(self.layers)}")
            r = ranks[l.name] or quantum
            err = self.spectra[l.name].error(r)
            if err <= 0:
                self.sensitivity[l.name] = 0.0
                continue
            self.sensitivity[l.name] = max(probe.loss(self.apply({l.name: r})), 0.0) / err
        return self.sensitivity

    def allocated(self, budget: float, quantum: int = 1, flops: bool = False) -> dict[str, int]:
        """Ranks minimizing the predicted loss with the layers' summed parameters (or FLOPs) at
        most ``budget``."""
        menus = [menu(l.name, l.in_features, l.out_features, self.spectra[l.name].errors(),
                      self.sensitivity.get(l.name, 1.0), quantum, 2.0 * l.rows if flops else 1.0)
                 for l in self.layers]
        return allocate(menus, budget)

    def uniform(self, keep: float, quantum: int = 1) -> dict[str, int]:
        return uniform({l.name: (l.in_features, l.out_features) for l in self.layers}, keep, quantum)

    def within_tolerance(self, tolerance: float, quantum: int = 1) -> dict[str, int]:
        out = {}
        q = max(quantum, 1)
        for l in self.layers:
            r = -(-max(self.spectra[l.name].rank_within(tolerance), 1) // q) * q
            out[l.name] = r if saves(l.in_features, l.out_features, r) else 0
        return out

    def params(self, ranks: Mapping[str, int]) -> int:
        return sum(l.params_at(ranks.get(l.name, 0)) for l in self.layers)

    def flops(self, ranks: Mapping[str, int]) -> int:
        return sum(2 * l.rows * l.params_at(ranks.get(l.name, 0)) for l in self.layers)


@register_pass
@dataclass
class LowRank(Pass):
    """Replace constant weights by two low-rank factors where that saves parameters and FLOPs:
    activation-aware (whitened) or plain SVD, ranks from a tolerance, a parameter/FLOP target
    allocated by measured sensitivity (or uniformly), or an output-fidelity budget."""

    name: ClassVar[str] = "low-rank"
    lossy: ClassVar[bool] = True
    method: str = option("whitened", "whitened (activation-aware, needs calibration) or svd")
    allocation: str = option("sensitivity", "rank per layer: sensitivity (measured) or uniform (same parameter fraction)")
    keep: float = option(1.0, "fraction of the eligible weights' parameters to keep, in (0, 1]; 1 = no target")
    remove_flops: float = option(0.0, "fraction of the model's FLOPs (at the calibration shape) to remove; 0 = no target")
    min_cosine: float = option(0.0, "error budget: smallest calibration mean cosine allowed; searches the most compression within it; 0 = none")
    tolerance: float = option(0.01, "without a target: per layer the smallest rank whose relative output error is within this")
    damping: float = option(0.01, "whitening damping, relative to the mean input variance")
    quantum: int = option(1, "ranks are multiples of this; optc's x86 dense kernel computes the first factor in "
                             "panels of 64 columns (AVX-512; 16 on AVX2), so quantum=64 there wastes nothing")
    include: str = option("", "only weights whose name matches one of these patterns (a|b*; a word matches as a substring)")
    exclude: str = option("pooler|classifier|lm_head", "skip weights whose name matches one of these patterns")
    probe_sets: int = option(1, "calibration input sets the per-layer sensitivity probes draw from, up to "
                                    "about 512 output vectors (fidelity.PROBE_VECTORS: a decoder's first set of "
                                    "windows already gives them)")

    # -- option checks ------------------------------------------------------------------------
    def _mode(self) -> str:
        given = [k for k, on in (("keep", self.keep != 1.0), ("remove_flops", self.remove_flops != 0.0),
                                 ("min_cosine", self.min_cosine != 0.0)) if on]
        if len(given) > 1:
            raise PassError(f"low-rank: give one of keep, remove_flops, min_cosine (got {', '.join(given)})")
        if self.method not in METHODS:
            raise PassError(f"low-rank: method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise PassError(f"low-rank: allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if not 0.0 < self.keep <= 1.0:
            raise PassError(f"low-rank: keep must be in (0, 1], got {self.keep}")
        if not 0.0 <= self.remove_flops < 1.0:
            raise PassError(f"low-rank: remove_flops must be in [0, 1), got {self.remove_flops}")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise PassError(f"low-rank: min_cosine must be in [-1, 1], got {self.min_cosine}")
        if not self.tolerance > 0:
            raise PassError(f"low-rank: tolerance must be > 0, got {self.tolerance}")
        if self.damping < 0 or self.quantum < 1 or self.probe_sets < 1:
            raise PassError("low-rank: damping must be >= 0, quantum and probe_sets >= 1")
        return given[0] if given else "tolerance"

    # -- the pass -------------------------------------------------------------------------------
    def run(self, graph: Graph, ctx) -> PassResult:
        mode = self._mode()
        calib = [dict(c) for c in ctx.calibration]
        if not calib and self.method == "whitened":
            raise PassError("low-rank: the whitened method needs calibration inputs (or use method=svd)")
        if not calib and mode != "tolerance" and (self.allocation == "sensitivity" or mode == "min_cosine"):
            raise PassError(f"low-rank: {mode} with allocation={self.allocation} needs calibration inputs")
        dims = bind_dims(graph, {k: np.shape(v) for k, v in calib[0].items()}) if calib else dict(ctx.dims)
        layers, skipped = eligible_layers(graph, self.include, self.exclude, self.quantum, dims)
        if not layers:
            raise PassError("low-rank: no eligible weights (constant 2-D projections large enough to factor"
                            + (f"; skipped: {_skip_summary(skipped)}" if skipped else "; the graph has none") + ")")
        from ...progress import Progress

        with Progress(f"input statistics and spectra of {len(layers)} projections", prefix=f"{self.name}: ") as progress:
            try:
                # the whitening is fitted to the inputs' statistics: measured on the sets it saw, the
                # result flatters itself, so those are held back (fidelity.held_back) when there are two
                fit, held = held_back(calib) if self.method == "whitened" and len(calib) >= 2 else (calib, calib)
                model = LowRankModel.build(graph, layers, fit, self.method, self.damping, measure_on=held)
                ranks, fid, search = self._plan(model, mode, graph, dims, progress.say)
                factored = model.apply(ranks)
                verify(factored)
            except OptcError as e:
                raise PassError(f"low-rank: {' '.join(str(e).split())}") from e
            except (ValueError, np.linalg.LinAlgError) as e:
                raise PassError(f"low-rank: {' '.join(str(e).split())}") from e
            if fid is None and any(ranks.values()):
                progress.say(f"measuring the factored model ({sum(1 for r in ranks.values() if r)} projections factored)")
                inputs = model.calibration or _random_inputs(graph, ctx)
                fid = measure(graph, factored, inputs)
        source = ("held-back calibration" if model.calibration is not calib else "calibration") if calib else "random"
        if fid is not None and calib:
            refuse_ruin(self.name, fid, source, ctx, "keep more of the weights (keep=...), or set min_cosine=")
        report = self._report(model, ranks, graph, factored, dims, fid, skipped, mode, search, source)
        changed = any(ranks.values())
        if changed:
            model.apply(ranks, graph)  # the same rewrite, now on the graph itself
        return PassResult(changed, report)

    def _plan(self, model: LowRankModel, mode: str, graph: Graph, dims,
              say: Callable[[str], None]) -> tuple[dict[str, int], Fidelity | None, dict]:
        """The rank per layer (0: unchanged), its calibration fidelity when measured, and what the
        search tried."""
        q = self.quantum
        if mode == "tolerance":
            return model.within_tolerance(self.tolerance, q), None, {}
        if self.allocation == "sensitivity":
            model.measure_sensitivity(min(self.probe_sets, len(model.calibration)), q, say)
        full = model.params({})
        floor = sum(l.params_at(q) for l in model.layers)
        if mode == "keep":
            if floor > self.keep * full:
                raise PassError(f"low-rank: keep={self.keep} is below the smallest factorization "
                                f"(rank {q} everywhere keeps {floor / full:.4f} of the parameters)")
            return self._at_keep(model, self.keep), None, {}
        if mode == "remove_flops":
            return self._flops_target(model, graph, dims), None, {}
        say(f"searching the most compression with calibration mean cosine >= {self.min_cosine}")
        return self._search(model)

    def _at_keep(self, model: LowRankModel, keep: float) -> dict[str, int]:
        if self.allocation == "uniform":
            return model.uniform(keep, self.quantum)
        return model.allocated(keep * model.params({}), self.quantum)

    def _flops_target(self, model: LowRankModel, graph: Graph, dims) -> dict[str, int]:
        total = summarize(graph).flops.evaluate(dims)
        full = model.flops({})
        budget = full - self.remove_flops * total
        least = sum(2 * l.rows * l.params_at(self.quantum) for l in model.layers)
        if budget < least:
            raise PassError(f"low-rank: removing {self.remove_flops:.0%} of the FLOPs is more than factoring can "
                            f"(at most {(full - least) / max(total, 1):.1%} at rank {self.quantum} everywhere)")
        if self.allocation == "sensitivity":
            return model.allocated(budget, self.quantum, flops=True)
        lo, hi = 0.0, 1.0  # uniform: the largest keep that meets the FLOP target
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            if model.flops(model.uniform(mid, self.quantum)) <= budget:
                lo = mid
            else:
                hi = mid
        return model.uniform(lo, self.quantum)

    def _search(self, model: LowRankModel) -> tuple[dict[str, int], Fidelity, dict]:
        """Bisect the kept fraction for the most compression whose calibration mean cosine is at
        least ``min_cosine``; every candidate is measured, and the answer is one of them."""
        full = model.params({})
        lo = sum(l.params_at(self.quantum) for l in model.layers) / full
        hi = 1.0
        best: tuple[dict[str, int], Fidelity] | None = None
        tried: list[dict[str, Any]] = []
        seen: dict[tuple, Fidelity] = {}
        for step in range(SEARCH_STEPS + 1):
            keep = lo if step == 0 else 0.5 * (lo + hi)
            ranks = self._at_keep(model, keep)
            key = tuple(sorted(ranks.items()))
            if not any(ranks.values()):
                hi = keep
                continue
            fid = seen.get(key) or model.fidelity(ranks)
            seen[key] = fid
            tried.append({"keep": round(keep, 4), "kept": round(model.params(ranks) / full, 4),
                          "mean_cosine": round(fid.mean_cosine, 6)})
            if fid.mean_cosine >= self.min_cosine:
                best = (ranks, fid) if best is None or model.params(ranks) < model.params(best[0]) else best
                hi = keep
                if step == 0:
                    break
            else:
                lo = keep
        if best is None:
            mildest = max(tried, key=lambda t: t["kept"]) if tried else None
            got = f"; the mildest tried (keeping {mildest['kept']:.1%}) gave {mildest['mean_cosine']:.4f}" if mildest else ""
            raise PassError(f"low-rank: no factorization keeps the calibration mean cosine >= {self.min_cosine}{got}")
        return best[0], best[1], {"tried": tried}

    # -- the report -----------------------------------------------------------------------------
    def _report(self, model: LowRankModel, ranks, graph: Graph, factored: Graph, dims, fid: Fidelity | None,
                skipped: dict[str, str], mode: str, search: dict, inputs: str) -> dict[str, Any]:
        before, after = summarize(graph), summarize(factored)
        all_linear = sum(p.weight.const.size for p in find_projections(graph))
        layers = []
        for l in model.layers:
            r = ranks.get(l.name, 0)
            entry = {"name": l.name, "shape": [l.in_features, l.out_features], "rank": r or None,
                     "break_even": round(break_even(l.in_features, l.out_features), 1),
                     "params_before": l.params, "params_after": l.params_at(r),
                     "output_error": round(float(np.sqrt(model.spectra[l.name].error(r))), 6) if r else 0.0}
            if l.name in model.sensitivity:
                entry["sensitivity"] = round(model.sensitivity[l.name], 6)
            layers.append(entry)
        kept = model.params(ranks)
        removed = model.params({}) - kept
        report: dict[str, Any] = {
            "mode": mode, "method": self.method, "allocation": self.allocation if mode != "tolerance" else None,
            "factored": sum(1 for r in ranks.values() if r),
            "eligible": len(model.layers),
            "linear_params": {"eligible_before": model.params({}), "eligible_after": kept,
                              "eligible_kept": round(kept / model.params({}), 6),
                              "all_before": int(all_linear), "all_after": int(all_linear - removed),
                              "all_kept": round((all_linear - removed) / max(all_linear, 1), 6)},
            "params": {"before": before.params, "after": after.params},
            "flops": {"before": before.flops.evaluate(dims), "after": after.flops.evaluate(dims),
                      "projections_before": model.flops({}), "projections_after": model.flops(ranks),
                      "dims": dict(dims)},
            "layers": layers,
        }
        if skipped:
            report["skipped"] = skipped
        if fid is not None:
            report["fidelity"] = {**fid.as_dict(), "inputs": inputs}
        if search:
            report["search"] = search
        return report


def _random_inputs(graph: Graph, ctx) -> list[dict[str, np.ndarray]]:
    """Without calibration data: the context's random inputs, with attention masks all ones (a
    random 0/1 mask can hide every position, and the comparison of masked means with it)."""
    sets = ctx.sample_inputs(graph)
    for feed in sets:
        for name, x in feed.items():
            if "mask" in name.lower() and np.issubdtype(np.asarray(x).dtype, np.integer):
                feed[name] = np.ones_like(x)
    return sets


def _skip_summary(skipped: dict[str, str]) -> str:
    reasons: dict[str, int] = {}
    for why in skipped.values():
        reasons[why.split(" (")[0]] = reasons.get(why.split(" (")[0], 0) + 1
    return ", ".join(f"{n} {why}" for why, n in reasons.items())
