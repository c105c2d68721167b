"""Rank per matrix under a global budget.

Each matrix offers a menu: keep W (its full cost, no loss) or factors of rank r (a multiple of the
quantum, strictly below break-even) at cost ``unit·r·(m+n)`` and predicted loss
``sensitivity · error(r)`` — the measured effect on the model output per unit of relative
output error of that layer, times the layer's own truncation error. Choosing one option per
matrix to minimize the summed loss within a total cost is a multiple-choice knapsack; it is
solved by Lagrangian relaxation (each matrix independently minimizes ``loss + λ·cost``, λ bisected
to the smallest value that meets the budget) and the slack the relaxation leaves is then filled
greedily by the upgrades with the best loss reduction per unit of cost.

Costs are parameters (``unit = 1``) or FLOPs (``unit = 2·rows``), so one solver serves both
targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .factorize import saves


@dataclass
class Menu:
    """One matrix's options: ``ranks[i]`` (0 = keep W) at ``costs[i]`` with ``losses[i]``,
    sorted by rising cost (the kept W is last)."""

    name: str
    ranks: np.ndarray
    costs: np.ndarray
    losses: np.ndarray

    @property
    def full_cost(self) -> float:
        return float(self.costs[-1])

    @property
    def min_cost(self) -> float:
        return float(self.costs[0])


def candidate_ranks(in_features: int, out_features: int, quantum: int) -> np.ndarray:
    """Every multiple of ``quantum`` below break-even (empty when none saves anything)."""
    q = max(int(quantum), 1)
    top = min(in_features, out_features)
    return np.array([r for r in range(q, top + 1, q) if saves(in_features, out_features, r)], np.int64)


def menu(name: str, in_features: int, out_features: int, errors: np.ndarray, sensitivity: float,
         quantum: int = 1, unit: float = 1.0) -> Menu:
    """The options of one matrix; ``errors[r]`` is its relative output error at rank r."""
    ranks = candidate_ranks(in_features, out_features, quantum)
    costs = unit * ranks * (in_features + out_features)
    losses = sensitivity * np.asarray(errors, np.float64)[ranks]
    return Menu(name,
                np.concatenate([ranks, [0]]).astype(np.int64),
                np.concatenate([costs, [unit * in_features * out_features]]).astype(np.float64),
                np.concatenate([losses, [0.0]]))


def _choose(menus: list[Menu], lam: float) -> list[int]:
    return [int(np.argmin(m.losses + lam * m.costs)) for m in menus]


def _cost(menus: list[Menu], picks: list[int]) -> float:
    return float(sum(m.costs[i] for m, i in zip(menus, picks)))


def allocate(menus: list[Menu], budget: float) -> dict[str, int]:
    """The rank per matrix (0: keep W) minimizing the summed predicted loss with total cost at
    most ``budget``. Raises ValueError when even the smallest option of every matrix exceeds it."""
    if sum(m.min_cost for m in menus) > budget * (1 + 1e-12):
        raise ValueError("budget below the smallest factorization")
    picks = [len(m.ranks) - 1 for m in menus]
    if _cost(menus, picks) > budget:
        hi = 1e-30  # λ doubles until the choices fit, then bisects between λ/2 (too costly) and λ
        while _cost(menus, _choose(menus, hi)) > budget:
            hi *= 2.0
        lo = hi / 2.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if _cost(menus, _choose(menus, mid)) > budget:
                lo = mid
            else:
                hi = mid
        picks = _choose(menus, hi)
    picks = _fill(menus, picks, budget)
    return {m.name: int(m.ranks[i]) for m, i in zip(menus, picks)}


def _fill(menus: list[Menu], picks: list[int], budget: float) -> list[int]:
    """Spend what the relaxation left: repeatedly take the affordable upgrade (a costlier option of
    one matrix) with the largest loss reduction per unit of cost."""
    picks = list(picks)
    slack = budget - _cost(menus, picks)
    while True:
        best, best_gain = None, 0.0
        for mi, (m, i) in enumerate(zip(menus, picks)):
            extra = m.costs[i + 1:] - m.costs[i]
            gain = m.losses[i] - m.losses[i + 1:]
            ok = (extra <= slack) & (gain > 0)
            if not ok.any():
                continue
            rate = np.where(ok, gain / np.maximum(extra, 1e-300), -np.inf)
            j = int(np.argmax(rate))
            if rate[j] > best_gain:
                best, best_gain = (mi, i + 1 + j), rate[j]
        if best is None:
            return picks
        mi, j = best
        slack -= menus[mi].costs[j] - menus[mi].costs[picks[mi]]
        picks[mi] = j


def uniform(shapes: dict[str, tuple[int, int]], keep: float, quantum: int = 1) -> dict[str, int]:
    """Every matrix keeps the same fraction of its parameters: rank ⌊keep·mn/(m+n)⌋ rounded down
    to the quantum (at least one quantum), 0 (keep W) where that does not save anything."""
    q = max(int(quantum), 1)
    out = {}
    for name, (m, n) in shapes.items():
        r = max(int(keep * m * n / (m + n)) // q * q, q)
        out[name] = r if saves(m, n, r) else 0
    return out
