"""The Python API behind the CLI: load a model, run it, read and write input/output files."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import user_errors
from .fileio import atomic_write_bytes, check_output_dir, check_output_file
from .ir import Graph, OptcError


IR_SUFFIXES = (".optc-ir", ".ir")
MODEL_SUFFIXES = (".onnx", ".pt2") + IR_SUFFIXES


@user_errors
def load_model(path: str | os.PathLike) -> Graph:
    """Import an ``.onnx`` or ``.pt2`` model file, or read an IR text file (``.optc-ir``, as
    ``save_model`` writes it), into the IR."""
    path = Path(path)
    if path.suffix.lower() in IR_SUFFIXES:
        return _read_ir(path)
    from .frontend import load_model as _load

    return _load(path)


def _read_ir(path: Path) -> Graph:
    from .ir import IRError, ModelFileError
    from .ir.text import parse_graph

    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(f"{path}: not an IR text file (not UTF-8)") from None
    try:
        return parse_graph(text)
    except IRError as e:
        raise ModelFileError(f"{path}: {' '.join(str(e).split())}") from None


@user_errors
def save_model(graph: Graph, path: str | os.PathLike) -> Path:
    """Write ``graph`` as a model file chosen by suffix, atomically (temp file, then rename):
    ``.onnx`` (IR -> ONNX export) or ``.optc-ir`` (the IR text with its weights inline; exact
    for every op, including optc's composite ones)."""
    path = check_output_file(path, (".onnx",) + IR_SUFFIXES)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .frontend.onnx_export import save_onnx

        return save_onnx(graph, path)
    if suffix not in IR_SUFFIXES:
        raise OptcError(f"{path}: unknown model format {suffix or '(no suffix)'}; write .onnx or .optc-ir")
    from .ir.text import print_graph

    text = print_graph(graph, weights="inline")
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


@user_errors
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


@user_errors
def optimize(graph: Graph, passes: str = "default", *, target=None, calibration=None, budgets=None,
             instruments: list | None = None, dims: dict[str, int] | None = None, memo=None):
    """Run a pass pipeline on ``graph`` in place. Returns the ``PipelineResult`` (the expanded
    pipeline text and each pass's report, made JSON-serializable).

    ``calibration``: input sets (``[{input name: array}, ...]``, e.g. from
    ``optc.calibration.from_sentences``) or an ``optc.calibration.InputsFile`` (read here, once
    the graph's inputs are known); the lossy passes calibrate and measure on them.

    ``memo``: a ``PassMemo`` shared by several pipelines on the same model (a sweep): each starts
    from the longest lossy prefix already computed and reuses calibration analyses."""
    from .calibration import InputsFile, check_input_sets
    from .passes import PassContext, PassManager

    pm = PassManager.parse(passes)
    if isinstance(calibration, InputsFile):
        sets = calibration.load(graph)
    elif calibration:
        sets = check_input_sets(list(calibration), graph, "calibration")
    else:
        sets = []
    ctx = PassContext(target=target, calibration=sets, budgets=dict(budgets or {}),
                      instruments=list(instruments or []), dims=dict(dims or {}), memo=memo)
    result = pm.run(graph, ctx)
    result.reports = jsonable(result.reports)
    return result


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples, sets and dataclasses turned into plain JSON
    types, so any pass report can go into the manifest or ``--json`` output."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else str(f)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if value is None or isinstance(value, str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(value.as_dict() if hasattr(value, "as_dict") else dataclasses.asdict(value))
    return str(value)


@user_errors
def compile(model: str | os.PathLike, out: str | os.PathLike, *, target="x86",
            passes: str = "default", instruments: list | None = None, progress: bool = False,
            calibration=None, budgets: dict[str, float] | None = None, checked: bool = True,
            tuning_db: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None) -> Path:
    """Import ``model`` (.onnx, .pt2 or .optc-ir), run the pass pipeline ``passes`` on it (the
    lossy passes on ``calibration``: input sets or an ``InputsFile``, see ``optimize``), build
    it for ``target`` (a preset name — see ``optc targets`` —, a TVM target JSON, or a
    ``targets.Target``) and write the artifact folder ``out`` (atomically; an existing ``out`` is
    replaced only when it is an optc artifact); the manifest records the pipeline and each
    pass's report. ``checked=False`` drops the module's run-time index/divisor checks.
    ``tuning_db``: a folder ``optc tune`` wrote; its kept kernels for ``target`` are applied.
    ``tokenizer``: a Hugging Face tokenizer folder whose files the artifact carries (a decoder
    artifact then generates from text: ``optc.load(out).generate("...")``). Returns the folder."""
    from .codegen.artifact import write_artifact
    from .codegen.build import build
    from .passes import PassManager
    from .targets import get_target

    check_output_dir(out)  # refuse before the (slow) work, not after
    if tokenizer is not None:
        from .codegen.artifact import tokenizer_files

        tokenizer_files(tokenizer)  # a wrong folder fails before the work, too
    tgt = get_target(target)
    tgt.check_toolchain()  # a missing cross compiler or nvcc fails before the (slow) work
    PassManager.parse(passes)  # a bad pipeline fails before the (slow) import
    from .calibration import InputsFile

    if isinstance(calibration, InputsFile):
        calibration.check()
    tuning = None
    if tuning_db is not None:
        from .codegen.tuning import TuningDatabase

        tuning = TuningDatabase(tuning_db, tgt)
    graph = load_model(model)
    result = optimize(graph, passes, target=tgt, instruments=instruments, calibration=calibration,
                      budgets=budgets)
    if progress:
        from .progress import Progress

        with Progress(f"compiling {Path(model).name} for {tgt.name}"):
            compiled = build(graph, tgt, checked=checked, tuning=tuning)
    else:
        compiled = build(graph, tgt, checked=checked, tuning=tuning)
    return write_artifact(compiled, out, model=model, pipeline=result.pipeline, reports=result.reports,
                          tokenizer=tokenizer)


@user_errors
def load(folder: str | os.PathLike):
    """Load a compiled artifact folder, verified (checksums, versions, CPU, signature);
    ``.run({name: ndarray}) -> {name: ndarray}``."""
    from .codegen.artifact import load as _load

    return _load(folder)


@user_errors
def load_inputs(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an ``.npz`` of named input arrays (checked before anything is allocated)."""
    from .npz import read_npz

    return read_npz(path)


@user_errors
def save_outputs(path: str | os.PathLike, outputs: dict[str, np.ndarray]) -> Path:
    """Write named arrays as ``.npz`` atomically: a temp file in the same folder, then rename."""
    from .npz import write_npz

    return write_npz(path, outputs)
