"""The Python API behind the CLI: load a model, run it, read and write input/output files."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .ir import Graph, OptcError


def load_model(path: str | os.PathLike) -> Graph:
    """Import an ``.onnx`` or ``.pt2`` model file into the IR."""
    from .frontend import load_model as _load

    return _load(path)


def run_reference(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a graph through the reference interpreter (the numeric ground truth)."""
    from .ir.interpreter import run

    return run(graph, inputs)


def instruments(*, print_ir_after: str | None = None, time_passes: bool = False, verify_each: bool = False,
                check_numerics: bool = False) -> list:
    """The instruments behind the CLI's debug flags (``--print-ir-after PASS|all``,
    ``--time-passes``, ``--verify-each``); they print to stderr."""
    from .passes import CheckNumerics, PrintIRAfter, TimePasses, VerifyEach, get_pass, registered_passes

    out: list = []
    if print_ir_after:
        names = [n.strip() for n in print_ir_after.split(",") if n.strip()]
        for n in names:
            if n != "all" and get_pass(n) is None:
                raise OptcError(f"--print-ir-after: unknown pass {n!r}; valid: all, {', '.join(registered_passes())}")
        out.append(PrintIRAfter("all" if "all" in names else names))
    if verify_each:
        out.append(VerifyEach())
    if check_numerics:
        out.append(CheckNumerics())
    if time_passes:
        out.append(TimePasses(print_at_end=True))
    return out


def optimize(graph: Graph, passes: str = "default", *, target=None, calibration=None, budgets=None,
             instruments: list | None = None, dims: dict[str, int] | None = None):
    """Run a pass pipeline on ``graph`` in place. Returns the ``PipelineResult`` (the expanded
    pipeline text and each pass's report)."""
    from .passes import PassContext, PassManager

    pm = PassManager.parse(passes)
    ctx = PassContext(target=target, calibration=list(calibration or []), budgets=dict(budgets or {}),
                      instruments=list(instruments or []), dims=dict(dims or {}))
    return pm.run(graph, ctx)


def compile(model: str | os.PathLike, out: str | os.PathLike, *, target: str = "x86",
            passes: str = "default", instruments: list | None = None, progress: bool = False) -> Path:
    """Import ``model`` (.onnx or .pt2), run the pass pipeline ``passes`` on it, build it for
    ``target`` and write the artifact folder ``out`` (atomically); the manifest records the
    pipeline and each pass's report. Returns the folder."""
    from .codegen.artifact import write_artifact
    from .codegen.build import build
    from .passes import PassManager
    from .targets import get_target

    tgt = get_target(target)
    PassManager.parse(passes)  # a bad pipeline fails before the (slow) import
    graph = load_model(model)
    result = optimize(graph, passes, target=tgt.name, instruments=instruments)
    if progress:
        from .progress import Progress

        with Progress(f"compiling {Path(model).name} for {tgt.name}"):
            compiled = build(graph, tgt)
    else:
        compiled = build(graph, tgt)
    return write_artifact(compiled, out, model=model, pipeline=result.pipeline, reports=result.reports)


def load(folder: str | os.PathLike):
    """Load a compiled artifact folder; ``.run({name: ndarray}) -> {name: ndarray}``."""
    from .codegen.artifact import load as _load

    return _load(folder)


def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an ``.npz`` of named input arrays."""
    path = Path(path)
    if not path.is_file():
        raise OptcError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise OptcError(f"{path}: not a readable .npz file ({e})") from None


def save_outputs(path: str | os.PathLike, outputs: dict[str, np.ndarray]) -> Path:
    """Write named arrays as ``.npz`` atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    if path.suffix != ".npz":
        raise OptcError(f"{path}: output file must end in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **outputs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
