"""Specialize a graph's named symbolic dims to sizes: the static graph one shape bucket runs.

Kernel tuning measures static shapes (MetaSchedule cannot tune a loop of unknown extent), and a
tuned artifact runs the specialized graph when its inputs have the bucket's sizes. Binding the
sizes at the IR level, before lowering, lets shape chains fold to constants and every kernel —
also those the lowering writes as TE with symbolic extents — come out static."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from .errors import IRError
from .folding import fold_graph
from .graph import Graph
from .symbolic import Polynomial, substitute_dim
from .types import Dim, TensorType


def symbolic_dims(graph: Graph) -> list[str]:
    """The named symbolic dims of the graph's inputs, in order of first appearance."""
    out: list[str] = []
    for v in graph.inputs:
        for d in v.type.shape or ():
            if isinstance(d, str) and d not in out:
                out.append(d)
    return out


def specialize_dims(graph: Graph, sizes: Mapping[str, int]) -> Graph:
    """A copy of ``graph`` with each named dim in ``sizes`` replaced by its size everywhere
    (also inside sums and products: ``past+seq`` with ``seq=1`` is ``past+1``), types re-inferred
    and shape chains folded. Raises ``IRError`` for a name no input has or a size below 1."""
    _check_names(graph, sizes)
    for name, n in sizes.items():
        if int(n) < 1:
            raise IRError(f"dim {name} must be at least 1, got {n}")
    return bind_dims(graph, sizes)


def _check_names(graph: Graph, sizes: Mapping[str, int]) -> None:
    known = symbolic_dims(graph)
    for name in sizes:
        if name not in known:
            raise IRError(f"graph {graph.name!r} has no symbolic dim {name!r} (it has: {', '.join(known) or 'none'})")


def bind_dims(graph: Graph, sizes: Mapping[str, Dim]) -> Graph:
    """``specialize_dims`` without the lower bound: a size may be 0, which only a caller that
    then removes the empty values may ask for (``ir/decoder.py``: a prefill has no past keys),
    or a dim of other symbols (a mask's ``total`` is ``past+seq``)."""
    _check_names(graph, sizes)
    for name, value in sizes.items():
        if not isinstance(value, numbers.Integral) and (not isinstance(value, str) or Polynomial.of(value) is None):
            raise IRError(f"dim {name} cannot be bound to {value!r}: a size or a dim of other names is needed")
    g = graph.clone()

    def bind(ty: TensorType | None) -> TensorType | None:
        if ty is None or ty.shape is None:
            return ty
        return TensorType(ty.dtype, tuple(substitute_dim(d, sizes) for d in ty.shape))

    for v in g.inputs:
        v.type = bind(v.type)
    for node in g.nodes:
        for out in node.outputs:
            out.type = bind(out.type)
    g.infer_types()
    fold_graph(g)
    return g
