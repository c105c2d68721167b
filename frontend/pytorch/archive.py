"""Loading a ``.pt2`` archive (``torch.export.save``) as untrusted input.

``torch.export.load`` trusts its file: it unpickles weights and constants with
``weights_only=False`` (arbitrary code), and imports modules named inside the archive (pytree
node types, enum classes, custom autograd functions) — a crafted file next to a module of the
attacker's choosing on ``sys.path`` runs that module. optc loads archives under a guard:

* ``torch.load`` runs with ``weights_only=True`` (tensors and plain containers only);
* plain ``pickle.loads`` of "opaque" constants and TorchScript custom objects are refused;
* ``importlib.import_module``, called by torch's loader, only returns modules already imported,
  or modules on an allow-list: torch's own, and the ``transformers`` modules that register the output types of
  Hugging Face models (``ModelOutput`` subclasses, caches).

The guard patches those functions process-wide while the archive loads (the loader is not
re-entrant; neither is ``torch.export.load``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pickle
import re
import sys
from typing import Iterator

from ...ir import ModelFileError

_ALLOWED_MODULES = re.compile(
    r"^(torch(\..+)?|collections|enum|builtins|typing|"
    r"transformers\.(modeling_outputs|cache_utils|models\.[A-Za-z0-9_]+\.modeling_[A-Za-z0-9_]+))$"
)


def allowed_module(name: str) -> bool:
    """Whether an archive may make optc import module ``name``."""
    return name in sys.modules or bool(_ALLOWED_MODULES.match(name))


class RefusedContent(ModelFileError):
    """The archive needs something optc does not load from untrusted files."""


@contextlib.contextmanager
def untrusted_archive(path: str) -> Iterator[None]:
    """Apply the guard described in the module docstring while the block runs."""
    import torch

    original_import = importlib.import_module
    original_load = torch.load
    original_pickle_loads = pickle.loads
    original_obj_load = getattr(torch._C, "_pickle_load_obj", None)

    def guarded_import(name: str, package: str | None = None):
        # Only torch's own loader imports names read from the file; other code importing
        # lazily (transformers' lazy modules) is that installed package's business.
        caller = sys._getframe(1).f_globals.get("__name__", "")
        full = importlib.util.resolve_name(name, package) if name.startswith(".") else name
        if caller.startswith("torch.") and not allowed_module(full):
            raise RefusedContent(f"{path}: the archive asks to import module {full!r}, which optc does not import "
                                 "from a model file")
        return original_import(name, package)

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return original_load(*args, **kwargs)
        except pickle.UnpicklingError as e:
            raise RefusedContent(f"{path}: the archive holds pickled objects that are not tensors "
                                 f"({' '.join(str(e).split())[:160]})") from None

    def refuse_pickle(*_args, **_kwargs):
        raise RefusedContent(f"{path}: the archive holds pickled Python objects; optc does not unpickle model files")

    def refuse_script_object(*_args, **_kwargs):
        raise RefusedContent(f"{path}: the archive holds TorchScript custom objects, which optc does not load")

    importlib.import_module = guarded_import
    torch.load = weights_only_load
    pickle.loads = refuse_pickle
    if original_obj_load is not None:
        torch._C._pickle_load_obj = refuse_script_object
    try:
        yield
    finally:
        importlib.import_module = original_import
        torch.load = original_load
        pickle.loads = original_pickle_loads
        if original_obj_load is not None:
            torch._C._pickle_load_obj = original_obj_load
