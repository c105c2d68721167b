"""Lossy compression passes (head pruning, FFN pruning, low-rank substitution) and what they
share: output fidelity (``fidelity``) and the structure analyses they rewrite through.

Every module here that defines a pass registers it when imported; they are all imported when
``optc.passes`` is, so a new pass only needs its own file.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
