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
from .memo import PassMemo, PipelineState
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
        memo = ctx.memo if not ctx.instruments else None  # instruments must see every pass run
        if memo is None:
            return self._run(graph, ctx, None)
        with memo.active():
            return self._run(graph, ctx, memo)

    def _run(self, graph: Graph, ctx: PassContext, memo: PassMemo | None) -> PipelineResult:
        ran: list[str] = []
        recovering = ctx.recovery_follows
        # per pass: whether a later pass recovers fidelity by training against the teacher
        recovery = [recovering or any(q.uses_teacher for q in self.passes[k + 1:]) for k in range(len(self.passes))]

        def fail(p: Pass, stage: str, e: BaseException) -> PassError:
            before = ", ".join(ran) if ran else "none"
            return PassError(f"pass {p} failed{stage}: {' '.join(str(e).split())} (passes run before it: {before})")

        for inst in ctx.instruments:
            inst.before_pipeline(graph, ctx)
        reports: list[dict[str, Any]] = []
        any_change = False
        keep_teacher = ctx.teacher is None and any(p.uses_teacher for p in self.passes)
        take_teacher = keep_teacher or memo is not None  # a memo keeps it for later pipelines that distill
        teacher: Graph | None = None
        start, memo_base, input_graph = 0, None, None
        if memo is not None:
            memo_base, input_graph = _memo_base(graph, ctx), graph.clone()
            start, state = self._resume(memo, memo_base, recovery, needs_teacher=keep_teacher)
            if state is not None:
                graph.take_contents(state.graph.clone())
                ctx.analyses.invalidate()
                reports = [{**r, "reused": True} for r in state.reports]
                any_change, ran = state.changed, [str(p) for p in self.passes[:start]]
                teacher, take_teacher = state.teacher, False  # the teacher is the graph before the first lossy pass
                if keep_teacher:
                    ctx.teacher, keep_teacher = teacher.clone(), False
                memo.stats.passes_skipped += start
        try:
            for k in range(start, len(self.passes)):
                p = self.passes[k]
                if take_teacher and p.lossy and teacher is None:
                    teacher, take_teacher = graph.clone(), False
                    if keep_teacher:
                        ctx.teacher, keep_teacher = teacher, False
                ctx.recovery_follows = recovery[k]
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
                if memo is not None and p.lossy:  # worth keeping: what a lossy prefix computed
                    memo.store_state(self._memo_key(memo_base, k + 1, recovery),
                                     PipelineState(graph.clone(), [dict(r) for r in reports], any_change, teacher),
                                     shared_with=input_graph)
        finally:
            ctx.recovery_follows = recovering
        for inst in ctx.instruments:
            inst.after_pipeline(graph, ctx)
        return PipelineResult(any_change, reports, self.text)

    def _memo_key(self, base: tuple, k: int, recovery: Sequence[bool]) -> tuple:
        """The key of the state after ``passes[:k]``: the input, the context, the prefix's text, and
        whether each of its passes ran with a recovery pass after it (which relaxes the ruin check)."""
        return (*base, format_pipeline(self.passes[:k]), tuple(recovery[:k]))

    def _resume(self, memo: PassMemo, base: tuple, recovery: list[bool], needs_teacher: bool
                ) -> tuple[int, PipelineState | None]:
        """The longest stored lossy prefix of this pipeline (the whole of it, when an earlier
        pipeline ran it and went on), or ``(0, None)``."""
        for k in range(len(self.passes), 0, -1):
            if not self.passes[k - 1].lossy:
                continue
            # a prefix that passed the ruin check is also what a relaxed check gives
            for flags in dict.fromkeys([tuple(recovery[:k]), (False,) * k]):
                state = memo.state(self._memo_key(base, k, flags))
                if state is not None and (state.teacher is not None or not needs_teacher):
                    return k, state
        return 0, None


def _memo_base(graph: Graph, ctx: PassContext) -> tuple:
    """What besides the pipeline text decides a pass's result: the graph, the calibration data,
    and the context's settings."""
    from ..ir.fingerprint import graph_fingerprint

    target = ctx.target.describe() if hasattr(ctx.target, "describe") else ctx.target
    settings = repr((target, sorted(ctx.budgets.items()), sorted(ctx.dims.items()), ctx.seed, ctx.refuse_ruin,
                     graph_fingerprint(ctx.teacher) if ctx.teacher is not None else None))
    return (graph_fingerprint(graph), ctx.memo.inputs_key(ctx.calibration), settings)


def run_pipeline(graph: Graph, pipeline: str | Sequence[Pass] = "default", ctx: PassContext | None = None) -> PipelineResult:
    return PassManager(pipeline).run(graph, ctx)
