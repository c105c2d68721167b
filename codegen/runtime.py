"""Run a built module: ``CompiledModel`` wraps a Relax VM on the host CPU.

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

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..ir.errors import InvalidValueError, OptcError
from ..ir.signature import check_inputs, numpy_dtype
from .checks import register_error_kind
from .signature import SIGNATURE_FUNC, ArtifactError, Signature, TensorSpec
from .storage import from_storage, to_storage  # fp8 / sub-byte arrays <-> what the module holds

register_error_kind(InvalidValueError)  # a failing run-time check of the module raises it


class RunError(OptcError):
    """A failure inside the compiled module while it ran (e.g. an index its checks refused)."""


RuntimeError_ = RunError  # the earlier name


def _fmt_bindings(b: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(b.items())) or "no symbolic dims"


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
    """A compiled module ready to run on the host CPU."""

    def __init__(self, module: Any, signature: Signature):
        import tvm
        from tvm import relax

        self._tvm = tvm
        self.signature = signature
        self.inputs: list[TensorSpec] = list(signature.inputs)
        self.outputs: list[TensorSpec] = list(signature.outputs)
        self.assumptions = list(signature.assumptions)
        self.target = signature.target
        problem = host_problem(self.target)
        if problem:
            raise ArtifactError(problem)
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(module, self.device)
        self._main = self.vm["main"]

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
        return cls(lib, read_signature(lib, path))

    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def check(self, inputs: Mapping[str, Any]) -> dict[str, int]:
        """Validate ``inputs``; returns the symbolic dim bindings."""
        if not isinstance(inputs, Mapping):
            raise OptcError(f"inputs must be a mapping of input name to array, got {type(inputs).__name__}")
        bindings = check_inputs(self.inputs, inputs, "run", numpy_dtype, lambda a: np.shape(a))
        for a in self.assumptions:
            if a.holds(bindings) is False:
                raise OptcError(f"inputs bind {_fmt_bindings(bindings)}, but the compiled model needs {a.describe()}")
        return bindings

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on numpy arrays keyed by input name; numpy outputs keyed by output name."""
        self.check(inputs)
        args = [self._tensor(_native(to_storage(inputs[s.name], s.dtype))) for s in self.inputs]
        try:
            res = self._main(*args)
        except InvalidValueError as e:  # the module's own run-time checks (codegen/checks.py)
            raise InvalidValueError(_last_line(e)) from None
        except Exception as e:  # noqa: BLE001  (TVM's own checks)
            raise RunError(f"the compiled model failed: {_last_line(e)}") from None
        return {s.name: from_storage(res[i].numpy(), s.dtype) for i, s in enumerate(self.outputs)}

    __call__ = run

    def _tensor(self, a: np.ndarray):
        tvm = self._tvm
        try:
            return tvm.runtime.tensor(a, self.device)
        except Exception:  # noqa: BLE001  (e.g. uint64, which tvm.runtime.tensor refuses)
            t = tvm.runtime.empty(a.shape, str(a.dtype), self.device)
            t.copyfrom(a)
            return t


def _native(a) -> np.ndarray:
    """A C-contiguous array in the machine's byte order (TVM takes nothing else)."""
    a = np.asarray(a)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.require(a, requirements="C")  # not ascontiguousarray: it makes a 0-d array 1-d


def read_signature(lib: Any, path: Path | str = "library") -> Signature:
    """The signature embedded in a loaded library (``codegen.build.embed_signature``)."""
    from tvm import relax

    try:
        vm = relax.VirtualMachine(lib, __import__("tvm").cpu())
        fn = vm[SIGNATURE_FUNC]
    except Exception:  # noqa: BLE001
        raise ArtifactError(f"{path}: the library carries no optc signature (built by an older optc, or not by "
                            "optc): recompile it") from None
    return Signature.loads(str(fn()))
