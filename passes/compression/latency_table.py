"""The latency side of ``assign-precision``: each layer's time at each candidate precision, from
the target's measured cost table (``codegen/cost_table.py``; compiled and timed once per machine,
then cached), at the calibration's rows per call."""

from __future__ import annotations

from typing import Iterable


def layer_latencies(layers: Iterable, precisions: list[str], config, target, rows: int = 128) -> dict:
    """``{"latency": {(layer name, precision): seconds}, "source": ...}``."""
    from ...codegen.cost_table import dense_costs

    if target is None:
        from ...ir.errors import OptcError

        raise OptcError("a latency budget needs a target (--target) whose kernels the cost table measures")
    layers = list(layers)
    shapes = [(l.in_features, l.out_features, rows) for l in layers]
    costs = dense_costs(shapes, list(dict.fromkeys(precisions + ["fp32"])), config, target)
    table = {(l.name, p): costs[(l.in_features, l.out_features, rows, p)] for l in layers for p in set(precisions) | {"fp32"}}
    return {"latency": table, "source": f"measured on {getattr(target, 'name', target)} kernels, {rows} rows per call"}
