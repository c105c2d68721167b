"""Feed-forward structure: the intermediate neurons of each FFN and the weight slices that
belong to each — the up projection's columns (and bias; Llama's gate projection too) and the
down projection's rows, with only elementwise ops in between (``Linear{activation}``, Gelu,
an erf/tanh GELU spelled out, SiLU·up) and reshapes that keep the feature axis.

    info = ctx.analysis("ffn", graph)   # FFNAnalysis: blocks, skipped
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...ir.graph import Graph, Node, Value
from ..analysis import register_analysis
from .projections import Projection, as_projection, producer_projection
from .shape_edits import ShapeEdit, StructureError, trace_features_back

_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "Gelu", "Relu", "Silu", "Neg",
                "Cast", "Identity", "Sqrt", "Exp", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Softplus")


@dataclass
class FFNBlock:
    name: str
    ups: list[Projection]  # every projection whose outputs are the neurons (up; gate)
    down: Projection
    neurons: int
    hidden: Value  # the down projection's input (neurons on the last axis)
    edits: list[ShapeEdit] = field(default_factory=list)
    region: list[Node] = field(default_factory=list)
    residual: Value | None = None
    block_output: Value | None = None

    def summary(self) -> dict:
        return {"name": self.name, "neurons": self.neurons, "ups": [p.name for p in self.ups], "down": self.down.name}


@dataclass
class FFNAnalysis:
    blocks: list[FFNBlock]
    skipped: list[dict]


def _block(down: Projection) -> FFNBlock:
    n = down.in_features
    hidden = down.input
    value, edits, reshapes = trace_features_back(hidden, "width:ffn")
    ups: dict[str, Projection] = {}
    region: list[Node] = list(reshapes)
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        proj = producer_projection(v)
        if proj is not None:
            if proj.out_features != n:
                raise StructureError(f"{proj.name}: {proj.out_features} outputs for {n} neurons")
            ups[proj.name] = proj
            continue
        p = v.producer
        if p is None or p.op not in _ELEMENTWISE:
            raise StructureError(f"{'input' if p is None else p.op + ' ' + p.name} before {down.name} is not elementwise")
        region.append(p)
        for x in p.inputs:
            if x is None:
                continue
            if x.is_constant:
                if x.const.size != 1:
                    raise StructureError(f"{p.name}: a per-neuron constant")
                continue
            if x.shape is None or x.shape[-1] != n:
                raise StructureError(f"{p.name}: an operand without the {n} neurons")
            x2, e, r = trace_features_back(x, "width:ffn")
            edits += e
            region += r
            stack.append(x2)
    if not ups:
        raise StructureError(f"{down.name}: no up projection")
    inside = set(map(id, region)) | {id(down.node)}
    for proj in ups.values():
        for node, _ in proj.output.uses:
            if id(node) not in inside and node.op != "Shape":
                raise StructureError(f"{proj.name}: output used outside the feed-forward block ({node.name})")
    for node in region:
        for o in node.outputs:
            if o in node.graph.outputs or any(id(u) not in inside and u.op != "Shape" for u, _ in o.uses):
                raise StructureError(f"{node.name}: used outside the feed-forward block")
    from .heads import _residual

    residual, block_out = _residual(down)
    return FFNBlock(down.name, list(ups.values()), down, n, hidden, edits, region, residual, block_out)


def find_ffn_blocks(graph: Graph, min_neurons: int = 2) -> FFNAnalysis:
    """Every projection pair (up → elementwise ops → down) with at least ``min_neurons``
    intermediate features."""
    blocks, skipped = [], []
    for node in graph.nodes:
        down = as_projection(node)
        if down is None or down.in_features < min_neurons:
            continue
        src, _, _ = trace_features_back(down.input, "width:ffn") if _safe(down) else (None, None, None)
        sp = producer_projection(src) if src is not None else None
        if src is None or not ((src.producer is not None and src.producer.op in _ELEMENTWISE)
                               or (sp is not None and sp.activation != "none")):
            continue  # not an activation between two projections: not a feed-forward block
        try:
            blocks.append(_block(down))
        except StructureError as e:
            skipped.append({"core": down.name, "reason": str(e)})
    return FFNAnalysis(blocks, skipped)


def _safe(down: Projection) -> bool:
    try:
        trace_features_back(down.input, "width:ffn")
        return True
    except StructureError:
        return False


@register_analysis("ffn")
def _ffn(graph: Graph) -> FFNAnalysis:
    return find_ffn_blocks(graph)
