"""An artifact for another architecture, run through the native runner it ships (``optc-run``,
under qemu-user here): the same ``run`` interface as an in-process ``Artifact``, so ``optc run``,
the Python API and the tests use one command for every target.

Inputs are checked here first, exactly as the in-process runtime checks them (the runner checks
them again against the signature embedded in the library); they travel to the runner as an
uncompressed ``.npz`` in storage form and the outputs come back the same way. Emulated runs are
for correctness: their timings say nothing about the board (``optc bench --remote``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .signature import Signature
from .storage import from_storage, to_storage


class NativeArtifact:
    """A verified artifact folder whose code runs through its own ``optc-run``."""

    def __init__(self, folder: str | os.PathLike, manifest: dict, *, verify: bool = True):
        from .artifact import verify_files

        self.folder = Path(folder)
        self.manifest = manifest
        if verify:
            verify_files(self.folder, manifest)
        self.signature = Signature.from_json(manifest)
        self.inputs = list(self.signature.inputs)
        self.outputs = list(self.signature.outputs)
        self.runner = manifest.get("runner")

    @classmethod
    def scratch(cls, compiled, arch: str) -> "NativeArtifact":
        """A just-built module (``CompiledModule.load()``) in a private temp folder beside links
        to the cached runner and runtime libraries; the folder goes when the object does."""
        from ..native import build_runner, runtime_libs

        tmp = tempfile.TemporaryDirectory(prefix="optc-native-")
        folder = Path(tmp.name)
        compiled.export(folder / "model.so")
        _link_or_copy(build_runner(arch), folder / "optc-run")
        for lib in runtime_libs(arch):
            _link_or_copy(lib, folder / lib.name)
        obj = cls(folder, compiled.signature.to_json(), verify=False)
        obj._tmp = tmp  # keeps the folder alive
        return obj

    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def check(self, inputs: Mapping[str, Any]) -> dict[str, int]:
        """Validate ``inputs``; returns the symbolic dim bindings."""
        return self.signature.check(inputs)

    def run(self, inputs: Mapping[str, np.ndarray], *, extra_args: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Run once on numpy arrays keyed by input name (``extra_args`` go to the runner)."""
        from ..native import run_native
        from ..npz import read_npz

        self.check(inputs)
        with tempfile.TemporaryDirectory(prefix="optc-run-") as tmp:
            src, dst = Path(tmp, "inputs.npz"), Path(tmp, "outputs.npz")
            np.savez(src, **{s.name: to_storage(np.asarray(inputs[s.name]), s.dtype) for s in self.inputs})
            self.last = run_native(self.folder, src, dst, extra_args)
            stored = read_npz(dst)
        return {s.name: _as_declared(from_storage(stored[s.name], s.dtype), s.dtype) for s in self.outputs}

    __call__ = run

    def __repr__(self) -> str:
        t = self.signature.target or {}
        return (f"<optc artifact {self.folder} for {t.get('name')} (native runner): "
                f"{', '.join(self.input_names())} -> {', '.join(self.output_names())}>")


def _link_or_copy(src: Path, dst: Path) -> None:
    import shutil

    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def _as_declared(array: np.ndarray, dtype) -> np.ndarray:
    """The runner writes types numpy lacks (bfloat16) as unsigned bit patterns of the same width:
    view them as the declared type."""
    want = np.dtype(dtype.numpy)
    if array.dtype != want and array.dtype.kind == "u" and array.dtype.itemsize == want.itemsize:
        return array.view(want)
    return array
