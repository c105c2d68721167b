"""Build and time single kernels in this process, for MetaSchedule and for optc's own comparison.

MetaSchedule's ``LocalBuilder`` starts a fresh pool of worker processes for every batch of
candidates, and each worker imports ``tvm.s_tir.tensor_intrin``, which parses hundreds of
TVMScript intrinsics: 35 s per batch on this 2-core machine, for builds that take 30 ms. Here
candidates are compiled in this process (with optc's TIR passes, so a tuned kernel is built the
way the artifact builds it) and kept in memory; the runner times them with TVM's
``time_evaluator`` here, or links, uploads and times them on a board over RPC
(``RemoteKernelDevice``). Integer arguments are zeros: a valid index for every gather, so a candidate
never reads out of bounds on made-up data.
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
from dataclasses import dataclass

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture
from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

__all__ = ["Evaluator", "InProcessBuilder", "InProcessRunner", "KernelDevice", "RemoteKernelDevice", "compile_kernel",
           "cost_model", "kernel_arguments", "make_array", "outputs_match", "time_kernel"]


@dataclass(frozen=True)
class Evaluator:
    """How one timing is taken: ``repeat`` samples, each the mean of enough calls to last
    ``min_repeat_ms`` (at least ``number``)."""

    number: int = 3
    repeat: int = 5
    min_repeat_ms: int = 20


class KernelDevice:
    """Where kernels run and are timed: this machine's CPU."""

    def __init__(self) -> None:
        self.dev = tvm.cpu()

    def load(self, lib: tvm.runtime.Module, target) -> tvm.runtime.Module:  # noqa: ARG002
        return lib

    def describe(self) -> str:
        return "this machine"


class RemoteKernelDevice(KernelDevice):
    """A CPU over TVM's RPC (``optc.native.remote.connect``: a server, or a board handed out by a
    tracker): each kernel is linked with the target's toolchain, uploaded and loaded there, and
    timed by the board's own ``time_evaluator``."""

    def __init__(self, remote) -> None:
        self.remote = remote
        self.dev = remote.session.cpu()
        self._work = tempfile.TemporaryDirectory(prefix="optc-tune-rpc-")

    def load(self, lib: tvm.runtime.Module, target) -> tvm.runtime.Module:
        name = f"optc_kernel_{next(_ids)}.so"
        path = os.path.join(self._work.name, name)
        target.export(lib, path)
        self.remote.session.upload(path)
        os.remove(path)
        return self.remote.session.load_module(name)

    def describe(self) -> str:
        return self.remote.describe()


def compile_kernel(mod: tvm.IRModule, target) -> tvm.runtime.Module:
    """Compile a one-function module ``{"main": scheduled PrimFunc}`` for the optc ``target``
    with the target's finalize passes (as the artifact's build runs them)."""
    tvm_target = target.tvm()
    with tvm_target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential(list(target.finalize_passes()))(mod)
        return tvm.compile(mod, tvm_target).mod


def kernel_arguments(func, device, seed: int = 0) -> list:
    """Arguments for ``func``'s buffers (see ``make_array``)."""
    rng = np.random.default_rng(seed)
    return [make_array([int(d) for d in p.ty.shape], str(p.ty.dtype), rng, device) for p in func.params]


def make_array(shape: list[int], dtype: str, rng, device):
    """Floats uniform in [-1, 1); integers and booleans zero (a valid index for every gather)."""
    if dtype.startswith(("float", "bfloat")):
        import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)

        return tvm.runtime.tensor(rng.uniform(-1.0, 1.0, size=shape).astype(np.dtype(dtype)), device)
    return tvm.runtime.tensor(np.zeros(shape, dtype=dtype), device)


def time_kernel(lib: tvm.runtime.Module, args: list, device, evaluator: Evaluator) -> list[float]:
    """Seconds per call, one sample per repeat."""
    timer = lib.time_evaluator("main", device, number=evaluator.number, repeat=evaluator.repeat,
                               min_repeat_ms=evaluator.min_repeat_ms)
    return [float(t) for t in timer(*args).results]


def outputs_match(a: list, b: list) -> str | None:
    """``None`` when two runs left the same buffers (floats within 1e-4 of the largest value,
    NaN where NaN; integers exactly), else a line saying where they differ."""
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = x.numpy(), y.numpy()
        if x.dtype.kind == "f":
            scale = max(1.0, float(np.nanmax(np.abs(x))) if x.size and not np.all(np.isnan(x)) else 1.0)
            same_nan = np.array_equal(np.isnan(x), np.isnan(y))
            err = float(np.nanmax(np.abs(x - y))) if x.size else 0.0
            if not same_nan or err > 1e-4 * scale:
                return f"buffer {i} differs by {err:.3g} (scale {scale:.3g})"
        elif not np.array_equal(x, y):
            return f"buffer {i} differs ({int(np.sum(x != y))} of {x.size} values)"
    return None


_ids = itertools.count()


@derived_object
class InProcessBuilder(PyBuilder):
    """Compiles candidates here; the "artifact path" is a key into ``self.built``."""

    def __init__(self, target) -> None:
        super().__init__()
        self.target = target
        self.built: dict[str, tvm.runtime.Module] = {}

    def build(self, build_inputs):  # noqa: D102
        results = []
        for bi in build_inputs:
            try:
                lib = compile_kernel(bi.mod, self.target)
            except Exception as e:  # noqa: BLE001 — a candidate that does not compile is a failed trial
                results.append(BuilderResult(None, f"{type(e).__name__}: {str(e).strip().splitlines()[-1:]}"))
                continue
            key = f"optc-mem:{next(_ids)}"
            self.built[key] = lib
            results.append(BuilderResult(key, None))
        return results


@derived_object
class InProcessRunner(PyRunner):
    """Times what ``InProcessBuilder`` built on ``device`` (median of the repeats)."""

    def __init__(self, builder: InProcessBuilder, device: KernelDevice, evaluator: Evaluator = Evaluator()) -> None:
        super().__init__()
        self.builder = builder
        self.device = device
        self.evaluator = evaluator

    def run(self, runner_inputs) -> list[RunnerFuture]:  # noqa: D102
        futures = []
        for ri in runner_inputs:
            lib = self.builder.built.pop(str(ri.artifact_path), None)
            if lib is None:
                futures.append(LocalRunnerFuture(None, f"no built module for {ri.artifact_path}"))
                continue
            try:
                lib = self.device.load(lib, self.builder.target)
                args = _arguments_from_info(ri.args_info, self.device.dev)
                secs = time_kernel(lib, args, self.device.dev, self.evaluator)
                futures.append(LocalRunnerFuture([statistics.median(secs)], None))
            except Exception as e:  # noqa: BLE001
                futures.append(LocalRunnerFuture(None, f"{type(e).__name__}: {e}"))
        return futures


def _arguments_from_info(args_info, device) -> list:
    rng = np.random.default_rng(0)
    return [make_array([int(d) for d in info.shape], str(info.dtype), rng, device) for info in args_info]


def cost_model(kind: str = "xgb"):
    """MetaSchedule's cost model: XGBoost when installed, else random (still a valid search)."""
    if kind == "xgb":
        try:
            import xgboost  # noqa: F401
        except ImportError:
            kind = "random"
    return ms.cost_model.CostModel.create(kind, num_tuning_cores=1) if kind == "xgb" else ms.cost_model.CostModel.create(kind)
