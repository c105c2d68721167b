"""optc: a compiler-style graph optimizer for neural networks.

The package root re-exports the everyday API; submodules (``optc.ir``, ``optc.frontend``, ...)
are the layers DESIGN.md describes.
"""

__version__ = "0.1.0"

from .api import (compile, load, load_inputs, load_model, optimize, run_reference, save_model,  # noqa: E402
                  save_outputs)
from .errors import OptcError  # noqa: E402
from .tuning import tune  # noqa: E402  (every user-facing error; the CLI exits 2 with its one line)

__all__ = ["__version__", "OptcError", "compile", "load", "load_inputs", "load_model", "optimize", "run_reference",
           "save_model", "save_outputs", "tune"]
