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
