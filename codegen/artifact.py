"""The compiled artifact: a folder holding the library and a manifest.

    out/
      model.so          the compiled module (TVM Relax VM executable)
      model.so.json     its run-time signature (inputs, outputs, assumptions, target)
      manifest.json     what was built, from what, with what: for people and for ``optc.load``

The folder is written atomically: everything goes into a temp folder beside the destination,
which is renamed into place only when complete, so a failed compile never leaves a half-written
artifact (and never destroys the previous one).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..ir.errors import OptcError

FORMAT = "optc-artifact/1"
LIBRARY = "model.so"
MANIFEST = "manifest.json"


class ArtifactError(OptcError):
    """A missing, incomplete or incompatible artifact folder."""


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """sha256 and size of a model file (and of its external data files, for ONNX)."""
    path = Path(path)
    files = [path] + sorted(path.parent.glob(path.name + ".data"))
    out = {"path": str(path.resolve()), "files": {}}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out["files"][f.name] = {"sha256": h.hexdigest(), "bytes": f.stat().st_size}
    return out


def versions() -> dict[str, str]:
    import tvm

    from .. import __version__

    return {"optc": __version__, "tvm": tvm.__version__, "python": platform.python_version()}


def write_artifact(compiled, out_dir: str | os.PathLike, *, model: str | os.PathLike | None = None,
                   pipeline: str | None = None, reports: list | None = None) -> Path:
    """Write ``compiled`` (a ``codegen.build.CompiledModule``) as an artifact folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        compiled.export(tmp / LIBRARY)
        manifest = {
            "format": FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **compiled.signature(),
            "library": LIBRARY,
            "versions": versions(),
            "model": file_fingerprint(model) if model is not None else None,
            "pipeline": pipeline,
            "passes": reports or [],
            "codegen": _codegen_pipeline(compiled.target),
            "build": {"seconds": compiled.timings, "fallback_scheduled": compiled.fallback_funcs,
                      "unscheduled": compiled.unscheduled, "notes": list(compiled.notes)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _usual_permissions(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _codegen_pipeline(target) -> dict:
    """The kernel choices that ran: optc's Relax passes and schedule rules for this target."""
    from . import schedules

    def names(items):
        return [type(x).__name__ if not hasattr(x, "info") else str(x.info.name) for x in items]

    return {"relax_passes": names(schedules.relax_passes(target)), "schedule_rules": names(schedules.schedule_rules(target))}


def _usual_permissions(folder: Path) -> None:
    """Temp files and folders are created private; the artifact gets the umask's defaults."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, (0o777 if f.suffix == ".so" else 0o666) & ~umask)


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old.{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such artifact folder")
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: not an optc artifact ({MANIFEST} is missing)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{folder}: artifact format {manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


class Artifact:
    """A loaded artifact: ``run({name: ndarray}) -> {name: ndarray}`` plus its manifest."""

    def __init__(self, folder: str | os.PathLike):
        from .runtime import CompiledModel

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        built_with = self.manifest.get("versions", {}).get("tvm")
        import tvm

        if built_with and built_with != tvm.__version__:
            raise ArtifactError(f"{self.folder} was built with TVM {built_with}; this runtime is TVM {tvm.__version__}: recompile it")
        self.model = CompiledModel.load(self.folder / self.manifest.get("library", LIBRARY))

    @property
    def input_names(self) -> list[str]:
        return self.model.input_names()

    @property
    def output_names(self) -> list[str]:
        return self.model.output_names()

    def run(self, inputs):
        return self.model.run(inputs)

    __call__ = run

    def __repr__(self) -> str:
        t = self.manifest.get("target") or {}
        return f"<optc artifact {self.folder} for {t.get('name')}: {', '.join(self.input_names)} -> {', '.join(self.output_names)}>"


def load(folder: str | os.PathLike) -> Artifact:
    """Load a compiled artifact folder (``optc.load``)."""
    return Artifact(folder)

