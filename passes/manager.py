"""``PassManager``: runs a pipeline of passes on a graph, in place, with instruments around each
pass, and collects their reports.

    pm = PassManager.parse("default,prune-heads{ratio=0.25}")
    result = pm.run(graph, PassContext(instruments=[VerifyEach()]))
    result.reports  # [{"pass": "fold-shapes", "changed": True, "nodes_before": ..., ...}, ...]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..ir.errors import OptcError
from ..ir.graph import Graph
from .base import Pass, PassError, PassResult
from .context import PassContext
from .pipeline import format_pipeline, parse_pipeline


@dataclass
class PipelineResult:
    changed: bool
    reports: list[dict[str, Any]] = field(default_factory=list)
    pipeline: str = ""


class PassManager:
    def __init__(self, passes: Sequence[Pass] | str = ()):
        self.passes: list[Pass] = parse_pipeline(passes) if isinstance(passes, str) else list(passes)
        for p in self.passes:
            if not isinstance(p, Pass):
                raise TypeError(f"not a pass: {p!r}")

    @classmethod
    def parse(cls, text: str) -> "PassManager":
        return cls(parse_pipeline(text))

    @property
    def text(self) -> str:
        return format_pipeline(self.passes)

    def __str__(self) -> str:
        return self.text

    @property
    def lossy(self) -> bool:
        return any(p.lossy for p in self.passes)

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PipelineResult:
        ctx = ctx or PassContext()
        ran: list[str] = []

        recovering = ctx.recovery_follows

        def fail(p: Pass, stage: str, e: BaseException) -> PassError:
            before = ", ".join(ran) if ran else "none"
            return PassError(f"pass {p} failed{stage}: {' '.join(str(e).split())} (passes run before it: {before})")

        for inst in ctx.instruments:
            inst.before_pipeline(graph, ctx)
        reports = []
        any_change = False
        keep_teacher = ctx.teacher is None and any(p.uses_teacher for p in self.passes)
        try:
            for k, p in enumerate(self.passes):
                if keep_teacher and p.lossy:
                    ctx.teacher, keep_teacher = graph.clone(), False
                ctx.recovery_follows = recovering or any(q.uses_teacher for q in self.passes[k + 1:])
                for inst in ctx.instruments:
                    inst.before_pass(p, graph, ctx)
                before = len(graph.nodes)
                t0 = time.perf_counter()
                try:
                    result = p.run(graph, ctx)
                except OptcError as e:
                    raise fail(p, "", e) from e
                except Exception as e:  # a bug: keep its type and traceback, name the pass
                    e.add_note(f"in pass {p} (passes run before it: {', '.join(ran) or 'none'})")
                    raise
                seconds = time.perf_counter() - t0
                if not isinstance(result, PassResult):
                    raise TypeError(f"pass {p} returned {type(result).__name__}, not PassResult")
                result.seconds = seconds
                if result.changed:
                    ctx.analyses.invalidate()
                    any_change = True
                try:
                    for inst in ctx.instruments:
                        inst.after_pass(p, graph, ctx, result)
                except OptcError as e:
                    raise fail(p, " (check after it)", e) from e
                reports.append({"pass": str(p), "name": p.name, "lossy": p.lossy, "changed": result.changed,
                                "nodes_before": before, "nodes_after": len(graph.nodes),
                                "seconds": round(seconds, 6), **result.report})
                ran.append(str(p))
        finally:
            ctx.recovery_follows = recovering
        for inst in ctx.instruments:
            inst.after_pipeline(graph, ctx)
        return PipelineResult(any_change, reports, self.text)


def run_pipeline(graph: Graph, pipeline: str | Sequence[Pass] = "default", ctx: PassContext | None = None) -> PipelineResult:
    return PassManager(pipeline).run(graph, ctx)
