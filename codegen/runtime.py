"""Run a built module: ``CompiledModel`` wraps a Relax VM on the device its target names (the
host CPU, or a CUDA GPU).

    >>> model = CompiledModel.load("out/model.so")     # the library; its signature is inside it
    >>> outs = model.run({"input_ids": ids, "attention_mask": mask})

The signature (inputs, outputs, assumptions, target) comes from the library itself
(``codegen/signature.py``), and the target's CPU features are checked before any kernel runs.
Inputs are checked before the call exactly like the reference interpreter checks them (shared
``ir.signature.check_inputs``: names, element types, ranks, static dims, symbolic dims bound
consistently), plus the assumptions the lowering made about symbolic dims (e.g. that
``seq <= 512``; a checked module also verifies them itself). Every problem is an ``OptcError``
with a one-line message, never a crash inside TVM. This module imports neither torch nor the
compiler: running an artifact needs TVM's runtime and numpy only.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def _import_tvm_without_torch() -> None:
    """Import TVM's runtime without torch. ``tvm_ffi`` imports torch eagerly whenever it is
    installed (a workaround for a symbol clash on Windows) and optional torch interop follows
    suit: seconds of start-up and a GiB of address space for a process that only runs a model
    on numpy arrays. Skipped when torch is already loaded (the compiler's process)."""
    if "tvm" in sys.modules or "torch" in sys.modules:
        return

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".", 1)[0] in ("torch", "torch_c_dlpack_ext"):
                raise ImportError(f"{name} is not imported by optc's runtime")
            return None

    finder = NoTorch()
    sys.meta_path.insert(0, finder)
    try:
        import tvm  # noqa: F401
        import tvm.relax  # noqa: F401
    finally:
        sys.meta_path.remove(finder)


_import_tvm_without_torch()

from ..ir.errors import InvalidValueError, OptcError  # noqa: E402
from .checks import register_error_kind  # noqa: E402
from .signature import SIGNATURE_FUNC, ArtifactError, Signature, TensorSpec  # noqa: E402
from .storage import from_storage, to_storage  # noqa: E402   # fp8 / sub-byte arrays <-> what the module holds

register_error_kind(InvalidValueError)  # a failing run-time check of the module raises it


class RunError(OptcError):
    """A failure inside the compiled module while it ran (e.g. an index its checks refused)."""


RuntimeError_ = RunError  # the earlier name


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def host_problem(target: Mapping[str, Any] | None) -> str | None:
    """Why a module built for ``target`` (its description) cannot run on this machine, or None."""
    if not target:
        return None
    from ..targets import host_problem as _host_problem

    return _host_problem(dict(target))


class CompiledModel:
    """A compiled module ready to run in this process."""

    def __init__(self, module: Any, signature: Signature, vm: Any = None, function: str = "main"):
        import tvm
        from tvm import relax

        from ..targets import device_for

        self._tvm = tvm
        self._module = module
        self.function = function
        self.signature = signature
        self.inputs: list[TensorSpec] = list(signature.inputs)
        self.outputs: list[TensorSpec] = list(signature.outputs)
        self.assumptions = list(signature.assumptions)
        self.target = signature.target
        problem = host_problem(self.target)
        if problem:
            raise ArtifactError(problem)
        self.device = device_for(self.target)
        self.vm = vm if vm is not None else relax.VirtualMachine(module, self.device)
        self._main = self.vm[function]

    def step(self, name: str) -> "CompiledModel":
        """Another function of the same module (a decoder's ``"decode"``), sharing its VM and
        weights, with that function's signature."""
        return CompiledModel(self._module, self.signature.entry(name), self.vm, name)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompiledModel":
        """Load a library written by ``CompiledModule.export``. The caller vouches for the file
        (``codegen.artifact.load`` verifies checksums first): a corrupt library can crash the
        process while it is mapped."""
        import tvm

        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: no such compiled library")
        try:
            lib = tvm.runtime.load_module(str(path))
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"{path}: cannot load the compiled library ({_last_line(e)})") from None
        vm = open_vm(lib, None, path)
        return cls(lib, read_signature(vm, path), vm)

    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def check(self, inputs: Mapping[str, Any]) -> dict[str, int]:
        """Validate ``inputs``; returns the symbolic dim bindings."""
        return self.signature.check(inputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on numpy arrays keyed by input name; numpy outputs keyed by output name."""
        self.check(inputs)
        res = self.run_tensors([self._tensor(_native(to_storage(inputs[s.name], s.dtype))) for s in self.inputs])
        return {s.name: from_storage(res[i].numpy(), s.dtype) for i, s in enumerate(self.outputs)}

    def run_tensors(self, args: list) -> list:
        """Run on device tensors in input order, unchecked (the caller made them from checked
        arrays, or from this module's own outputs); device tensors in output order. A generation
        loop feeds each step's cache back without copying it through numpy."""
        try:
            res = call_fork_safe(self._main, args)
        except InvalidValueError as e:  # the module's own run-time checks (codegen/checks.py)
            raise InvalidValueError(_last_line(e)) from None
        except Exception as e:  # noqa: BLE001  (TVM's own checks)
            raise RunError(f"the compiled model failed: {_last_line(e)}") from None
        return [res[i] for i in range(len(self.outputs))]

    __call__ = run

    def _tensor(self, a: np.ndarray):
        tvm = self._tvm
        try:
            return tvm.runtime.tensor(a, self.device)
        except Exception:  # noqa: BLE001  (e.g. uint64, which tvm.runtime.tensor refuses)
            t = tvm.runtime.empty(a.shape, str(a.dtype), self.device)
            t.copyfrom(a)
            return t


# -- fork safety ----------------------------------------------------------------------------------
# TVM's CPU thread pool belongs to the OS thread that first runs a parallel kernel, and it does not
# survive fork(): in a child, the thread that forked still holds the parent's pool, whose worker
# threads were not copied, and the next parallel kernel spins forever waiting for them (a process
# that ran a model with TVM_NUM_THREADS=2, then forked — multiprocessing's default on Linux —
# hung). A thread started in the child gets a pool of its own, so there the forking thread hands
# its calls to one.
_stale_pool_thread: int | None = None
_child_executor = None


def _after_fork_in_child() -> None:
    global _stale_pool_thread, _child_executor
    _stale_pool_thread, _child_executor = threading.get_ident(), None


os.register_at_fork(after_in_child=_after_fork_in_child)


def call_fork_safe(fn, args):
    """``fn(*args)`` — on a thread with a working TVM thread pool (see above)."""
    global _child_executor
    if _stale_pool_thread != threading.get_ident():
        return fn(*args)
    if _child_executor is None:
        from concurrent.futures import ThreadPoolExecutor

        _child_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optc-tvm")
    return _child_executor.submit(fn, *args).result()


def _native(a) -> np.ndarray:
    """A C-contiguous array in the machine's byte order (TVM takes nothing else)."""
    a = np.asarray(a)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.require(a, requirements="C")  # not ascontiguousarray: it makes a 0-d array 1-d


def open_vm(lib: Any, target: Mapping[str, Any] | None, path: Path | str = "library") -> Any:
    """A Relax VM for a loaded library on the device ``target`` (a description) runs on."""
    from tvm import relax

    from ..targets import device_for

    try:
        return relax.VirtualMachine(lib, device_for(target))
    except Exception as e:  # noqa: BLE001
        raise ArtifactError(f"{path}: not a compiled optc module ({_last_line(e)})") from None


def read_signature(vm: Any, path: Path | str = "library") -> Signature:
    """The signature embedded in a library (``codegen.build.embed_signature``), read through its VM."""
    try:
        fn = vm[SIGNATURE_FUNC]
    except Exception:  # noqa: BLE001
        raise ArtifactError(f"{path}: the library carries no optc signature (built by an older optc, or not by "
                            "optc): recompile it") from None
    return Signature.loads(str(fn()))
