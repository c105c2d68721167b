"""The decomposition fallback. A program holding ATen ops with no handler (or in-place ops, or
mapped ops whose handler refused one particular use) is decomposed with
``ep.run_decompositions`` using the default table minus every op that is mapped natively, so
only what must decompose does (into core ATen, which is mapped)."""

from __future__ import annotations

import operator

import torch
import torch.fx

from ...ir import UnsupportedOpError
from .registry import HANDLERS, FxNode, inlined_region, is_dropped, target_name
from .sizes import is_sym_value


class Refused(Exception):
    """A handler cannot map this use of a decomposable op: decompose it and try again."""

    def __init__(self, op, error: UnsupportedOpError):
        super().__init__(str(error))
        self.op, self.error = op, error


_DECOMPOSABLE: set | None = None


def decomposable(op) -> bool:
    """Whether torch's default decomposition table has ``op``."""
    global _DECOMPOSABLE
    if _DECOMPOSABLE is None:
        from torch.export import default_decompositions

        _DECOMPOSABLE = set(default_decompositions().keys())
    return op in _DECOMPOSABLE


def unmapped_nodes(gm: torch.fx.GraphModule, refused: set = frozenset()) -> list[FxNode]:
    """The call nodes (inlined regions included) that the handlers cannot import as they are."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        t = node.target
        if _is_inplace(t) or t in refused:
            out.append(node)  # mutations (x[...] = v, fill_, add_): functionalized by decomposition
            continue
        if t in HANDLERS or is_dropped(t) or t is operator.getitem:
            continue
        if isinstance(t, torch._ops.HigherOrderOperator):
            region = inlined_region(node)
            if region is not None:
                out += unmapped_nodes(getattr(gm, region[0].target), refused)
                continue
            out.append(node)
            continue
        if is_sym_value(node.meta.get("val")):
            continue  # size arithmetic (aten.sym_size.int, operator.mul, sym_max, ...): kept symbolic
        out.append(node)
    return out


def _is_inplace(target) -> bool:
    if not isinstance(target, torch._ops.OpOverload) or target.__name__.startswith(("detach_", "_assert")):
        return False
    try:
        return bool(target._schema.is_mutable)
    except AttributeError:  # pragma: no cover
        return False


def decompose(ep, unmapped: list[FxNode], refused: set = frozenset()):
    """``ep`` decomposed by the default table minus the natively mapped ops (bar ``refused``)."""
    from torch.export import default_decompositions

    table = default_decompositions()
    for op in HANDLERS:
        if op not in refused:
            table.pop(op, None)
    covered = [n for n in unmapped if isinstance(n.target, torch._ops.HigherOrderOperator) or n.target in table
                    or _is_inplace(n.target)]
    if not covered:
        node = unmapped[0]
        raise UnsupportedOpError(f"torch frontend: no mapping for {target_name(node.target)} (fx node {node.name})")
    return ep.run_decompositions(table)
