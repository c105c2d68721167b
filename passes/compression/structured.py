"""Structured pruning machinery shared by ``prune-heads`` and ``prune-ffn``.

A *site* is one prunable block: ``units`` (attention heads, FFN neurons) whose outputs can be
multiplied by a 0/1 mask at ``mask_value`` along ``mask_axis``, removed in ``groups`` (a GQA
KV group's query heads go together), followed by the projection ``refit`` that reads them
(output / down projection, ``rows_per_unit`` input rows per unit). A *compensation* site has no
groups: nothing is removed there, its projection is only re-fitted to restore the unpruned
model's block outputs (e.g. the FFN after a pruned attention block).

Everything before the physical rewrite runs on a *probe*: a clone of the graph with a mask
multiply after each site and private copies of the refit weights, evaluated with
``Interpreter.run_torch`` and constant overrides (masks, re-fitted weights). So selection, scores
and re-fits cost forward/backward passes, never graph surgery; the pass rewrites the real graph
once at the end and checks it reproduces the probe.

Importance:
- ``fisher``: the Gauss-Newton (Fisher) estimate of how much removing a group changes the
  model's unit output vectors (mask-mean-pooled hidden states, L2-normalized):
  ``ΔL ≈ g·δ + |J δ|²`` (δ = -1 on the group's mask) with the gradient ``g`` of the current output error and ``|J δ|²``
  from random projections of the output (per sentence), taken from the gradient at the mask
  multiply. Re-scored after every removal step, on the re-fitted model, so interactions count;
  the best-scored candidates of each step (``shortlist`` x the step's count) are then ranked
  by their measured effect on the calibration cosine — fisher nominates on half the fit sets,
  the shortlist is measured on the other half, each within ``SHORTLIST_VECTORS`` output vectors
  (``nominating``, ``measuring``).
- ``magnitude``: the weight norms of the unit's input columns times its output rows.
- ``ablation``: the measured output error with the group alone removed (one forward each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ...ir.graph import Graph, Value
from ...ir.folding import eliminate_dead_code
from ...ir.interpreter import Interpreter
from .fidelity import held_back
from .projections import Projection, replace_weight


@dataclass
class Site:
    name: str
    units: int
    groups: list[list[int]]
    mask_value: Value
    mask_axis: int
    refit: Projection
    rows_per_unit: int
    magnitude: np.ndarray  # [units]
    residual: Value | None = None
    block_output: Value | None = None


@dataclass
class State:
    """Which groups are removed, and the re-fitted (weight ``[in, out]``, bias) of each site's
    projection (rows of removed units are zero; None: the original weights)."""

    removed: list[set[int]]
    refits: list[tuple[np.ndarray, np.ndarray | None] | None]

    def copy(self) -> "State":
        return State([set(r) for r in self.removed], list(self.refits))

    def kept_units(self, sites: list[Site], i: int) -> list[int]:
        gone = {u for g in self.removed[i] for u in sites[i].groups[g]}
        return [u for u in range(sites[i].units) if u not in gone]


def pooled(out: torch.Tensor, feed: Mapping[str, np.ndarray], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Output vectors as in ``fidelity.output_vectors``: mask-mean over the sequence for
    ``[batch, seq, hidden]`` with a mask input, else the rows. In float32: a decoder's rows are
    its logits (1024 x 49152 per set of SmolLM2 windows), where a float64 copy and cosine cost
    0.6-1.1 s against 0.1 s — a third of a forward pass, for every candidate measured — and
    float32 cosines of such rows agree with float64 to ~1e-6."""
    o = out.to(dtype)
    if o.dim() == 3:
        for name, x in feed.items():
            if "mask" in name.lower() and np.ndim(x) == 2 and tuple(np.shape(x)) == tuple(o.shape[:2]):
                w = torch.as_tensor(np.asarray(x), dtype=dtype)[:, :, None]
                return (o * w).sum(1) / w.sum(1).clamp_min(1e-9)
    return o.reshape(-1, o.shape[-1])


class Probe:
    """The graph with a mask multiply after every site, run through ``run_torch``.

    ``fit``: the input sets importance and re-fits are computed on; the others (``held``) are
    what selection is measured on — a re-fit measured on its own data flatters itself (MiniLM,
    40% of the heads re-fitted on 256 sentences: 0.996 there, 0.968 on other articles).
    ``hold_back``: ``fidelity.held_back``'s split (every fourth set held; one set is both);
    else every set is both (nothing is fitted: magnitude ranking without re-fit)."""

    def __init__(self, graph: Graph, sites_of: Callable[[Graph], list[Site]], input_sets: list[Mapping[str, np.ndarray]],
                 compensation_of: Callable[[Graph], list[Site]] | None = None, hold_back: bool = True):
        self.graph = graph.clone()
        self.sites = sites_of(self.graph)
        self.pruned = len(self.sites)  # sites[pruned:] only re-fit (no groups): compensation
        if compensation_of is not None:
            self.sites += [replace(s, groups=[]) for s in compensation_of(self.graph)]
        self.inputs = input_sets
        self.fit, self.held = fit_and_held(len(input_sets)) if hold_back else ([*range(len(input_sets))],) * 2
        self.torch_inputs = [{k: torch.as_tensor(np.asarray(v)) for k, v in feed.items()} for feed in input_sets]
        self.output_name = self.graph.outputs[0].name
        self.mask_names, self.weight_names, self.bias_names, self.masked = [], [], [], []
        for i, s in enumerate(self.sites):
            p = replace_weight(self.graph, s.refit, s.refit.matrix(), s.refit.bias_vector())  # private copies
            s.refit = p
            self.weight_names.append(p.weight.name)
            self.bias_names.append(p.bias.name if p.bias is not None else None)
            rank = len(s.mask_value.shape)
            shape = [1] * rank
            shape[s.mask_axis] = s.units
            m = self.graph.add_constant(np.ones(shape, np.float32), self.graph.unique_name(f"prune_mask_{i}"))
            uses = list(s.mask_value.uses)
            mul = self.graph.add_node("Mul", [s.mask_value, m], after=s.mask_value.producer)
            for n, k in uses:
                n.set_input(k, mul.output)
            self.mask_names.append(m.name)
            self.masked.append(mul.output.name)
        self.run = Interpreter(self.graph, check_types=False)
        self._prefixes: dict[tuple[str, ...], Interpreter] = {}
        self._suffixes: dict[int, tuple[Interpreter, dict[str, str]]] = {}

    def overrides(self, state: State) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, s in enumerate(self.sites):
            shape = [1] * len(s.mask_value.shape)
            shape[s.mask_axis] = s.units
            m = np.ones(s.units, np.float32)
            kept = state.kept_units(self.sites, i)
            if len(kept) < s.units:
                m[:] = 0
                m[kept] = 1
                out[self.mask_names[i]] = torch.from_numpy(m.reshape(shape))
            fit = state.refits[i]
            if fit is not None:
                w = fit[0].T if s.refit.transposed else fit[0]
                out[self.weight_names[i]] = torch.from_numpy(np.ascontiguousarray(w))
                if self.bias_names[i] is not None and fit[1] is not None:
                    shape_b = s.refit.bias.const.shape
                    out[self.bias_names[i]] = torch.from_numpy(fit[1].astype(np.float32).reshape(shape_b))
        return out

    def with_outputs(self, names: list[str]) -> None:
        """Make ``names`` (internal values) extra outputs of the probe."""
        want = [n for n in names if n not in self.graph.output_names()]
        if want:
            self.graph.set_outputs(list(self.graph.outputs) + [self.graph.value(n) for n in want])
            self.run = Interpreter(self.graph, check_types=False)

    def prefix(self, names: tuple[str, ...]) -> Interpreter:
        """An interpreter of only the part of the probe that computes ``names`` (cached): what a
        re-fit of an early site needs, without running the rest of the model."""
        run = self._prefixes.get(names)
        if run is None:
            g = self.graph.clone()
            g.set_outputs([g.value(n) for n in names])
            eliminate_dead_code(g)
            run = self._prefixes[names] = Interpreter(g, check_types=False)
        return run

    def suffix(self, site: int) -> tuple[Interpreter, dict[str, str]]:
        """The part of the probe that site ``site``'s mask reaches (cached), and the values it
        reads from before the mask: ``{value name: its input name in the suffix}``. A candidate
        that changes only this mask re-runs only this part on those values — the layers before
        it compute what they computed for the state the candidate starts from."""
        hit = self._suffixes.get(site)
        if hit is None:
            g = self.graph.clone()
            mask = g.constants[self.mask_names[site]]
            reached: set = set()
            for n in g.nodes:  # topological order: producers first
                if any(v is mask or (v is not None and v.producer in reached) for v in n.inputs):
                    reached.add(n)
            boundary = {v.name: v for n in reached for v in n.inputs
                        if v is not None and v.producer is not None and v.producer not in reached}
            g.set_outputs([g.value(self.output_name)])
            names = {}
            for name, v in boundary.items():
                new = g.add_input(g.unique_name(name + "_upstream"), v.type)
                names[name] = new.name
                for n, k in list(v.uses):
                    if n in reached:
                        n.set_input(k, new)
            eliminate_dead_code(g)
            hit = self._suffixes[site] = (Interpreter(g, check_types=False), names)
        return hit

    def forward(self, state: State, batch: int, grad: bool = False,
                only: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Run the probe in ``state`` on input set ``batch``; ``only``: just compute these values."""
        ov = self.overrides(state)
        if only is not None:
            run = self.prefix(only)
            with torch.no_grad():
                return run.run_torch(self.torch_inputs[batch], {k: v for k, v in ov.items() if k in run.graph.constants})
        if grad:  # masks that require grad make autograd record the whole run
            for i, s in enumerate(self.sites):
                m = ov.get(self.mask_names[i])
                m = torch.from_numpy(self.graph.constants[self.mask_names[i]].const.copy()) if m is None else m.clone()
                ov[self.mask_names[i]] = m.requires_grad_(True)
            return self.run.run_torch(self.torch_inputs[batch], constants=ov)
        with torch.no_grad():
            return self.run.run_torch(self.torch_inputs[batch], constants=ov)


def unit_rows(units: list[int], per: int) -> list[int]:
    return [u * per + d for u in units for d in range(per)]


# -- fidelity on the probe ------------------------------------------------------------------
def cosines(vec: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return ((vec * ref).sum(-1) / (vec.norm(dim=-1) * ref.norm(dim=-1)).clamp_min(1e-30)).double()


class Evaluator:
    """Reference output vectors of the unpruned model, and the mean cosine of a state."""

    def __init__(self, probe: Probe, ref: list[torch.Tensor] | None = None):
        self.probe = probe
        if ref is None:
            base = State([set() for _ in probe.sites], [None] * len(probe.sites))
            ref = [pooled(probe.forward(base, b)[probe.output_name], probe.inputs[b]) for b in range(len(probe.inputs))]
        self.ref = ref

    def upstream(self, state: State, sites: list[int], batches: list[int]) -> dict[int, dict[str, torch.Tensor]]:
        """Per batch, the values the suffixes of ``sites`` read, from one run of ``state``."""
        names = sorted({n for i in sites for n in self.probe.suffix(i)[1]})
        return {b: self.probe.forward(state, b, only=tuple(names)) for b in batches}

    def trial_cosines(self, state: State, site: int, trials: list[State], batches: list[int],
                      upstream: dict[int, dict[str, torch.Tensor]] | None = None) -> list[float]:
        """Mean cosine on ``batches`` of each trial state, every one of which differs from
        ``state`` only in site ``site``'s removed groups: the layers before the site run once
        per batch (``upstream``, shareable between sites), each trial runs the rest
        (``Probe.suffix``); the same numbers as ``cosine``."""
        run, names = self.probe.suffix(site)
        upstream = upstream or self.upstream(state, [site], batches)
        out = []
        for trial in trials:
            ov = {k: v for k, v in self.probe.overrides(trial).items() if k in run.graph.constants}
            cos = []
            for b in batches:
                feed = dict(self.probe.torch_inputs[b])
                feed.update({names[n]: upstream[b][n] for n in names})
                with torch.no_grad():
                    y = run.run_torch(feed, ov)[self.probe.output_name]
                cos.append(cosines(pooled(y, self.probe.inputs[b]), self.ref[b]))
            out.append(float(torch.cat(cos).mean()))
        return out

    def cosine(self, state: State, batches: list[int] | None = None) -> tuple[float, float]:
        """(mean, worst) cosine on ``batches`` (default: the held-back sets, where budgets are
        measured)."""
        which = self.probe.held if batches is None else batches
        cos = torch.cat([cosines(pooled(self.probe.forward(state, b)[self.probe.output_name], self.probe.inputs[b]), self.ref[b])
                         for b in which])
        return float(cos.mean()), float(cos.min())


# -- importance ----------------------------------------------------------------------------
def _per_sample(grad: torch.Tensor, value: torch.Tensor, axis: int, batch: int) -> torch.Tensor:
    """Σ over everything but the sample and unit axes of grad·value: the gradient with respect
    to a per-sample unit mask, ``[batch, units]``."""
    t = (grad * value).double()
    axis = axis % t.dim()
    t = t.movedim(axis, -1)
    return t.reshape(batch, -1, t.shape[-1]).sum(1)


def fisher_scores(probe: Probe, ev: Evaluator, state: State, projections: int = 2, seed: int = 0,
                  batches: list[int] | None = None) -> list[np.ndarray]:
    """Per site and group: the predicted increase of Σ |p̂ - p̂₀|² (unit output vectors, so
    2·(1 - cosine)) when the group goes, summed over input sets ``batches`` (default: the fit
    sets)."""
    probe.with_outputs(probe.masked)
    gen = torch.Generator().manual_seed(seed)
    scores = [np.zeros(len(s.groups)) for s in probe.sites]
    for b in probe.fit if batches is None else batches:
        outs = probe.forward(state, b, grad=True)
        ys = [outs[n] for n in probe.masked]
        for y in ys:
            if not y.requires_grad:
                y.requires_grad_(True)
        # unit output vectors: |p̂ - p̂₀|² = 2 (1 - cosine), the fidelity measure itself. Each
        # objective is Σ d·p̂ for a direction d (2 (p̂ - p̂₀), then random projections): its
        # gradient at the pooled output is written out, and autograd starts there. On a
        # decoder's logits (1024 x 49152 per set) autograd through the normalisation, or any
        # float64 pass over them, cost more than the backward through the model; the gradient
        # reaches the model in float32 either way.
        p = pooled(outs[probe.output_name], probe.inputs[b])
        batch = p.shape[0]
        with torch.no_grad():
            norm = p.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            unit = p / norm
            ref = ev.ref[b] / ev.ref[b].norm(dim=-1, keepdim=True).clamp_min(1e-30)
            directions = [2 * (unit - ref)]
            directions += [torch.randn(p.shape, generator=gen) for _ in range(projections)]
        per = []
        for k, d in enumerate(directions):
            with torch.no_grad():
                d = (d - unit * (unit * d).sum(-1, keepdim=True)) / norm  # through p̂ = p / |p|
            grads = torch.autograd.grad(p, ys, grad_outputs=d, retain_graph=k + 1 < len(directions), allow_unused=True)
            del d
            per.append([None if g is None else _per_sample(g, y.detach(), s.mask_axis, batch)
                        for g, y, s in zip(grads, ys, probe.sites)])
        for i, s in enumerate(probe.sites):
            if per[0][i] is None:
                continue
            m = membership(s)
            first = (per[0][i] @ m).sum(0)
            gn = sum(((per[k][i] @ m) ** 2).sum(0) for k in range(1, len(per))) / max(projections, 1)
            scores[i] += (gn - first).numpy()
    return scores


def membership(site: Site) -> torch.Tensor:
    """``[units, groups]`` 0/1: which group each unit belongs to."""
    m = torch.zeros(site.units, len(site.groups), dtype=torch.float64)
    for g, units in enumerate(site.groups):
        m[units, g] = 1.0
    return m


def magnitude_scores(sites: list[Site]) -> list[np.ndarray]:
    return [np.array([float(s.magnitude[g].sum()) for g in s.groups]) for s in sites]


def ablation_scores(probe: Probe, ev: Evaluator, state: State) -> list[np.ndarray]:
    """1 - mean cosine with each group removed alone (on top of ``state``)."""
    out = []
    for i, s in enumerate(probe.sites):
        sc = np.full(len(s.groups), np.inf)
        for gi in range(len(s.groups)):
            if gi in state.removed[i]:
                continue
            trial = state.copy()
            trial.removed[i].add(gi)
            sc[gi] = 1.0 - ev.cosine(trial, probe.fit)[0]
        out.append(sc)
    return out


def row_weights(feed: Mapping[str, np.ndarray], rows: int) -> np.ndarray | None:
    """Which of ``rows`` activation rows (batch-major tokens) are real tokens, from the
    attention-mask input; None when there is no matching mask."""
    for name, x in feed.items():
        if "mask" in name.lower() and np.ndim(x) == 2 and np.size(x) == rows:
            return np.asarray(x).reshape(-1) > 0
    return None


# -- re-fit --------------------------------------------------------------------------------
def refit(probe: Probe, state: State, targets: list[list[np.ndarray]] | None, ridge: float) -> None:
    """Least-squares re-fit of each site's projection on the kept units' inputs, ridge-
    regularized towards the original weights: ``min |[X 1][W; b] - T|² + λ|W - W₀|²`` with
    λ = ``ridge`` · mean diag(XᵀX).

    ``targets`` None (local): each projection reproduces what all its units would give on the
    current inputs; the sites are independent, so one forward pass fits them all. With
    ``targets`` (the unpruned model's block outputs) each site also undoes the drift of the
    residual stream; that depends on the fits before it, so the sites are fitted one at a time
    in graph order, each on the inputs the earlier fits produce."""
    names = [s.refit.input.name for s in probe.sites] + [s.mask_value.name for s in probe.sites]
    if targets is not None:
        names += [s.residual.name for s in probe.sites if s.residual is not None]
    probe.with_outputs(names)
    if targets is None:  # compensation sites have nothing to restore locally
        _fit_sites(probe, state, None, ridge, range(probe.pruned))
        return
    order = {n.name: k for k, n in enumerate(probe.graph.nodes)}
    walk = InOrder(probe, state)
    for i in sorted(range(len(probe.sites)), key=lambda i: order[probe.sites[i].refit.node.name]):
        s = probe.sites[i]
        need = (s.refit.input.name,) + ((s.residual.name,) if s.residual is not None else ())
        _fit_sites(probe, state, targets, ridge, [i], values=lambda b, need=need: walk.values(b, need))


class InOrder:
    """Values of the probe computed site by site, in graph order, each node once per input set.

    The in-order re-fit needs, for each site, its projection's input and residual as the fits
    before it leave them. Running the probe from its inputs for every site costs a forward pass
    per site (quadratic in depth: SmolLM2's final re-fit took minutes). A value upstream of a
    site's projection does not change when that projection is re-fitted, and the sites are
    visited in graph order, so each step runs only the nodes no earlier step ran, from the
    values earlier steps kept where the run stopped (dropped once nothing left reads them)."""

    def __init__(self, probe: Probe, state: State):
        self.probe, self.state = probe, state
        self.done: set[str] = set()  # nodes already run (for every fit set)
        self.env = {b: dict(probe.torch_inputs[b]) for b in probe.fit}
        self.step: tuple[str, ...] | None = None

    def values(self, batch: int, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if names != self.step:
            self._run(names)
            self.step = names
        return {n: self.env[batch][n] for n in names}

    def _run(self, names: tuple[str, ...]) -> None:
        g = self.probe.graph.clone()
        todo, stack = set(), [g.value(n).producer for n in names]
        while stack:  # the ancestors of ``names`` not run yet
            n = stack.pop()
            if n is None or n.name in self.done or n in todo:
                continue
            todo.add(n)
            stack.extend(v.producer for v in n.inputs if v is not None)
        if not todo:
            return
        kept = {}  # value computed by an earlier step -> the segment's input standing for it
        for n in [n for n in g.nodes if n in todo]:
            for k, v in enumerate(n.inputs):
                if v is not None and v.producer is not None and v.producer not in todo:
                    if v.name not in kept:
                        kept[v.name] = g.add_input(g.unique_name(v.name + "_kept"), v.type)
                    n.set_input(k, kept[v.name])
        ran = {n.name for n in todo}
        wanted = [v for n in todo for v in n.outputs
                  if v.name in names or v in g.outputs or any(u.name not in ran for u, _ in v.uses)]
        g.set_outputs(wanted)
        eliminate_dead_code(g)
        run = Interpreter(g, check_types=False)
        ov = self.probe.overrides(self.state)
        consts = {k: v for k, v in ov.items() if k in g.constants}
        stand_in = {v.name: name for name, v in kept.items()}
        for b, env in self.env.items():
            feed = {v.name: env[stand_in.get(v.name, v.name)] for v in g.inputs}
            with torch.no_grad():
                env.update(run.run_torch(feed, consts))
        self.done |= ran
        full = self.probe.graph
        for env in self.env.values():  # keep only what a node not run yet reads
            for name in [k for k in env if k not in names]:
                v = full.value(name)
                if v.producer is not None and v not in full.outputs and all(u.name in self.done for u, _ in v.uses):
                    del env[name]


def _fit_sites(probe: Probe, state: State, targets, ridge: float, which, values=None) -> None:
    """One pass over the calibration set gathering XᵀX, XᵀT of the sites ``which`` (``values``:
    ``(batch) -> the values needed``, else the whole probe runs), then solve."""
    stats, rows_of = {}, {}
    for i in which:
        s = probe.sites[i]
        rows_of[i] = unit_rows(state.kept_units(probe.sites, i), s.rows_per_unit)
        n = len(rows_of[i]) + int(s.refit.bias is not None)
        stats[i] = [np.zeros((n, n)), np.zeros((n, s.refit.out_features))]
    for b in probe.fit:
        outs = values(b) if values is not None else probe.forward(state, b)
        for i in which:
            s = probe.sites[i]
            x = outs[s.refit.input.name].double().numpy()
            x = x.reshape(-1, x.shape[-1])[:, rows_of[i]]
            if targets is None:  # local: what all units would give on the current inputs
                full = unit_inputs(s, outs[s.mask_value.name])
                t = full @ s.refit.matrix().astype(np.float64)
                if s.refit.bias is not None:
                    t = t + s.refit.bias_vector().astype(np.float64)
            else:
                t = targets[i][b]
                if s.residual is not None:
                    t = t - outs[s.residual.name].double().numpy().reshape(t.shape)
            w = row_weights(probe.inputs[b], x.shape[0])
            if w is not None:
                x, t = x[w], t[w]
            if s.refit.bias is not None:
                x = np.concatenate([x, np.ones((x.shape[0], 1))], 1)
            stats[i][0] += x.T @ x
            stats[i][1] += x.T @ t
    for i in which:
        s = probe.sites[i]
        xtx, xty = stats[i]
        rows = rows_of[i]
        k, n = len(rows), xtx.shape[0]
        lam = ridge * (float(np.mean(np.diag(xtx)[:k])) if k else 0.0)
        reg = np.zeros(n)
        reg[:k] = lam
        prior = np.zeros((n, s.refit.out_features))
        prior[:k] = s.refit.matrix().astype(np.float64)[rows]
        sol = np.linalg.solve(xtx + np.diag(reg) + 1e-9 * np.eye(n), xty + reg[:, None] * prior)
        w_full = np.zeros((s.refit.in_features, s.refit.out_features), np.float32)
        w_full[rows] = sol[:k]
        state.refits[i] = (w_full, sol[k].astype(np.float32) if n > k else None)


def fit_and_held(count: int) -> tuple[list[int], list[int]]:
    """Indices of ``fidelity.held_back``'s (fit, held-back) sets among ``count``; one set is both."""
    if count < 2:
        return list(range(count)), list(range(count))
    fit, held = held_back(list(range(count)))
    return fit, held


def unit_inputs(site: Site, value: torch.Tensor) -> np.ndarray:
    """The unmasked value at a site as the refit projection's input rows ``[tokens, units *
    rows_per_unit]`` (heads: ``[.., heads, .., dim]`` with the heads moved next to the dim)."""
    t = value.detach().double()
    if site.rows_per_unit > 1:
        t = t.movedim(site.mask_axis % t.dim(), -2)
    return t.reshape(-1, site.units * site.rows_per_unit).numpy()


def refit_targets(probe: Probe) -> list[list[np.ndarray]]:
    """Per site and batch: the unpruned projection output (plus the unpruned residual, when the
    site's output is added to one), as float64 rows — what a re-fit should reproduce."""
    return reference_run(probe, targets=True)[1]


def reference_run(probe: Probe, targets: bool) -> tuple[Evaluator, list[list[np.ndarray]] | None]:
    """The unpruned probe, once per input set: the reference output vectors (``Evaluator``) and,
    with ``targets``, the re-fit targets (``refit_targets``) of the same run (on SmolLM2 each
    run of 64 windows costs half a minute)."""
    if targets:
        probe.with_outputs([s.refit.output.name for s in probe.sites] +
                           [s.residual.name for s in probe.sites if s.residual is not None])
    base = State([set() for _ in probe.sites], [None] * len(probe.sites))
    ref: list[torch.Tensor] = []
    out: list[list[np.ndarray]] = [[] for _ in probe.sites]
    for b in range(len(probe.inputs)):
        outs = probe.forward(base, b)
        ref.append(pooled(outs[probe.output_name], probe.inputs[b]))
        for i, s in enumerate(probe.sites if targets else ()):
            y = outs[s.refit.output.name].double().numpy()
            y = y.reshape(-1, y.shape[-1])
            if s.residual is not None:
                y = y + outs[s.residual.name].double().numpy().reshape(y.shape)
            out[i].append(y)
    return Evaluator(probe, ref), (out if targets else None)


# -- selection -----------------------------------------------------------------------------
@dataclass
class Plan:
    importance: str = "fisher"
    steps: int = 4
    refit: bool = True
    ridge: float = 0.1
    projections: int = 1
    shortlist: int = 2
    seed: int = 0
    log: list[dict] = field(default_factory=list)
    progress: Any = None  # an optc.progress.Progress (prefixed with the pass) that says which round runs

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.say(text)


def score(plan: Plan, probe: Probe, ev: Evaluator, state: State) -> list[np.ndarray]:
    if plan.importance == "fisher":
        return fisher_scores(probe, ev, state, plan.projections, plan.seed + len(plan.log),
                             nominating(ev) if plan.shortlist > 1 else None)
    if plan.importance == "magnitude":
        return magnitude_scores(probe.sites)
    if plan.importance == "ablation":
        return ablation_scores(probe, ev, state)
    raise ValueError(plan.importance)


def measured(probe: Probe, ev: Evaluator, state: State, scores: list[np.ndarray], count: int,
             quota: list[int] | None) -> list[np.ndarray]:
    """Re-rank the ``count`` best-scored remaining groups by their measured effect: the
    calibration loss (1 - mean cosine, on the ``measuring`` sets) with each removed on top of
    ``state``; every other group ranks after them."""
    cands = sorted((float(v), i, g) for i, sc in enumerate(scores) for g, v in enumerate(sc)
                   if g not in state.removed[i] and (quota is None or quota[i] > 0))[:count]
    batches = measuring(ev)
    out = [np.full(len(sc), np.inf) for sc in scores]
    by_site: dict[int, list[int]] = {}
    for _, i, g in cands:
        by_site.setdefault(i, []).append(g)
    upstream = ev.upstream(state, list(by_site), batches)  # one run serves every site's candidates
    for i, groups in by_site.items():
        trials = []
        for g in groups:
            trial = state.copy()
            trial.removed[i].add(g)
            trials.append(trial)
        for g, cos in zip(groups, ev.trial_cosines(state, i, trials, batches, upstream)):
            out[i][g] = 1.0 - cos
    return out


# Output vectors a shortlist is nominated or measured on, at most: the mean cosine over 2,048
# vectors resolves the differences between candidates (1e-4 and up), and a decoder's set of
# windows holds 1,024 (one per token), an encoder's set of sentences a few dozen — so the budget
# binds on decoders only (SmolLM2, 8 sets of 8 windows of 128: two sets each, not three).
SHORTLIST_VECTORS = 2048


def measuring(ev: Evaluator) -> list[int]:
    """The fit sets a shortlist is measured on: every other one (a mixed calibration set stays
    mixed), within ``SHORTLIST_VECTORS``."""
    return within_budget(ev, ev.probe.fit[::2])


def nominating(ev: Evaluator) -> list[int]:
    """The fit sets fisher draws the shortlist from when one is measured: the others (within the
    same budget), so a candidate is not measured on the data that nominated it (with one fit
    set, i.e. two calibration sets or fewer, that set does both)."""
    probe = ev.probe
    return within_budget(ev, probe.fit[1::2] or probe.fit)


def within_budget(ev: Evaluator, sets: list[int]) -> list[int]:
    """Evenly spaced ``sets`` holding about ``SHORTLIST_VECTORS`` output vectors (all of them
    when they hold fewer)."""
    rows = float(np.mean([ev.ref[b].shape[0] for b in sets])) if sets else 1.0
    k = math.ceil(SHORTLIST_VECTORS / max(rows, 1.0))
    if k >= len(sets):
        return list(sets)
    return [sets[j] for j in sorted({round(x) for x in np.linspace(0, len(sets) - 1, k)})]


def remove_lowest(state: State, scores: list[np.ndarray], count: int, quota: list[int] | None) -> int:
    """Remove the ``count`` lowest-scored remaining groups (within per-site ``quota`` when
    given); returns how many were removed."""
    cands = []
    for i, sc in enumerate(scores):
        for g, v in enumerate(sc):
            if g not in state.removed[i]:
                cands.append((float(v), i, g))
    cands.sort()
    done = 0
    for _, i, g in cands:
        if done >= count:
            break
        if quota is not None and quota[i] <= 0:
            continue
        state.removed[i].add(g)
        if quota is not None:
            quota[i] -= 1
        done += 1
    return done


def prune_to_count(plan: Plan, probe: Probe, ev: Evaluator, targets, total: int,
                   quota: list[int] | None = None) -> State:
    """Remove ``total`` groups in ``plan.steps`` rounds, re-scoring (and re-fitting) after each."""
    state = State([set() for _ in probe.sites], [None] * len(probe.sites))
    steps = max(1, min(plan.steps, total)) if plan.importance != "magnitude" else 1
    removed = 0
    for k in range(steps):
        want = math.ceil((total - removed) / (steps - k))
        head = f"round {k + 1}/{steps} ({removed}/{total} removed)"
        plan.say(f"{head}: scoring by {plan.importance}")
        scores = score(plan, probe, ev, state)
        if plan.shortlist > 1 and plan.importance == "fisher":
            plan.say(f"{head}: measuring {plan.shortlist * want} candidates")
            scores = measured(probe, ev, state, scores, plan.shortlist * want, quota)
        removed += remove_lowest(state, scores, want, quota)
        entry = {"step": k + 1, "removed": removed}
        if plan.refit:  # the in-order residual re-fit once, at the end (selection needs only local ones)
            plan.say(f"{head}: re-fitting")
            refit(probe, state, targets if k == steps - 1 else None, plan.ridge)
            entry["refit_kept"] = keep_refit_if_better(probe, ev, state)
        plan.log.append(entry)
    return state


def keep_refit_if_better(probe: Probe, ev: Evaluator | None, state: State) -> bool:
    """Drop ``state``'s re-fits when the held-back sets measure better without them; True when
    they stay. (MiniLM, prune-ffn 30% ranked by fisher: the local re-fit of the down projections
    took the held-out cosine from 0.91 to 0.06 — the neurons fisher finds cheap to remove are the
    ones whose large, cancelling contributions a local least-squares fit then tries to restore.)"""
    if ev is None or all(f is None for f in state.refits):
        return True
    plain = State(state.removed, [None] * len(state.refits))
    if ev.cosine(plain, probe.held)[0] > ev.cosine(state, probe.held)[0]:
        state.refits = plain.refits
        return False
    return True


def prune_to_budget(plan: Plan, probe: Probe, ev: Evaluator, targets, min_cosine: float, limit: int,
                    chunk: int) -> tuple[State, float]:
    """Remove groups ``chunk`` at a time while the calibration mean cosine stays ≥ ``min_cosine``
    (at most ``limit``); returns the last state within the budget and its cosine."""
    state = State([set() for _ in probe.sites], [None] * len(probe.sites))
    best, best_cos = state.copy(), 1.0
    removed = 0
    while removed < limit:
        trial = best.copy()
        step = min(chunk, limit - removed)
        scores = score(plan, probe, ev, best)
        if plan.shortlist > 1 and plan.importance == "fisher":
            scores = measured(probe, ev, best, scores, plan.shortlist * step, None)
        n = remove_lowest(trial, scores, step, None)
        if n == 0:
            break
        plan.say(f"{removed + n}/{limit} removed, best calibration cosine {best_cos:.4f}")
        if plan.refit:
            refit(probe, trial, targets, plan.ridge)
        cos = ev.cosine(trial)[0]
        plan.log.append({"removed": removed + n, "calibration_cosine": round(cos, 6)})
        if cos < min_cosine:
            if step > 1:  # retry the last chunk one group at a time
                chunk = 1
                continue
            break
        best, best_cos, removed = trial, cos, removed + n
    return best, best_cos
