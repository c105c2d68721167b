"""Latency measurement of a compiled artifact, and of the same model in ONNX Runtime and PyTorch
in the same process, so the ratios compare like with like.

An artifact built for another architecture is timed by its own runner under qemu-user
(``emulated_timing``: the numbers say nothing about the board) or on the board itself over TVM's
RPC (``remote_timing``, with ``optc.native.remote``).

Thread counts must be fixed before the runtimes start their pools: ``pin_threads`` sets the
environment for TVM and OpenMP and the torch setting; ONNX Runtime gets it per session.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .ir.errors import OptcError
from .ir.signature import check_generated_size

COMPARATORS = ("onnxruntime", "torch")


def pin_threads(n: int) -> None:
    """Use ``n`` threads in TVM, OpenMP and torch (call before any of them runs)."""
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


@dataclass
class Timing:
    name: str
    runs_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.runs_ms)

    @property
    def p90(self) -> float:
        return float(np.percentile(self.runs_ms, 90))

    def to_json(self) -> dict:
        return {"median_ms": round(self.median, 4), "p90_ms": round(self.p90, 4), "runs": len(self.runs_ms)}


def measure(name: str, fn: Callable[[], object], repeat: int, warmup: int = 3,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """``repeat`` timed runs of ``fn`` after ``warmup`` untimed ones. ``clock=time.process_time``
    times process CPU time: with one thread, what a run costs however busy a shared machine is."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeat):
        t = clock()
        fn()
        runs.append((clock() - t) * 1e3)
    return Timing(name, runs)


def random_inputs(specs, dims: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs matching a signature: symbolic dims from ``dims``; integer inputs get 0/1 (valid
    token ids and attention masks alike), floats a standard normal."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if s.shape is None:
            raise OptcError(f"input {s.name} has an unknown rank: pass --inputs")
        shape = []
        for d in s.shape:
            if isinstance(d, int):
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            else:
                raise OptcError(f"input {s.name}: give a size for dim {d!r} with --dim {d}=N, or pass --inputs")
        check_generated_size(s.name, shape, s.dtype, "random benchmark inputs")
        dt = s.dtype.numpy
        if s.dtype.is_float:
            out[s.name] = rng.standard_normal(shape).astype(dt)
        elif s.dtype.value == "bool":
            out[s.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            out[s.name] = np.ones(shape, dtype=dt) if "mask" in s.name else rng.integers(0, 2, shape).astype(dt)
    return out


def onnxruntime_runner(model: Path, inputs: Mapping[str, np.ndarray], threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    if model.suffix != ".onnx":
        raise OptcError(f"--compare onnxruntime needs an ONNX model; this artifact was built from {model.name}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    return lambda: sess.run(None, feed)


def torch_runner(model: Path, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
    import torch

    if model.suffix != ".pt2":
        raise OptcError(f"--compare torch needs a .pt2 model (torch.export); this artifact was built from {model.name}")
    module = torch.export.load(str(model)).module()
    feed = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}

    def run():
        with torch.inference_mode():
            return module(**feed)

    return run


# -- artifacts that do not run in this process: emulated (qemu-user) and remote (TVM RPC) ----------
def artifact_signature(folder: str | os.PathLike, verify: bool = True):
    """The manifest (its files' checksums verified when ``verify``) and signature of an artifact
    folder, without loading its library (which may be built for another machine)."""
    from .codegen.artifact import read_manifest, verify_files
    from .codegen.signature import Signature

    manifest = read_manifest(folder)
    if verify:
        verify_files(Path(folder), manifest)
    return manifest, Signature.from_json(manifest)


def foreign_arch(signature) -> str | None:
    """The architecture the artifact's code needs when it is not this machine's (else None)."""
    from .targets.base import foreign_arch as _foreign

    return _foreign(signature.target or {})


def emulated_timing(folder: str | os.PathLike, signature, inputs: Mapping[str, np.ndarray], repeat: int,
                    threads: int, warmup: int = 3) -> Timing:
    """``repeat`` runs timed by the artifact's own runner (``optc-run --repeat --json``), under
    qemu-user when it is built for another architecture: correct outputs, meaningless times."""
    import json
    import tempfile

    from .codegen.storage import to_storage
    from .native import NativeError, run_native

    signature.check(inputs)
    with tempfile.TemporaryDirectory(prefix="optc-bench-") as tmp:
        src = Path(tmp, "inputs.npz")
        np.savez(src, **{s.name: to_storage(np.asarray(inputs[s.name]), s.dtype) for s in signature.inputs})
        res = run_native(folder, src, None, ["--repeat", str(repeat), "--warmup", str(warmup),
                                             "--threads", str(threads), "--json"])
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    try:
        runs = json.loads(lines[-1])["runs_ms"]
    except (IndexError, KeyError, ValueError):
        raise NativeError(f"{folder}: its runner printed no timings (an older optc-run? recompile the artifact)") from None
    return Timing("optc", [float(x) for x in runs])


def remote_timing(model, inputs: Mapping[str, np.ndarray], repeat: int, warmup: int = 3) -> Timing:
    """``repeat`` runs of a ``native.remote.RemoteModel`` timed on its board."""
    return Timing("optc", model.time(inputs, repeat, warmup))
