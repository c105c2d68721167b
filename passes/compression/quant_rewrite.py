"""The graph rewrite of quantization: a projection (``Linear``, ``MatMul`` (+ bias ``Add``),
``Gemm``) by a float weight becomes one ``QLinear`` holding the weight in low precision, with the
bias and the activation epilogue folded in:

    Linear(x, W, b){act}  /  Add(MatMul(x, W), b)  /  Gemm(x, W, C)
        ->  QLinear(x, q, s, z?, b){act, group_size, act_quant, act_qmax}

The new weight constants are named after the old one (``<w>`` keeps its name for the codes,
``<w>.scale``, ``<w>.zero_point``), so reports and users still find the layer by its weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ...ir.graph import Graph
from .projections import Projection


@dataclass(frozen=True)
class LayerQuant:
    """How one projection is stored: float16/bfloat16 values, or integer codes with a scale (and a
    zero point) per output channel or per group, and what happens to its activations."""

    weight: np.ndarray  # [K, N]: float16 / bfloat16 values, or integer codes (int8 / int4 / uint4 dtypes)
    scale: np.ndarray | None = None  # float32 [N] or [ceil(K/G), N]
    zero_point: np.ndarray | None = None  # the codes' dtype (float32 on the min/max grid), the scale's shape
    group_size: int = 0
    act_quant: str = "none"  # none | dynamic | static
    act_qmax: int = 255
    x_scale: float | None = None  # static activations: one scale and zero point
    x_zero_point: int | None = None
    x_smooth: np.ndarray | None = None  # float32 [K]: SmoothQuant's per-channel activation multiplier

    @property
    def nbytes(self) -> int:
        """Bytes in packed storage: codes plus scales and zero points."""
        from ...ir.types import DType

        def size(a):
            return 0 if a is None else DType.from_numpy(a.dtype).nbytes(a.size)

        return size(self.weight) + size(self.scale) + size(self.zero_point)


def _const(graph: Graph, array: np.ndarray, name: str):
    return graph.add_constant(np.asarray(array), graph.unique_name(name))  # (ascontiguousarray makes 0-d 1-d)


def quantize_projection(graph: Graph, proj: Projection, q: LayerQuant) -> None:
    """Replace ``proj`` by a ``QLinear`` storing ``q``. Types downstream are stale until
    ``graph.infer_types()``."""
    node, w = proj.node, proj.weight
    name = w.name
    bias = proj.bias_vector()
    inputs = [proj.input, None, None, None, None, None, None, None]
    inputs[2] = _const(graph, q.scale.astype(np.float32), f"{name}.scale") if q.scale is not None else None
    inputs[3] = _const(graph, q.zero_point, f"{name}.zero_point") if q.zero_point is not None else None
    inputs[4] = _const(graph, bias.astype(np.float32), f"{name}.bias") if bias is not None else None
    if q.act_quant == "static":
        inputs[5] = _const(graph, np.float32(q.x_scale), f"{name}.x_scale")
        inputs[6] = _const(graph, np.uint8(q.x_zero_point), f"{name}.x_zero_point")
    if q.x_smooth is not None:
        inputs[7] = _const(graph, q.x_smooth.astype(np.float32), f"{name}.x_smooth")
    inputs[1] = _const(graph, q.weight, f"{name}.q")
    out = proj.output
    qnode = graph.add_node("QLinear", inputs, {
        "activation": proj.activation, "group_size": int(q.group_size), "act_quant": q.act_quant,
        "act_qmax": int(q.act_qmax)}, name=f"{node.name}.q", before=node,
        output_names=[graph.unique_name(f"{out.name}.q")])
    out.replace_all_uses_with(qnode.output)
    old_name = out.name
    for dead in (proj.bias_add, node):
        if dead is not None:
            graph.remove_node(dead)
    graph.rename_value(qnode.output, old_name)  # consumers and graph outputs keep the value's name
    for c in (w, proj.bias):
        if c is not None and not c.uses and c not in graph.outputs and c.name in graph.constants:
            graph.remove_constant(c)
    if inputs[1].name != name and name not in graph.constants:
        graph.rename_value(inputs[1], name)


def float_weight(w: np.ndarray, precision: str) -> np.ndarray:
    """``w`` rounded to float16 or bfloat16 (to nearest even, as every converter does)."""
    return w.astype(np.float16 if precision == "fp16" else ml_dtypes.bfloat16)
