"""Sibling quantized projections → one wider projection: ``QLinear`` nodes with quantized
activations that read the same input become one node over the concatenated weights, and a
``Split`` of its output gives each old consumer its columns back:

    QLinear(x, Wq, sq, bq), QLinear(x, Wk, sk, bk), QLinear(x, Wv, sv, bv)
        ->  Split(QLinear(x, [Wq | Wk | Wv], [sq | sk | sv], [bq | bk | bv]), [Nq, Nk, Nv], axis=-1)

Why: Q, K and V of an attention block read the same activations. As three int8 GEMMs each
quantizes the input again and runs a narrow kernel; as one ``[K, 3N]`` GEMM the input is
quantized once and the kernel runs at a wide layer's efficiency (x86 AVX2, MiniLM at seq 128:
three ``[384, 384]`` layers with their quantization 3 x 202 us, one ``[384, 1152]`` 506 us).
Float ``Linear`` layers are left apart: the fp32 dense kernel's per-flop speed does not depend
on N there (97 / 92 / 89 GFLOP/s at N = 384 / 1152 / 1536), so merging them would only add the
``Split`` copy.

Exact: every output column is computed by the same arithmetic as before (per-output-channel
quantities — bias, weight scales — are concatenated with their columns). Nodes merge only when
everything applied per input or per row agrees: the activation epilogue, the weight's dtype and
group size, the activation quantization (mode, code range, static scale and zero point,
SmoothQuant multiplier — compared by value). The precision passes smooth siblings with one
multiplier (``QuantModel``) so that they can.

Not in the default pipeline: the compression passes work per projection (head pruning, low-rank,
per-layer precision) and need the projections apart. Codegen runs it on its own copy of the graph
before lowering (``codegen/build.py``), so what users inspect and export keeps one node per layer.
"""

from __future__ import annotations

import numpy as np

from optc.ir.graph import Graph, Node, Value

from ._match import cleanup, replace

# QLinear inputs: X, W, w_scale, w_zero_point, B, x_scale, x_zero_point, x_smooth.
_PER_COLUMN = (2, 3)  # concatenated along N with the weight
_PER_INPUT = (5, 6, 7)  # must be equal across siblings
_BIAS = 4


def _consts(node: Node, indices) -> list[np.ndarray | None] | None:
    """The constants at ``indices`` (None where absent); None if one is present but not constant."""
    out = []
    for i in indices:
        v = node.input(i)
        if v is not None and v.const is None:
            return None
        out.append(None if v is None else v.const)
    return out


def _key(node: Node) -> tuple | None:
    """What must agree for ``node`` to merge with a sibling (None: it is not worth merging)."""
    if node.op != "QLinear" or node.attrs["act_quant"] == "none" or node.input(0) is None:
        return None
    w, x = node.input(1), node.input(0)
    if w is None or w.const is None or w.const.ndim != 2:
        return None
    per_column, per_input = _consts(node, _PER_COLUMN + (_BIAS,)), _consts(node, _PER_INPUT)
    if per_column is None or per_input is None:
        return None
    a = node.attrs
    same_input = tuple(None if c is None else (c.dtype.str, c.shape, c.tobytes()) for c in per_input)
    present = tuple(c is not None for c in per_column[:2])
    return (x, a["activation"], w.dtype, a["group_size"], a["act_quant"], a["act_qmax"], present, same_input)


def _concat_columns(parts: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate(parts, axis=-1))


def _merged_bias(nodes: list[Node]) -> np.ndarray | None:
    """The concatenated bias; a sibling without one contributes zeros (adding 0.0 is exact)."""
    biases = [n.input(_BIAS).const if n.input(_BIAS) is not None else None for n in nodes]
    if all(b is None for b in biases):
        return None
    dtype = next(b.dtype for b in biases if b is not None)
    return _concat_columns([b.reshape(-1) if b is not None else np.zeros(n.input(1).const.shape[1], dtype)
                            for b, n in zip(biases, nodes)])


def _merge(graph: Graph, nodes: list[Node], renames: list) -> None:
    first = nodes[0]
    weight = graph.add_constant(_concat_columns([n.input(1).const for n in nodes]),
                                graph.unique_name("+".join(n.input(1).name for n in nodes)))
    inputs: list[Value | None] = [first.input(0), weight, None, None, None, None, None, None]
    for i in _PER_COLUMN:
        if first.input(i) is not None:
            inputs[i] = graph.add_constant(_concat_columns([n.input(i).const for n in nodes]),
                                           graph.unique_name(f"{weight.name}.{first.input(i).name.rsplit('.', 1)[-1]}"))
    for i in _PER_INPUT:
        inputs[i] = first.input(i)
    bias = _merged_bias(nodes)
    if bias is not None:
        inputs[_BIAS] = graph.add_constant(bias, graph.unique_name(f"{weight.name}.bias"))
    merged = graph.add_node("QLinear", inputs, dict(first.attrs), name=f"{first.name}.merged", before=first)
    widths = [int(n.input(1).const.shape[1]) for n in nodes]
    split = graph.add_node("Split", [merged.output, graph.add_constant(np.asarray(widths, np.int64))],
                           {"axis": -1}, num_outputs=len(nodes), before=first)
    for n, out in zip(nodes, split.outputs):
        replace(n.output, out, renames)


def merge_sibling_projections(graph: Graph) -> int:
    """Merge every group of sibling projections (see the module docstring); returns the number
    of projections that were merged away."""
    groups: dict[tuple, list[Node]] = {}
    for node in graph.nodes:
        key = _key(node)
        if key is not None:
            groups.setdefault(key, []).append(node)
    renames: list = []
    count = 0
    for nodes in groups.values():
        if len(nodes) > 1:
            _merge(graph, nodes, renames)
            count += len(nodes) - 1
    return cleanup(graph, count, renames)
