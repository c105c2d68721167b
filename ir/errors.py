"""Errors raised by the IR. ``IRError`` is a user-facing error: the CLI prints it on one line."""


class IRError(Exception):
    """An invalid graph, op, attribute or type."""


class UnsupportedOpError(IRError):
    """An op the IR (or a frontend) does not know. The message names the op, node and opset."""
