"""Run a built module: ``CompiledModel`` wraps a Relax VM on the CPU.

    >>> model = CompiledModel.load("out/model.so")     # the library + its signature beside it
    >>> outs = model.run({"input_ids": ids, "attention_mask": mask})

Inputs are checked before the call exactly like the reference interpreter checks them (shared
``ir.interpreter.engine.check_inputs``: names, element types, ranks, static dims, symbolic dims
bound consistently), plus the assumptions the lowering made about symbolic dims (e.g. that
``seq <= 512``); every problem is an ``OptcError`` with a one-line message, never a crash inside
TVM.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..ir.errors import OptcError
from .build import TensorSpec, signature_path
from .lower import Assumption


class RuntimeError_(OptcError):
    """A failure inside the compiled module while it ran."""


def _check(specs: Sequence[TensorSpec], given: Mapping[str, Any], assumptions: Sequence[Assumption]) -> dict[str, int]:
    from ..ir.interpreter.engine import check_inputs, numpy_dtype

    bindings = check_inputs(specs, given, "run", numpy_dtype, lambda a: np.shape(a))
    for a in assumptions:
        if a.holds(bindings) is False:
            raise OptcError(f"inputs bind {_fmt_bindings(bindings)}, but the compiled model needs {a.describe()}")
    return bindings


def _fmt_bindings(b: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(b.items())) or "no symbolic dims"


class CompiledModel:
    """A compiled module ready to run on the host CPU."""

    def __init__(self, module: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 assumptions: Sequence[Assumption] = (), *, target=None):
        import tvm
        from tvm import relax

        self._tvm = tvm
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.assumptions = list(assumptions)
        self.target = target
        self.device = tvm.cpu()
        self.vm = relax.VirtualMachine(module, self.device)
        self._main = self.vm["main"]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompiledModel":
        """Load a library written by ``CompiledModule.export`` (and its signature beside it)."""
        import tvm

        path = Path(path)
        sig = signature_path(path)
        if not path.is_file():
            raise OptcError(f"{path}: no such compiled library")
        if not sig.is_file():
            raise OptcError(f"{path}: its signature {sig.name} is missing")
        try:
            meta = json.loads(sig.read_text())
            inputs = [TensorSpec.from_json(d) for d in meta["inputs"]]
            outputs = [TensorSpec.from_json(d) for d in meta["outputs"]]
            assumptions = [Assumption(**a) for a in meta.get("assumptions", [])]
        except (ValueError, KeyError, TypeError) as e:
            raise OptcError(f"{sig}: not a valid signature ({e})") from None
        target = meta.get("target")
        if target and target.get("features"):
            from ..targets.x86 import host_cpu_flags

            flags = host_cpu_flags()
            missing = [f for f in target["features"] if flags and f not in flags]
            if missing:
                raise OptcError(f"{path} was compiled for {target.get('name')} and needs CPU features "
                                f"{', '.join(missing)} that this CPU lacks")
        try:
            lib = tvm.runtime.load_module(str(path))
        except Exception as e:  # noqa: BLE001
            raise OptcError(f"{path}: cannot load the compiled library ({str(e).strip().splitlines()[-1]})") from None
        return cls(lib, inputs, outputs, assumptions, target=target)

    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def check(self, inputs: Mapping[str, Any]) -> dict[str, int]:
        """Validate ``inputs``; returns the symbolic dim bindings."""
        return _check(self.inputs, inputs, self.assumptions)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on numpy arrays keyed by input name; numpy outputs keyed by output name."""
        self.check(inputs)
        tvm = self._tvm
        args = [self._tensor(np.array(inputs[s.name], order="C", copy=None)) for s in self.inputs]
        try:
            res = self._main(*args)
        except Exception as e:  # noqa: BLE001  (TVM's own run-time checks)
            lines = str(e).strip().splitlines()
            raise RuntimeError_(f"the compiled model failed: {lines[-1] if lines else type(e).__name__}") from None
        return {s.name: res[i].numpy() for i, s in enumerate(self.outputs)}

    __call__ = run

    def _tensor(self, a: np.ndarray):
        tvm = self._tvm
        try:
            return tvm.runtime.tensor(a, self.device)
        except Exception:  # noqa: BLE001  (e.g. uint64, which tvm.runtime.tensor refuses)
            t = tvm.runtime.empty(a.shape, str(a.dtype), self.device)
            t.copyfrom(a)
            return t
