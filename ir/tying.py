"""Tied weights: one copy of a weight that a model reads in two layouts.

A language model whose output head is tied to its token embedding (SmolLM2, Llama-style and
GPT-2 checkpoints with ``tie_word_embeddings``) arrives with two constants holding the same
numbers: the table ``E [vocab, d]`` the embedding gathers rows from, and ``Eᵀ [d, vocab]``, the
head's weight — frontends transpose linear weights at import so that every dense layer reads
``[K, N]``. ``tie_transposed_weights`` finds a gathered table whose exact transpose is another
constant and lets the gather read that one — ``Gather(E, ids)`` becomes
``Transpose(Gather(Eᵀ, ids, axis=1))``, the same values under the same name — so ``E`` dies
(SmolLM2-135M: 162.8M -> 134.5M parameters). The frontends call it after import; the
``tie-weights`` pass runs it in the cleanup pipeline. The head stays an ordinary dense layer for
the compression passes.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .graph import Graph, Value


def _gathered_tables(graph: Graph) -> list[Value]:
    """2-D float constants read only as the table of a ``Gather`` along axis 0."""
    out = []
    for v in graph.constants.values():
        if v.const is None or v.const.ndim != 2 or not v.dtype.is_float or v in graph.outputs or not v.uses:
            continue
        if all(n.op == "Gather" and i == 0 and n.attrs["axis"] in (0, -2) for n, i in v.uses):
            out.append(v)
    return out


def _is_transpose(t: np.ndarray, e: np.ndarray) -> bool:
    """Whether ``t == e.T`` exactly (NaNs equal); a corner and a row are compared first."""
    if t.shape != e.shape[::-1] or t.dtype != e.dtype:
        return False
    if not np.array_equal(t[:, 0], e[0], equal_nan=True):
        return False
    return bool(np.array_equal(t, e.T, equal_nan=True))


def tie_transposed_weights(graph: Graph) -> list[tuple[str, str]]:
    """Rewrite gathers of a table whose transpose is another constant to read the transpose;
    returns the ``(table, transpose)`` name pairs tied."""
    tables = _gathered_tables(graph)
    if not tables:
        return []
    by_shape: dict[tuple, list[Value]] = defaultdict(list)
    for v in graph.constants.values():
        if v.const is not None and v.const.ndim == 2 and v.dtype.is_float:
            by_shape[(v.dtype, v.const.shape)].append(v)
    tied = []
    for e in tables:
        t = next((c for c in by_shape[(e.dtype, e.const.shape[::-1])] if c is not e and c.uses
                  and _is_transpose(c.const, e.const)), None)
        if t is None:
            continue
        for node, _ in list(e.uses):
            ids = node.input(1)
            if ids.type.shape is None:
                continue  # unknown index rank: no permutation to write; this gather stays
            gathered = graph.add_node("Gather", [t, ids], {"axis": 1}, before=node)
            moved = graph.add_node("Transpose", [gathered.output], {"perm": [*range(1, ids.type.rank + 1), 0]},
                                   before=node)
            old, name = node.output, node.output.name
            old.replace_all_uses_with(moved.output)
            graph.remove_node(node)
            graph.rename_value(moved.output, name)  # graph outputs and readers keep their names
        if not e.uses:
            graph.remove_constant(e)
            tied.append((e.name, t.name))
    return tied
