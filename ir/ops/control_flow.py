"""Control flow: ``If``, ``Loop`` and ``Scan``, with ONNX semantics (opset 16+).

Their bodies are subgraph attributes (``AttrKind.GRAPH``) that read outer values only through
captures, bound to the node's trailing inputs (see ``ir/subgraph.py``). Type inference checks
each body's signature against the node (counts, element types, compatible shapes, captures)
and derives the node's output types from the body outputs:

* ``If``: the chosen branch's types when the condition is a constant, otherwise the join of
  both branches (a dim the branches disagree on is unknown);
* ``Loop``: loop-carried values join their initial and body types; scan outputs are stacked on
  a new leading axis whose length is the trip count when the loop provably runs exactly ``M``
  times (no condition, or a constant-true one the body passes through unchanged);
* ``Scan``: the sequence length is read from the scan inputs' scan axes.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import IRError
from ..graph import Graph, Value
from ..schema import AttrKind, InferContext
from ..types import DType, TensorType, types_compatible
from ._common import INT, INTS, A, norm_axis, op

GRAPH = AttrKind.GRAPH

__all__ = ["join_types", "loop_param_types", "passes_cond_through", "scan_param_types", "loop_runs_exactly", "scan_length", "scan_axes"]


def join_types(a: TensorType, b: TensorType) -> TensorType:
    """The most specific type both ``a`` and ``b`` have (same element type required)."""
    if a.dtype != b.dtype:
        raise IRError(f"element types {a.dtype.value} and {b.dtype.value} differ")
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return TensorType(a.dtype, None)
    return TensorType(a.dtype, tuple(x if x == y else None for x, y in zip(a.shape, b.shape)))


def _one_element(t: TensorType) -> bool:
    return t.shape is None or all(d == 1 or not isinstance(d, int) for d in t.shape)


def _check_scalar(ctx: InferContext, t: TensorType, dtype: DType, what: str) -> None:
    if t.dtype is not dtype:
        raise ctx.fail(f"{what} must be {dtype.value}, got {t}")
    if not _one_element(t):
        raise ctx.fail(f"{what} must hold one element, got {t}")


def _body(ctx: InferContext, key: str) -> Graph:
    g = ctx.attr(key)
    if not isinstance(g, Graph):
        raise ctx.fail(f"attribute {key!r} must be a graph")
    return g


def _split(ctx: InferContext, bodies: Sequence[Graph]) -> tuple[list, list[list]]:
    """The explicit inputs and one list of captured values per body (from the trailing inputs)."""
    ins = list(ctx.inputs)
    total = sum(b.num_captures for b in bodies)
    if total > len(ins):
        raise ctx.fail(f"the subgraphs capture {total} values but the node has only {len(ins)} inputs")
    explicit = ins[:len(ins) - total]
    groups, pos = [], len(ins) - total
    for b in bodies:
        groups.append(ins[pos:pos + b.num_captures])
        pos += b.num_captures
    return explicit, groups


def _check_captures(ctx: InferContext, key: str, body: Graph, values: list) -> None:
    for j, (param, v) in enumerate(zip(body.captures, values)):
        if v is None:
            raise ctx.fail(f"{key} capture {j} (%{param.name}) is not bound to a value")
        if not types_compatible(param.type, v.type):
            raise ctx.fail(f"{key} capture {j} %{param.name}: {param.type} is bound to %{v.name}: {v.type}")


def _check_param(ctx: InferContext, key: str, param: Value, t: TensorType, what: str) -> None:
    if not types_compatible(param.type, t):
        raise ctx.fail(f"{key} input %{param.name} ({what}) is {param.type}, the node gives {t}")


def _check_count(ctx: InferContext, key: str, what: str, have: int, want: int) -> None:
    if have != want:
        raise ctx.fail(f"{key} has {have} {what}, expected {want}")


# -- If --------------------------------------------------------------------------------------------
@op("If", ["cond", "captures*"], ["outputs*"],
    attrs={"then_branch": A(GRAPH, doc="run when cond is true"), "else_branch": A(GRAPH, doc="run when cond is false")})
def _if(ctx: InferContext) -> list[TensorType]:
    """Run one of two subgraphs; both have no formal inputs and the same number of outputs."""
    then_b, else_b = _body(ctx, "then_branch"), _body(ctx, "else_branch")
    explicit, (then_caps, else_caps) = _split(ctx, [then_b, else_b])
    if len(explicit) != 1 or explicit[0] is None:
        raise ctx.fail(f"needs the condition and {then_b.num_captures} + {else_b.num_captures} captured values "
                       f"({1 + then_b.num_captures + else_b.num_captures} inputs), has {len(ctx.inputs)}")
    _check_scalar(ctx, explicit[0].type, DType.BOOL, "the condition")
    for key, b, caps in (("then_branch", then_b, then_caps), ("else_branch", else_b, else_caps)):
        if b.params:
            raise ctx.fail(f"{key} must not have formal inputs, has {len(b.params)}")
        _check_captures(ctx, key, b, caps)
        _check_count(ctx, key, "outputs", len(b.outputs), ctx.num_outputs)
    cond = explicit[0].const
    if cond is not None and cond.size == 1:
        chosen = then_b if bool(cond.reshape(-1)[0]) else else_b
        return [v.type for v in chosen.outputs]
    out = []
    for k, (a, b) in enumerate(zip(then_b.outputs, else_b.outputs)):
        try:
            out.append(join_types(a.type, b.type))
        except IRError as e:
            raise ctx.fail(f"output {k}: the branches disagree: {e}") from None
    return out


# -- Loop ------------------------------------------------------------------------------------------
ITER_TYPE = TensorType(DType.INT64, ())
COND_TYPE = TensorType(DType.BOOL, ())


def loop_param_types(state_types: Sequence[TensorType]) -> list[TensorType]:
    """The formal inputs a Loop body takes: iteration number, condition, loop-carried values."""
    return [ITER_TYPE, COND_TYPE, *state_types]


def passes_cond_through(body: Graph) -> bool:
    """Whether the body's condition output is its condition input (through Identity) or a
    constant true."""
    if len(body.params) < 2 or not body.outputs:
        return False
    v = body.outputs[0]
    while v.producer is not None and v.producer.op == "Identity":
        v = v.producer.inputs[0]
    if v.const is not None:
        return bool(v.const.size == 1 and v.const.reshape(-1)[0])
    return v is body.params[1]


def loop_runs_exactly(m: Value | None, cond: Value | None, body: Graph):
    """The Loop's trip count as a dim (int or symbolic) when it provably runs exactly ``M``
    times, else None."""
    if m is None:
        return None
    if cond is not None:
        c = cond.const
        if c is None or c.size != 1 or not bool(c.reshape(-1)[0]):
            return None
    if not passes_cond_through(body):
        return None
    s = m.sym
    if s is None or len(s) != 1 or s[0] is None:
        return None
    d = s[0]
    return max(d, 0) if isinstance(d, int) else d


@op("Loop", ["M?", "cond?", "v_initial*"], ["v_final_and_scan_outputs*"],
    attrs={"body": A(GRAPH, doc="(iteration, cond, v...) -> (cond, v..., scan outputs...)")})
def _loop(ctx: InferContext) -> list[TensorType]:
    """Run ``body`` while ``iteration < M`` and ``cond``; loop-carried values flow from one
    iteration to the next, scan outputs are stacked along a new leading axis."""
    body = _body(ctx, "body")
    explicit, (caps,) = _split(ctx, [body])
    n_state = max(len(explicit) - 2, 0)
    m = explicit[0] if len(explicit) > 0 else None
    cond = explicit[1] if len(explicit) > 1 else None
    if m is not None:
        _check_scalar(ctx, m.type, DType.INT64, "M (the trip count)")
    if cond is not None:
        _check_scalar(ctx, cond.type, DType.BOOL, "cond")
    states = explicit[2:]
    if any(v is None for v in states):
        raise ctx.fail("a loop-carried initial value is absent")
    _check_count(ctx, "body", "formal inputs", len(body.params), 2 + n_state)
    n_scan = ctx.num_outputs - n_state
    if n_scan < 0:
        raise ctx.fail(f"has {ctx.num_outputs} outputs but {n_state} loop-carried values")
    _check_count(ctx, "body", "outputs", len(body.outputs), 1 + n_state + n_scan)
    _check_captures(ctx, "body", body, caps)
    p = body.params
    _check_scalar(ctx, p[0].type, DType.INT64, "the body's iteration input")
    _check_scalar(ctx, p[1].type, DType.BOOL, "the body's condition input")
    _check_scalar(ctx, body.outputs[0].type, DType.BOOL, "the body's condition output")
    out = []
    for k, v in enumerate(states):
        _check_param(ctx, "body", p[2 + k], v.type, f"loop-carried value {k}")
        o = body.outputs[1 + k].type
        if not types_compatible(p[2 + k].type, o):
            raise ctx.fail(f"body output {1 + k} (loop-carried value {k}) is {o}, its input is {p[2 + k].type}")
        out.append(join_types(v.type, o))
    trip = loop_runs_exactly(m, cond, body)
    for k in range(n_scan):
        t = body.outputs[1 + n_state + k].type
        out.append(TensorType(t.dtype, None if t.shape is None else (trip,) + tuple(t.shape)))
    return out


# -- Scan ------------------------------------------------------------------------------------------
def scan_axes(attrs: dict, key: str, n: int) -> list[int]:
    """An axes/directions attribute of Scan, defaulting to zeros (length-checked)."""
    v = attrs.get(key)
    if v is None:
        return [0] * n
    if len(v) != n:
        raise IRError(f"Scan: {key} has {len(v)} entries, expected {n}")
    return list(v)


def scan_param_types(state_types: Sequence[TensorType], scan_types: Sequence[TensorType],
                     axes: Sequence[int]) -> list[TensorType]:
    """The formal inputs a Scan body takes: the states, then one slice of each scan input."""
    out = list(state_types)
    for t, axis in zip(scan_types, axes):
        if t.shape is None:
            out.append(TensorType(t.dtype, None))
            continue
        a = norm_axis(axis, len(t.shape), "scan_input_axes entry")
        out.append(TensorType(t.dtype, t.shape[:a] + t.shape[a + 1:]))
    return out


def scan_length(scan_types: Sequence[TensorType], axes: Sequence[int]):
    """The sequence length (int, symbolic or None) the scan inputs agree on."""
    dims = []
    for t, axis in zip(scan_types, axes):
        if t.shape is None:
            continue
        dims.append(t.shape[norm_axis(axis, len(t.shape), "scan_input_axes entry")])
    static = {d for d in dims if isinstance(d, int)}
    if len(static) > 1:
        raise IRError(f"Scan: the scan inputs have different lengths {sorted(static)}")
    if static:
        return static.pop()
    named = {d for d in dims if d is not None}
    return named.pop() if len(named) == 1 else None


@op("Scan", ["inputs*"], ["outputs*"],
    attrs={"body": A(GRAPH, doc="(states..., slices...) -> (states..., scan outputs...)"),
           "num_scan_inputs": A(INT), "scan_input_axes": A(INTS, None), "scan_input_directions": A(INTS, None),
           "scan_output_axes": A(INTS, None), "scan_output_directions": A(INTS, None)})
def _scan(ctx: InferContext) -> list[TensorType]:
    """Run ``body`` once per slice of the scan inputs, carrying states; scan outputs are
    stacked along their scan output axes."""
    body = _body(ctx, "body")
    explicit, (caps,) = _split(ctx, [body])
    m = ctx.attr("num_scan_inputs")
    if m < 1:
        raise ctx.fail(f"num_scan_inputs must be >= 1, got {m}")
    n_state = len(explicit) - m
    if n_state < 0:
        raise ctx.fail(f"has {len(explicit)} inputs, fewer than num_scan_inputs={m}")
    if any(v is None for v in explicit):
        raise ctx.fail("Scan inputs cannot be absent")
    n_scan = ctx.num_outputs - n_state
    if n_scan < 0:
        raise ctx.fail(f"has {ctx.num_outputs} outputs but {n_state} states")
    _check_count(ctx, "body", "formal inputs", len(body.params), n_state + m)
    _check_count(ctx, "body", "outputs", len(body.outputs), n_state + n_scan)
    _check_captures(ctx, "body", body, caps)
    try:
        in_axes = scan_axes(ctx.attrs, "scan_input_axes", m)
        out_axes = scan_axes(ctx.attrs, "scan_output_axes", n_scan)
        for key, n in (("scan_input_directions", m), ("scan_output_directions", n_scan)):
            if any(d not in (0, 1) for d in scan_axes(ctx.attrs, key, n)):
                raise IRError(f"{key} entries must be 0 or 1")
        scan_types = [v.type for v in explicit[n_state:]]
        want = scan_param_types([v.type for v in explicit[:n_state]], scan_types, in_axes)
        length = scan_length(scan_types, in_axes)
    except IRError as e:
        raise ctx.fail(str(e).removeprefix("Scan: ")) from None
    for k, (param, t) in enumerate(zip(body.params, want)):
        _check_param(ctx, "body", param, t, f"state {k}" if k < n_state else f"scan input {k - n_state}")
    out = []
    for k in range(n_state):
        o = body.outputs[k].type
        if not types_compatible(body.params[k].type, o):
            raise ctx.fail(f"body output {k} (state {k}) is {o}, its input is {body.params[k].type}")
        out.append(join_types(explicit[k].type, o))
    for k in range(n_scan):
        t = body.outputs[n_state + k].type
        if t.shape is None:
            out.append(TensorType(t.dtype, None))
            continue
        a = norm_axis(out_axes[k], len(t.shape) + 1, "scan_output_axes entry")
        out.append(TensorType(t.dtype, t.shape[:a] + (length,) + t.shape[a:]))
    return out
