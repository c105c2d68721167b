"""The multiple-choice knapsack behind per-layer precision: each layer picks exactly one option
(cost, loss); minimize the summed loss under a cost budget, or the summed cost under a loss
budget. Costs are discretized to ``resolution`` units of the largest possible total, and the
dynamic program is exact on the discretized costs (costs are rounded up, so a plan the solver
returns never exceeds the real budget).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Option = tuple[str, float, float]  # (name, cost, loss)


def _frontier(layers: Sequence[Sequence[Option]], resolution: int):
    """For every discretized total cost c: the least summed loss of a plan costing <= c, with
    back-pointers to rebuild it."""
    top = sum(max(o[1] for o in opts) for opts in layers) or 1.0
    unit = top / resolution
    size = resolution + len(layers) + 1
    best = np.full(size, np.inf)
    best[0] = 0.0
    choices = []
    for opts in layers:
        new = np.full(size, np.inf)
        pick = np.full(size, -1, dtype=np.int64)
        for idx, (_, cost, loss) in enumerate(opts):
            c = int(np.ceil(cost / unit - 1e-9))
            if c >= size:
                continue
            cand = np.full(size, np.inf)
            cand[c:] = best[:size - c] + loss
            better = cand < new
            new[better], pick[better] = cand[better], idx
        best = new
        choices.append(pick)
    # "cost exactly c" -> "cost at most c": running minimum, remembering where it came from
    at = np.arange(size)
    for c in range(1, size):
        if best[c - 1] <= best[c]:
            best[c], at[c] = best[c - 1], at[c - 1]
    return best, at, choices, unit


def _rebuild(layers, choices, unit: float, c: int) -> list[int]:
    plan = []
    for opts, pick in zip(reversed(layers), reversed(choices)):
        idx = int(pick[c])
        plan.append(idx)
        c -= int(np.ceil(opts[idx][1] / unit - 1e-9))
    return plan[::-1]


def least_loss(layers: Sequence[Sequence[Option]], budget: float, resolution: int = 4000) -> list[int] | None:
    """Option index per layer minimizing the summed loss with summed cost <= ``budget``; None
    when no plan fits."""
    best, at, choices, unit = _frontier(layers, resolution)
    c = min(int(np.floor(budget / unit + 1e-9)), len(best) - 1)
    if c < 0 or not np.isfinite(best[c]):
        return None
    return _rebuild(layers, choices, unit, int(at[c]))


def least_cost(layers: Sequence[Sequence[Option]], max_loss: float, resolution: int = 4000) -> list[int] | None:
    """Option index per layer minimizing the summed cost with summed loss <= ``max_loss``; None
    when no plan is that accurate."""
    best, at, choices, unit = _frontier(layers, resolution)
    ok = np.nonzero(best <= max_loss)[0]
    if ok.size == 0:
        return None
    return _rebuild(layers, choices, unit, int(at[ok[0]]))
