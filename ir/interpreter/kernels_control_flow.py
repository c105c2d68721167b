"""Kernels of the control-flow ops (ir/ops/control_flow.py): ``If``, ``Loop`` and ``Scan``.

A body runs through the same engine as the outer graph (an ``Interpreter`` of the subgraph,
built once per node execution and reused across iterations), on compute-representation tensors,
with its declared input types checked on entry and its node types checked as it runs. The
captured outer values are the node's trailing inputs (ir/subgraph.py).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from ..errors import IRError, ResourceError
from ..graph import Graph, Node
from ..ops.control_flow import scan_axes
from .engine import COMPUTE_DTYPE, Interpreter, kernel


class SubgraphRunner:
    """Runs one subgraph repeatedly on compute tensors (positional inputs, positional outputs)."""

    def __init__(self, node: Node, key: str):
        self.node = node
        self.key = key
        self.graph: Graph = node.attrs[key]
        self.interp = Interpreter(self.graph)

    def __call__(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        g = self.graph
        where = f"node {self.node.name} ({self.node.op}) {self.key}"
        if len(args) != len(g.inputs):
            raise IRError(f"{where}: got {len(args)} inputs, the subgraph takes {len(g.inputs)}")
        bindings: dict[str, int] = {}
        feed = {}
        for v, t in zip(g.inputs, args):
            want = COMPUTE_DTYPE[v.dtype]
            if t.dtype != want:
                raise IRError(f"{where}: input %{v.name} is {v.type}, got a {t.dtype} tensor")
            shape = tuple(t.shape)
            if v.shape is not None:
                if len(shape) != len(v.shape):
                    raise IRError(f"{where}: input %{v.name} is {v.type}, got shape {list(shape)}")
                for d, n in zip(v.shape, shape):
                    if isinstance(d, int) and d != n:
                        raise IRError(f"{where}: input %{v.name} is {v.type}, got shape {list(shape)}")
                    if isinstance(d, str) and d.isidentifier():
                        if bindings.setdefault(d, n) != n:
                            raise IRError(f"{where}: input %{v.name} binds {d}={n}, another input bound {d}={bindings[d]}")
            feed[v.name] = t
        return [t for _, t in self.interp._execute(feed, {}, bindings)]


def _scalar(t: torch.Tensor | None, node: Node, what: str):
    if t is None:
        return None
    if t.numel() != 1:
        raise IRError(f"node {node.name} ({node.op}): {what} must hold one element, got shape {list(t.shape)}")
    return t.reshape(-1)[0].item()


def _like(param_type, value, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor shaped as the body declares it ([] or [1])."""
    t = torch.tensor(value, dtype=dtype)
    if param_type.shape is not None and len(param_type.shape) == 1:
        t = t.reshape(1)
    return t


def _stack(node: Node, k: int, items: list[torch.Tensor], body_out, axis: int = 0) -> torch.Tensor:
    if items:
        try:
            return torch.stack(items, dim=axis)
        except RuntimeError:
            shapes = sorted({tuple(t.shape) for t in items})
            raise IRError(f"node {node.name} ({node.op}): scan output {k} changes shape across iterations "
                          f"({', '.join(map(str, map(list, shapes)))})") from None
    t = body_out.type
    if not t.is_static:
        raise IRError(f"node {node.name} ({node.op}): no iteration ran and scan output {k} has no static shape ({t})")
    shape = list(t.shape)
    shape.insert(axis, 0)
    return torch.zeros(shape, dtype=COMPUTE_DTYPE[t.dtype])


@kernel("If")
def _if(node: Node, cond: torch.Tensor, *captures: torch.Tensor):
    k = node.attrs["then_branch"].num_captures
    caps = list(captures)  # then-branch captures, then else-branch captures
    if _scalar(cond, node, "the condition"):
        return tuple(SubgraphRunner(node, "then_branch")(caps[:k]))
    return tuple(SubgraphRunner(node, "else_branch")(caps[k:]))


MAX_LOOP_ENV = "OPTC_MAX_LOOP_ITERATIONS"


def max_loop_iterations() -> int:
    """The most iterations one Loop may run: a model whose loop never ends (a condition that
    stays true, a trip count of 2**63) must give an error, not hang."""
    try:
        return max(1, int(os.environ.get(MAX_LOOP_ENV, "1000000")))
    except ValueError:
        return 1_000_000


@kernel("Loop")
def _loop(node: Node, *ins: torch.Tensor | None):
    body: Graph = node.attrs["body"]
    n_caps = body.num_captures
    explicit, caps = list(ins[:len(ins) - n_caps]), list(ins[len(ins) - n_caps:])
    trip = _scalar(explicit[0], node, "M") if explicit else None
    keep = _scalar(explicit[1], node, "cond") if len(explicit) > 1 else None
    keep = True if keep is None else bool(keep)
    states = explicit[2:]
    n_scan = len(node.outputs) - len(states)
    run = SubgraphRunner(node, "body")
    iter_t, cond_t = body.params[0].type, body.params[1].type
    scans: list[list[torch.Tensor]] = [[] for _ in range(n_scan)]
    i = 0
    limit = max_loop_iterations()
    while keep and (trip is None or i < trip):
        if i >= limit:
            raise ResourceError(f"node {node.name} (Loop): more than {limit:,} iterations; optc stops runaway loops "
                                f"(set {MAX_LOOP_ENV} to allow more)")
        out = run([_like(iter_t, i, torch.int64), _like(cond_t, True, torch.bool), *states, *caps])
        keep = bool(_scalar(out[0], node, "the body's condition output"))
        states = out[1:1 + len(states)]
        for k in range(n_scan):
            scans[k].append(out[1 + len(states) + k])
        i += 1
    n_state = len(states)
    return tuple(states) + tuple(_stack(node, k, scans[k], body.outputs[1 + n_state + k]) for k in range(n_scan))


@kernel("Scan")
def _scan(node: Node, *ins: torch.Tensor):
    body: Graph = node.attrs["body"]
    n_caps = body.num_captures
    explicit, caps = list(ins[:len(ins) - n_caps]), list(ins[len(ins) - n_caps:])
    m = node.attrs["num_scan_inputs"]
    n_state = len(explicit) - m
    states, xs = explicit[:n_state], explicit[n_state:]
    n_scan = len(node.outputs) - n_state
    in_axes = [a % x.dim() for a, x in zip(scan_axes(node.attrs, "scan_input_axes", m), xs)]
    in_dirs = scan_axes(node.attrs, "scan_input_directions", m)
    out_dirs = scan_axes(node.attrs, "scan_output_directions", n_scan)
    out_axes = scan_axes(node.attrs, "scan_output_axes", n_scan)
    lengths = {x.shape[a] for x, a in zip(xs, in_axes)}
    if len(lengths) != 1:
        raise IRError(f"node {node.name} (Scan): the scan inputs have different lengths {sorted(lengths)}")
    length = lengths.pop()
    run = SubgraphRunner(node, "body")
    scans: list[list[torch.Tensor]] = [[] for _ in range(n_scan)]
    for t in range(length):
        slices = [x.select(a, length - 1 - t if d else t) for x, a, d in zip(xs, in_axes, in_dirs)]
        out = run([*states, *slices, *caps])
        states = out[:n_state]
        for k in range(n_scan):
            scans[k].append(out[n_state + k])
    outs = []
    for k in range(n_scan):
        items = scans[k][::-1] if out_dirs[k] else scans[k]
        body_out = body.outputs[n_state + k]
        rank = (items[0].dim() if items else len(body_out.type.shape or ())) + 1
        outs.append(_stack(node, k, items, body_out, out_axes[k] % rank))
    return tuple(states) + tuple(outs)
