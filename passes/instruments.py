"""Instruments: objects whose hooks run around every pass of a pipeline. Debug behaviour lives
here, never as flags inside passes.

- ``TimePasses``: wall time per pass (``table()`` prints it).
- ``PrintIRAfter``: print the IR text after the named passes (or ``"all"``).
- ``VerifyEach``: run the IR verifier after each pass.
- ``CheckNumerics``: run the reference interpreter after each pass and compare with the graph
  before the pipeline (exact passes: float tolerance) or before the pass (lossy passes: their
  declared budget, as relative L2 error).
"""

from __future__ import annotations

import sys
from typing import IO, Any

import numpy as np

from ..ir.graph import Graph
from .base import Pass, PassError, PassResult


class Instrument:
    """Base class: every hook does nothing."""

    def before_pipeline(self, graph: Graph, ctx) -> None:
        pass

    def before_pass(self, p: Pass, graph: Graph, ctx) -> None:
        pass

    def after_pass(self, p: Pass, graph: Graph, ctx, result: PassResult) -> None:
        pass

    def after_pipeline(self, graph: Graph, ctx) -> None:
        pass


class TimePasses(Instrument):
    def __init__(self, stream: IO[str] | None = None, print_at_end: bool = False):
        self.stream = stream
        self.print_at_end = print_at_end
        self.times: list[tuple[str, float]] = []

    def before_pipeline(self, graph, ctx):
        self.times = []

    def after_pass(self, p, graph, ctx, result):
        self.times.append((str(p), result.seconds))

    def after_pipeline(self, graph, ctx):
        if self.print_at_end:
            print(self.table(), file=self.stream or sys.stderr)

    def table(self) -> str:
        total = sum(t for _, t in self.times) or 1e-12
        lines = [f"{'pass':<32} {'ms':>10} {'%':>6}"]
        for name, t in self.times:
            lines.append(f"{name:<32} {t * 1e3:>10.2f} {100 * t / total:>6.1f}")
        lines.append(f"{'total':<32} {total * 1e3:>10.2f}")
        return "\n".join(lines)


class PrintIRAfter(Instrument):
    def __init__(self, which: str | list[str] = "all", stream: IO[str] | None = None):
        self.which = which if isinstance(which, str) else list(which)
        self.stream = stream

    def _wanted(self, p: Pass) -> bool:
        if self.which == "all":
            return True
        names = [self.which] if isinstance(self.which, str) else self.which
        return p.name in names

    def after_pass(self, p, graph, ctx, result):
        if self._wanted(p):
            from ..ir.text import print_graph

            out = self.stream or sys.stderr
            print(f"// ----- IR after {p} -----", file=out)
            print(print_graph(graph), file=out)


class VerifyEach(Instrument):
    def before_pipeline(self, graph, ctx):
        from ..ir.verifier import verify

        verify(graph)

    def after_pass(self, p, graph, ctx, result):
        from ..ir.verifier import verify

        verify(graph)


def _compare_exact(ref: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> str | None:
    if ref.shape != got.shape:
        return f"shape {got.shape} != {ref.shape}"
    if ref.dtype != got.dtype:
        return f"dtype {got.dtype} != {ref.dtype}"
    if ref.dtype.kind in "fc":
        a, b = ref.astype(np.float64), got.astype(np.float64)
        if np.allclose(b, a, rtol=rtol, atol=atol, equal_nan=True):
            return None
        diff = np.abs(a - b)
        diff[np.isnan(diff) & ~(np.isnan(a) & np.isnan(b))] = np.inf
        return f"max abs error {np.nanmax(diff):.3g} (rtol={rtol}, atol={atol})"
    return None if np.array_equal(ref, got) else "values differ"


def relative_error(ref: np.ndarray, got: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


class CheckNumerics(Instrument):
    """Compare outputs after each pass with the reference interpreter's outputs on the
    context's calibration inputs (or random inputs from the input types)."""

    def __init__(self, rtol: float = 1e-4, atol: float = 1e-5, samples: int = 1):
        self.rtol, self.atol, self.samples = rtol, atol, samples
        self.inputs: list[dict[str, np.ndarray]] = []
        self.reference: list[dict[str, np.ndarray]] = []
        self.errors: list[dict[str, Any]] = []

    def _run(self, graph: Graph) -> list[dict[str, np.ndarray]]:
        from ..ir.interpreter import run

        return [run(graph, x) for x in self.inputs]

    def before_pipeline(self, graph, ctx):
        self.inputs = ctx.sample_inputs(graph, self.samples)
        self.reference = self._run(graph)
        self.errors = []

    def after_pass(self, p, graph, ctx, result):
        if not result.changed:
            return
        outs = self._run(graph)
        if p.lossy:
            worst = 0.0
            for ref, got in zip(self.reference, outs):
                for name, r in ref.items():
                    if name not in got:
                        raise PassError(f"output {name} disappeared")
                    if r.dtype.kind in "fc":
                        worst = max(worst, relative_error(r, got[name]))
            budget = p.error_budget(ctx)
            self.errors.append({"pass": str(p), "relative_error": worst, "budget": budget})
            if budget is not None and worst > budget:
                raise PassError(f"output error {worst:.3g} exceeds the budget {budget:g}")
            self.reference = outs  # later exact passes are held to the lossy result
            return
        for ref, got in zip(self.reference, outs):
            if list(ref) != list(got):
                raise PassError(f"outputs changed from {list(ref)} to {list(got)}")
            for name, r in ref.items():
                msg = _compare_exact(r, got[name], self.rtol, self.atol)
                if msg:
                    raise PassError(f"output {name} differs from the reference interpreter: {msg}")
