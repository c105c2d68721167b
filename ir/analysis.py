"""Whole-graph summaries: op histogram, parameter count and FLOPs.

FLOPs are counted as a polynomial in the graph's symbolic dims (``2*batch*seq*...``), so one
number per binding of those dims can be read off without re-analysing the graph. Conventions:
a multiply-add is 2 FLOPs (MatMul, Gemm, Conv, Attention); elementwise ops and reductions cost
one per element; normalizations and softmax a few per element; pure data movement costs 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .graph import Graph, Node
from .symbolic import Polynomial as SymbolicDim, mul_dims
from .types import TensorType

# Approximate FLOPs per output element for ops that are more than one arithmetic step.
_PER_ELEMENT = {
    "Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8, "RMSNormalization": 5,
    "BatchNormalization": 2, "InstanceNormalization": 8, "GroupNormalization": 8, "Gelu": 8,
    "Silu": 4, "Sigmoid": 4, "AddLayerNorm": 9, "Tanh": 4, "Erf": 4, "Softplus": 3, "Mish": 6, "HardSwish": 3,
}
_FREE = {
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Size",
    "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad",
    "ConstantOfShape", "Range", "Cast", "CastLike", "Dropout", "ScatterND", "ScatterElements",
    "DepthToSpace", "SpaceToDepth", "NonZero", "EyeLike", "OneHot", "Trilu",
}


class Polynomial:
    """A sum of monomials over symbolic dims; None terms make the whole thing unknown."""

    def __init__(self):
        self.terms: Counter = Counter()  # tuple(sorted symbols) -> coefficient
        self.unknown = 0  # how many nodes had a cost we could not express

    def add(self, dim) -> None:
        p = SymbolicDim.of(dim)
        if p is None:
            self.unknown += 1
            return
        self.terms.update(p.terms)

    def evaluate(self, dims: dict[str, int]) -> int:
        total = 0
        for syms, coef in self.terms.items():
            v = coef
            for s in syms:
                v *= dims.get(s, 1)
            total += v
        return total

    def __str__(self) -> str:
        parts = []
        for syms, coef in sorted(self.terms.items(), key=lambda kv: (-len(kv[0]), kv[0])):
            if coef:
                parts.append("*".join(([str(coef)] if coef != 1 or not syms else []) + list(syms)))
        return " + ".join(parts) or "0"

    def symbols(self) -> set[str]:
        return {s for syms in self.terms for s in syms}


_ACTIVATION_OPS = {"relu": "Relu", "gelu": "Gelu", "gelu_tanh": "Gelu", "silu": "Silu"}


def expanded_ops(node: Node) -> Counter:
    """The standard ops a fused node stands for (``Linear`` = MatMul [+ Add] [+ activation],
    ``AddLayerNorm`` = Add + LayerNormalization, ``FusedConv`` = Conv [+ activation]); any other
    node is just itself. A histogram of these reads the same before and after fusion, so
    "13 layer norms, 6 GELUs" stays checkable once they live inside fused ops."""
    op = node.op
    if op == "Linear":
        out = Counter({"MatMul": 1, "Add": int(node.input(2) is not None)})
    elif op == "FusedConv":
        out = Counter({"Conv": 1})
    elif op == "AddLayerNorm":
        return Counter({"Add": 1, "LayerNormalization": 1})
    else:
        return Counter({op: 1})
    act = _ACTIVATION_OPS.get(node.attrs.get("activation"))
    if act:
        out[act] += 1
    return +out


def node_flops(node: Node):
    """The FLOPs of one node as a dim (int or symbolic monomial), or None when unknown."""
    op = node.op
    if op in _FREE:
        return 0
    out: TensorType = node.outputs[0].type
    if out.shape is None:
        return None
    numel = mul_dims(out.shape)
    if op == "MatMul":
        a = node.inputs[0].shape
        return None if a is None else mul_dims([2, numel, a[-1]])
    if op == "Linear":  # the dense part, plus one per element for the bias and the activation
        a = node.inputs[0].shape
        if a is None:
            return None
        epilogue = int(node.input(2) is not None) + _PER_ELEMENT.get(_ACTIVATION_OPS.get(node.attrs["activation"]), 0)
        return mul_dims([2 * a[-1] + epilogue, numel]) if isinstance(a[-1], int) else mul_dims([2, numel, a[-1]])
    if op == "Gemm":
        a = node.inputs[0].shape
        k = a[0] if node.attrs["transA"] else a[1]
        return mul_dims([2, numel, k])
    if op in ("Conv", "ConvTranspose", "FusedConv"):
        w = node.inputs[1].shape
        if op == "ConvTranspose":  # every input element meets Cout/group * kernel weights
            return mul_dims([2, mul_dims(node.inputs[0].shape), mul_dims(w[1:])])
        return mul_dims([2, numel, mul_dims(w[1:])])
    if op == "Attention":
        q, k = node.inputs[0].shape, node.inputs[1].shape
        if q is None or k is None:
            return None
        # Q·Kᵀ and P·V: 2 * B*H*Sq*Sk*D each.
        return mul_dims([4, q[0], q[1], q[2], k[2], q[3]])
    if op.startswith("Reduce") or op in ("ArgMax", "ArgMin", "CumSum", "TopK"):
        s = node.inputs[0].shape
        return None if s is None else mul_dims(s)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return mul_dims([numel] + list(node.attrs["kernel_shape"]))
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        s = node.inputs[0].shape
        return None if s is None else mul_dims(s)
    return mul_dims([_PER_ELEMENT.get(op, 1), numel])


@dataclass
class GraphSummary:
    ops: dict[str, int]
    ops_expanded: dict[str, int]  # fused nodes counted as the standard ops they stand for
    params: int
    param_bytes: int
    flops: Polynomial
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)

    def to_json(self, dims: dict[str, int] | None = None) -> dict:
        dims = dict(dims or {})
        bound = {s: dims.get(s, 1) for s in sorted(self.flops.symbols())}
        return {
            "inputs": self.inputs,
            "outputs": self.outputs,
            "ops": self.ops,
            "ops_expanded": self.ops_expanded,
            "nodes": sum(self.ops.values()),
            "params": self.params,
            "param_bytes": self.param_bytes,
            "flops": self.flops.evaluate(bound),
            "flops_dims": bound,
            "flops_expr": str(self.flops),
            "flops_unknown_nodes": self.flops.unknown,
        }


def summarize(graph: Graph) -> GraphSummary:
    ops = Counter(n.op for n in graph.nodes)
    expanded: Counter = Counter()
    for n in graph.nodes:
        expanded.update(expanded_ops(n))
    flops = Polynomial()
    for n in graph.nodes:
        flops.add(node_flops(n))
    weights = [v.const for v in graph.constants.values() if v.dtype.is_float]
    params = sum(int(w.size) for w in weights)
    nbytes = sum(int(w.nbytes) for w in weights)
    return GraphSummary(
        ops=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        ops_expanded=dict(sorted(expanded.items(), key=lambda kv: (-kv[1], kv[0]))),
        params=params,
        param_bytes=nbytes,
        flops=flops,
        inputs=[_describe(v) for v in graph.inputs],
        outputs=[_describe(v) for v in graph.outputs],
    )


def bind_dims(graph: Graph, shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The sizes of the graph's named symbolic dims, read off concrete input shapes."""
    dims: dict[str, int] = {}
    for v in graph.inputs:
        if v.name in shapes and v.type.shape is not None:
            for d, n in zip(v.type.shape, shapes[v.name]):
                if isinstance(d, str) and d.isidentifier():
                    dims.setdefault(d, int(n))
    return dims


def _describe(v) -> dict:
    shape = None if v.type.shape is None else [d if d is not None else "?" for d in v.type.shape]
    return {"name": v.name, "dtype": v.dtype.long_name, "shape": shape}
