"""``optc.sweep.run``: the checks and defaults of ``optc sweep`` before the driver starts."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OptcError
from .driver import SweepOptions, SweepReport, sweep
from .space import Space, load_space

__all__ = ["run_sweep"]


def _lossy(space: Space) -> list[str]:
    from ..passes.base import get_pass
    from ..passes.pipeline import parse_pipeline

    names = [p.name for p in space.passes if getattr(get_pass(p.name), "lossy", False)]
    names += [p.name for p in parse_pipeline(space.base) if p.lossy] if space.base else []
    return names


def run_sweep(model: str | os.PathLike, space: str | os.PathLike | Space, run_dir: str | os.PathLike, *,
              target: str = "x86", calibration=None, eval_inputs=None, eval_label: str | None = None,
              dims: dict[str, int] | None = None, time_budget=None, trials: int | None = None, workers: int = 1,
              threads: int | None = None, ray_address: str | None = None, sampler: str = "auto", seed: int = 0, say=None) -> SweepReport:
    """Check the request (each problem one line, before any work), then sweep."""
    from ..api import load_model
    from ..ir.specialize import symbolic_dims
    from ..targets import get_target
    from ..tuning import parse_duration

    if not isinstance(space, Space):
        space = load_space(space)
    tgt = get_target(target)
    if tgt.kind != "cpu" or tgt.arch != os.uname().machine:
        raise OptcError(f"optc sweep times each point on this machine: target {tgt.name} does not run here")
    lossy = _lossy(space)
    if lossy and calibration is None:
        raise OptcError(f"the space has lossy pass(es) ({', '.join(sorted(set(lossy)))}): give calibration data (--calib)")
    if eval_inputs is None:
        raise OptcError("give held-out evaluation data (--eval): fidelity is measured on it")
    if trials is not None and trials < 1:
        raise OptcError(f"--trials must be at least 1, got {trials}")
    if workers < 1:
        raise OptcError(f"--workers must be at least 1, got {workers}")
    parallel = workers > 1 or ray_address is not None
    cores = len(os.sched_getaffinity(0))
    if threads is None:
        threads = 1 if parallel else cores
    elif threads < 1 or (threads > cores and ray_address is None):  # a cluster's machines may have more
        raise OptcError(f"--threads must be between 1 and {cores} (the CPUs this process may use), got {threads}")
    budget = parse_duration(time_budget)
    for f in (calibration, eval_inputs):
        if hasattr(f, "check"):
            f.check()
    graph = load_model(model)
    sizes = {d: (1 if "batch" in d.lower() else 128) for d in symbolic_dims(graph)}
    for k, v in (dims or {}).items():
        if k not in sizes:
            raise OptcError(f"--dim {k}: the model has no symbolic dim {k!r} (it has: {', '.join(sizes) or 'none'})")
        sizes[k] = int(v)
    options = SweepOptions(time_budget=budget, trials=trials, workers=workers, threads=threads, ray_address=ray_address,
                           sampler=sampler, seed=seed, dims=sizes)
    return sweep(str(Path(model)), tgt.name, space, calibration, eval_inputs, run_dir, options, say=say,
                 eval_label=eval_label)
