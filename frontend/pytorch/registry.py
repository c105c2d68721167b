"""What the frontend handles natively: the handler of each mapped ATen overload, the run-time
checks it drops, and the higher-order regions it inlines.

Everything registered here is kept out of decomposition (``decomposition.py``), so the program
keeps the high-level ops (``linear``, ``scaled_dot_product_attention``, ...) that map to IR ops
directly instead of their core-ATen spelling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx

if TYPE_CHECKING:
    from .importer import Importer

aten = torch.ops.aten
FxNode = torch.fx.Node

# fn(importer, fx_node, args by schema name) -> an IR value, a list of them (None for outputs
# nothing reads), or a python / symbolic scalar
Handler = Callable[["Importer", FxNode, dict], Any]
HANDLERS: dict[Any, Handler] = {}


def overload(spec: str) -> torch._ops.OpOverload | None:
    """The ATen overload named ``packet.overload`` (``.default`` when no overload is given), or
    None when this torch version does not have it."""
    packet, _, name = spec.partition(".")
    p = getattr(aten, packet, None)
    if p is None:
        return None
    return getattr(p, name or "default", None)


def handles(*specs: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of every overload in ``specs`` that this
    torch version has."""

    def wrap(fn: Handler) -> Handler:
        for spec in specs:
            ov = overload(spec)
            if ov is not None:
                HANDLERS[ov] = fn
        return fn

    return wrap


def mapped_ops() -> list[str]:
    """The ATen overloads this frontend maps natively (they are kept out of decomposition)."""
    return sorted(str(op) for op in HANDLERS)


def target_name(target) -> str:
    """``aten.add.Tensor`` style name of an FX call target, for messages."""
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target.__name__}" if target.namespace == "aten" else str(target)
    return getattr(target, "__name__", str(target))


# ops that only check things at run time: dropped
_DROPPED_PREFIXES = ("_assert", "sym_constrain_range", "_functional_assert", "_functional_sym_constrain")


def is_dropped(target) -> bool:
    """Whether the target only checks something at run time, so the import drops it."""
    return isinstance(target, torch._ops.OpOverload) and target.__name__.startswith(_DROPPED_PREFIXES)


def inlined_region(node: FxNode) -> tuple[FxNode, tuple] | None:
    """For a higher-order op whose body runs as if it were inline (a grad-mode switch, a
    disabled autocast region): the ``get_attr`` node of its subgraph and the subgraph's
    arguments. None for any other higher-order op."""
    name = node.target.__name__
    if name == "wrap_with_set_grad_enabled":
        return node.args[1], node.args[2:]
    if name == "wrap_with_autocast" and not bool(node.args[2]):
        return node.args[4], node.args[5:]
    return None
