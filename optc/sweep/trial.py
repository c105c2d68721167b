"""One point of a sweep: run its pipeline, compile, and measure fidelity, latency and size.

A ``TrialRunner`` holds what every trial shares — the imported model, the calibration sets, the
held-out evaluation sets and the original's outputs on them (computed once by the reference
interpreter, as ``optc eval`` computes them) — so a trial only pays for its own passes, build
and measurements — and of its passes, only those no earlier trial of this runner ran: a
``PassMemo`` keeps the graph after each lossy prefix (``prune-heads{ratio=0.25}`` is pruned once
for every point that starts with it) and the calibration statistics of each graph state.
Fidelity is ``optc eval``'s mean cosine of the compiled artifact's output against the
original's on the evaluation sets: rebuilding a point with ``optc compile --passes``
and running ``optc eval`` on it gives the same number.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TrialResult", "TrialRunner", "pipeline_key"]


def pipeline_key(pipeline: str) -> str:
    return hashlib.sha256(pipeline.encode()).hexdigest()[:16]


@dataclass
class TrialResult:
    pipeline: str
    fidelity: float | None = None  # mean cosine on the evaluation sets (optc eval's)
    worst: float | None = None  # worst cosine
    latency_ms: float | None = None  # median, batch/seq from the sweep's dims
    size_mb: float | None = None  # the weights as stored (all constants)
    seconds: float = 0.0
    reused_passes: int = 0  # passes of its pipeline an earlier trial had run (PassMemo)
    error: str | None = None  # one line: why the point has no measurement (a refused ruined result, ...)

    @property
    def ok(self) -> bool:
        return self.error is None and self.fidelity is not None

    def to_json(self) -> dict:
        return asdict(self)


class TrialRunner:
    """Runs points for one model, target and data (built once; see the module doc)."""

    def __init__(self, model: str, target: str, calibration, eval_inputs, dims: dict[str, int], repeat: int = 20,
                 output: str | None = None) -> None:
        from ..api import load_model
        from ..ir.interpreter import Interpreter
        from ..passes.memo import PassMemo
        from ..targets import get_target

        self.model = model
        self.target = get_target(target)
        self.graph = load_model(model)
        self.calibration = calibration.load(list(self.graph.inputs)) if hasattr(calibration, "load") else calibration
        self.sets = eval_inputs.load(list(self.graph.inputs)) if hasattr(eval_inputs, "load") else list(eval_inputs)
        self.output = output or self.graph.output_names()[0]
        interp = Interpreter(self.graph)
        self.reference = [interp.run(feed) for feed in self.sets]
        self.dims = dict(dims)
        self.repeat = repeat
        self.memo = PassMemo()  # pruned prefixes and calibration statistics shared by this runner's trials

    def run(self, pipeline: str) -> TrialResult:
        from ..api import optimize
        from ..benchmark import measure, random_inputs
        from ..codegen.build import build
        from ..errors import OptcError
        from ..passes.compression.fidelity import compare

        t0 = time.perf_counter()
        result = TrialResult(pipeline)
        skipped = self.memo.stats.passes_skipped
        try:
            graph = self.graph.clone()
            optimize(graph, pipeline, target=self.target, calibration=self.calibration, memo=self.memo)
            compiled = build(graph, self.target)
            model = compiled.load()
            outputs = [model.run(feed) for feed in self.sets]
            fid = compare(self.reference, outputs, self.sets, self.output)
            result.fidelity, result.worst = float(fid.mean_cosine), float(fid.worst_cosine)
            feed = random_inputs(compiled.inputs, self.dims)
            result.latency_ms = measure("trial", lambda: model.run(feed), self.repeat).median
            result.size_mb = sum(int(np.asarray(v.const).nbytes) for v in graph.constants.values()) / 1e6
        except (OptcError, ValueError) as e:
            result.error = " ".join(str(e).split())[:400]
        result.seconds = time.perf_counter() - t0
        result.reused_passes = self.memo.stats.passes_skipped - skipped
        return result


def save_result(folder: Path, result: TrialResult) -> None:
    from ..fileio import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{pipeline_key(result.pipeline)}.json") as tmp:
        tmp.write_text(json.dumps(result.to_json(), indent=1))


def load_result(folder: Path, pipeline: str) -> TrialResult | None:
    path = folder / f"{pipeline_key(pipeline)}.json"
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        result = TrialResult(**data)
    except (OSError, ValueError, TypeError):
        return None  # a damaged file: the point is measured again
    return result if result.pipeline == pipeline else None
