"""``PassContext``: what a pipeline runs with — the target, calibration inputs, budgets for lossy
passes, instruments, and the analysis cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..ir.graph import Graph
from ..ir.signature import check_generated_size
from .analysis import AnalysisManager
from .memo import PassMemo


@dataclass
class PassContext:
    target: Any = None
    """The target name or object the graph is being optimized for (None: target-independent)."""
    calibration: list[Mapping[str, np.ndarray]] = field(default_factory=list)
    """Input sets (``{input name: array}``) for calibration and numeric checks."""
    budgets: dict[str, float] = field(default_factory=dict)
    """Per lossy pass name: the relative output error it may introduce."""
    instruments: list = field(default_factory=list)
    dims: dict[str, int] = field(default_factory=dict)
    """Sizes for symbolic dims when inputs are generated from the input types."""
    seed: int = 0
    teacher: Graph | None = None
    """The model before compression: what ``distill`` trains the compressed graph to reproduce.
    The pass manager sets it to a copy of the graph before the pipeline's first lossy pass when a
    pass of the pipeline uses it (unless the caller gave one)."""
    refuse_ruin: bool = True
    """False: a lossy pass hands back even a ruined result (structural experiments on random
    models); by default it refuses one (``fidelity.refuse_ruin``)."""
    recovery_follows: bool = False
    """Set by the pass manager while a later pass of the pipeline recovers fidelity by training
    against the teacher (``distill``): a compressing pass then leaves the ruin check
    (``fidelity.refuse_ruin``) to that pass, which measures the pipeline's result."""
    analyses: AnalysisManager = field(default_factory=AnalysisManager)
    memo: PassMemo | None = None
    """Results kept across pipelines on the same model (a sweep's trials): the pass manager starts
    from the longest stored lossy prefix and calibration analyses are reused (``passes/memo.py``)."""

    def analysis(self, name: str, graph: Graph) -> Any:
        return self.analyses.get(name, graph)

    def sample_inputs(self, graph: Graph, count: int = 1) -> list[dict[str, np.ndarray]]:
        """The calibration inputs, or ``count`` random input sets built from the input types."""
        if self.calibration:
            return [dict(c) for c in self.calibration]
        return [random_inputs(graph, self.dims, self.seed + i) for i in range(count)]


def random_inputs(graph: Graph, dims: Mapping[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the graph's input types: floats ~ N(0, 1), integers in [0, 2),
    booleans; an integer/bool input named like a mask is all ones (a random mask can hide
    whole rows, which makes output comparisons degenerate); symbolic dims take ``dims[name]``
    or 2, unknown dims 2."""
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    out = {}
    for v in graph.inputs:
        shape = tuple(d if isinstance(d, int) else dims.get(d, 2) if isinstance(d, str) else 2
                      for d in (v.type.shape or ()))
        dt = v.dtype
        check_generated_size(v.name, shape, dt, "random inputs")
        if "mask" in v.name.lower() and not dt.is_float:
            arr = np.ones(shape, dtype=dt.numpy)
        elif dt.is_float:
            arr = rng.standard_normal(shape).astype(dt.numpy)
        elif dt.value == "bool":
            arr = rng.random(shape) < 0.5
        else:
            arr = rng.integers(0, 2, size=shape).astype(dt.numpy)
        out[v.name] = arr
    return out
