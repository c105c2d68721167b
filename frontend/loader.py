"""Load a model file of any supported format into the IR, chosen by its suffix."""

from __future__ import annotations

import os
from pathlib import Path

from ..ir import Graph, ModelFileError

SUFFIXES = (".onnx", ".pt2")


def load_model(path: str | os.PathLike) -> Graph:
    """Import an ``.onnx`` or ``.pt2`` (``torch.export.save``) file."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, expected a model file ({', '.join(SUFFIXES)})")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .onnx_import import import_onnx

        return import_onnx(path)
    if suffix == ".pt2":
        from .pytorch import load_pt2

        return load_pt2(path)
    raise ModelFileError(f"{path}: unknown model format {suffix or '(no suffix)'}; expected one of {', '.join(SUFFIXES)}")
