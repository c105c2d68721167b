"""User-facing errors, and the boundary where the environment's errors become them.

Every error a user can cause — a bad file, a bad request, a full disk, an input too big to
allocate — reaches the caller as an ``OptcError`` with a one-line message, from the CLI (exit
status 2) and from the Python API alike. Anything else is a bug in optc and keeps its traceback.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

from .ir.errors import IRError, ModelFileError, OptcError, ResourceError, UnsupportedOpError

__all__ = ["OptcError", "IRError", "ModelFileError", "UnsupportedOpError", "ResourceError", "user_errors",
           "one_line"]

F = TypeVar("F", bound=Callable)


def one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def translate(e: BaseException) -> OptcError | None:
    """The ``OptcError`` an environment error stands for, or None (a bug: let it through)."""
    from .fileio import describe_os_error

    if isinstance(e, OptcError):
        return e
    if isinstance(e, MemoryError):
        return ResourceError(f"out of memory{(': ' + one_line(str(e))) if str(e) else ''} "
                             "(inputs or model too large for this machine)")
    if isinstance(e, OSError):
        return OptcError(describe_os_error(e))
    return None


def user_errors(fn: F) -> F:
    """Decorate a public API function: OSError and MemoryError raised inside become one-line
    ``OptcError``s (a disk full while writing an artifact is the user's problem to fix, not a
    traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (OSError, MemoryError) as e:
            err = translate(e)
            raise err from None

    return wrapper  # type: ignore[return-value]
