"""The entry points: import an ``ExportedProgram``, a ``.pt2`` file, or an ``nn.Module`` (exported
here). An import that meets unmapped ops decomposes them first, and one whose handler refuses a
particular use of a mapped op is retried with that op decomposed too."""

from __future__ import annotations

import importlib
import logging
import os
import re
import zipfile
from typing import Any, Sequence

import torch

from ...ir import Graph, ModelFileError, UnsupportedOpError
from ...ir.verifier import verify
from .archive import allowed_module, untrusted_archive
from .decomposition import Refused, decompose, unmapped_nodes
from .importer import Importer
from .naming import names_from_spec, recover_dim_names
from .registry import target_name


def import_exported_program(ep: "torch.export.ExportedProgram", *, dim_names: dict[str, str] | None = None,
                            name: str = "main") -> Graph:
    """Convert an exported program to an IR graph (see ``optc.frontend.pytorch``).

    ``dim_names`` renames symbolic dims; keys are shape-environment symbols (``"s43"``) or the
    recovered ``torch.export.Dim`` names (``"seq"``)."""
    return _import(ep, dim_names or {}, name, {})


def load_pt2(path: str | os.PathLike, *, dim_names: dict[str, str] | None = None) -> Graph:
    """Load a ``.pt2`` written by ``torch.export.save`` and import it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a torch.export archive (not a zip file; truncated?)")
    try:
        ep = _load_archive(path)
    except _UnregisteredType as e:
        # The outputs are a registered pytree class (e.g. a transformers ModelOutput): its
        # module registers it on import. Import it — only from the allow-list of installed
        # packages (archive.py): a module named by the file is never imported blindly.
        if not allowed_module(e.module):
            raise ModelFileError(f"{path}: its outputs use {e.type_name}; optc does not import module "
                                 f"{e.module!r} named by a model file") from None
        try:
            importlib.import_module(e.module)
        except ImportError:
            raise ModelFileError(f"{path}: its outputs use {e.type_name}, which needs the package {e.module.split('.')[0]!r}") from None
        ep = _load_archive(path)
    return import_exported_program(ep, dim_names=dim_names, name=_graph_name(path))


def export_module(module: torch.nn.Module, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                  dynamic_shapes: Any = None, *, dim_names: dict[str, str] | None = None) -> Graph:
    """``torch.export.export(module, args, kwargs, dynamic_shapes=..., strict=False)`` in eval
    mode, then import. ``Dim`` names in ``dynamic_shapes`` name the graph's symbolic dims."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ep = torch.export.export(module, tuple(args), dict(kwargs or {}), dynamic_shapes=dynamic_shapes, strict=False)
    finally:
        module.train(was_training)
    return _import(ep, dim_names or {}, type(module).__name__, names_from_spec(ep, dynamic_shapes))


def _import(ep, dim_names: dict[str, str], name: str, spec_names: dict[str, str]) -> Graph:
    names = recover_dim_names(ep)
    names.update(spec_names)
    original = ep
    # Natively mapped ops whose handler refused a particular use (an adaptive pool to size 2,
    # ...): decomposed like unmapped ops on the next attempt.
    refused: set = set()
    while True:
        ep = original
        unmapped = unmapped_nodes(ep.graph_module, refused)
        if unmapped:
            ep = decompose(ep, unmapped, refused)
            still = unmapped_nodes(ep.graph_module, refused)
            if still:
                node = still[0]
                raise UnsupportedOpError(
                    f"torch frontend: no mapping for {target_name(node.target)} (fx node {node.name})"
                )
        try:
            graph = Importer(ep, names, dim_names, name).run()
            verify(graph)  # an importer bug must surface here, not as a wrong answer later
            return graph
        except Refused as r:
            if r.op in refused:
                raise r.error from None
            refused.add(r.op)


class _UnregisteredType(Exception):
    def __init__(self, type_name: str):
        self.type_name = type_name
        self.module = type_name.rsplit(".", 1)[0]


class _Capture(logging.Handler):
    """Keeps the exception torch.export.load logs (and would otherwise print as a traceback)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def _load_archive(path: str):
    export_log = logging.getLogger("torch.export")
    capture, handlers, propagate = _Capture(), export_log.handlers[:], export_log.propagate
    export_log.handlers = [capture]  # torch logs its own traceback before raising: keep it
    export_log.propagate = False
    try:
        with untrusted_archive(path):
            return torch.export.load(path)
    except ModelFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad file for the user
        cause = capture.errors[-1] if capture.errors else e
        m = re.search(r"Deserializing (\S+) in pytree is not registered", str(cause))
        if m:
            raise _UnregisteredType(m.group(1)) from None
        raise ModelFileError(f"{path}: not a loadable torch.export archive ({type(cause).__name__}: {_first_line(cause)})") from None
    finally:
        export_log.handlers = handlers
        export_log.propagate = propagate


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _graph_name(path: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", os.path.splitext(os.path.basename(path))[0])
    return base or "main"
