"""Errors. Everything derived from ``OptcError`` is a user-facing error: the CLI prints its
message on one line and exits with status 2, no traceback."""


class OptcError(Exception):
    """A problem with the user's model, inputs or request (not a bug in optc)."""


class IRError(OptcError):
    """An invalid graph, op, attribute or type."""


class UnsupportedOpError(IRError):
    """An op the IR (or a frontend) does not know. The message names the op, node and opset."""


class ModelFileError(OptcError):
    """A model file that is missing, truncated, corrupt or unsafe to load."""


class ResourceError(OptcError):
    """The request needs more than the machine has (memory, disk) or allows (threads)."""


class InvalidValueError(IRError):
    """A run-time value an op cannot take: an index out of range, an integer division by zero,
    shapes that do not broadcast, a dim the compiled module was not built for. The reference
    interpreter and a compiled module's own checks raise it alike, with the same one-line
    message naming the node (``ir/checks.py``), so both backends refuse the same inputs."""
