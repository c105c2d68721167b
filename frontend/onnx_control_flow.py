"""ONNX → IR for nodes with subgraph attributes: ``If``, ``Loop``, ``Scan``.

Each ONNX subgraph becomes a closed IR ``Graph`` (ir/subgraph.py): it is imported by a child
importer whose name lookups fall back to the enclosing scopes; every outer value it reads
becomes a *capture* (a trailing input of the subgraph) bound to the node's trailing inputs, and
an outer constant is copied in as a constant of the subgraph (so the body sees its value).
Nested subgraphs capture through every level in between.

The formal inputs of a body are typed from the node's inputs, not from the ONNX value infos
(which exporters often leave incomplete): a Loop body takes ``i64[]``, ``bool[]`` and the
initial values' types; a Scan body the states' types and one slice of each scan input. A
loop-carried value whose type changes across iterations (e.g. a growing tensor) is re-imported
with the dims it does not keep unknown.

Scan before opset 9 (a batch axis and ``sequence_lens``) is rewritten into opset-9 Scans before
the model is upgraded: onnx's version converter only strips the leading dim from the declared
shapes, which changes the meaning of the model.
"""

from __future__ import annotations

import types

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from ..ir import Graph, IRError, ModelFileError, TensorType, UnsupportedOpError
from ..ir.ops.control_flow import join_types, loop_param_types, scan_axes, scan_param_types
from ..ir.schema import AttrKind
from .onnx_import import _clean_name, _Importer

# Rounds of re-importing a Loop/Scan body while its loop-carried types generalize.
_MAX_TYPE_ROUNDS = 8


def import_subgraph_node(importer: _Importer, node: gs.Node, schema, where: str) -> None:
    """Import ``node`` (which has subgraph attributes) into ``importer.graph``."""
    graph_keys = [k for k, v in node.attrs.items() if isinstance(v, gs.Graph)]
    for k in graph_keys:
        spec = schema.attrs.get(k)
        if spec is None or spec.kind is not AttrKind.GRAPH:
            raise UnsupportedOpError(f"unsupported op {node.op} with a subgraph attribute {k!r} at {where}")
    plain = types.SimpleNamespace(op=node.op, attrs={k: v for k, v in node.attrs.items() if k not in graph_keys})
    attrs = importer._attrs(plain, schema, where)
    explicit = [importer._input(t) for t in node.inputs]
    while explicit and explicit[-1] is None:
        explicit.pop()
    if node.op == "If":
        bodies = [_import_body(importer, node.attrs[k], [], f"{where} {k}") for k in ("then_branch", "else_branch")]
    elif node.op == "Loop":
        bodies = [_import_carried(importer, node.attrs["body"], explicit, 2, attrs, where)]
    elif node.op == "Scan":
        bodies = [_import_carried(importer, node.attrs["body"], explicit, 0, attrs, where)]
    else:
        raise UnsupportedOpError(f"unsupported op {node.op} with a subgraph attribute at {where}")
    keys = ["then_branch", "else_branch"] if node.op == "If" else ["body"]
    captured: list = []
    for key, (body, outer) in zip(keys, bodies):
        attrs[key] = body
        captured.extend(outer)
    inputs = explicit + captured if captured else explicit
    outs = [t.name for t in node.outputs]
    names = [o if o else None for o in outs]
    for o in names:
        if o is not None and o in importer.values:
            raise ModelFileError(f"tensor {o!r} is defined twice (at {where})")
    try:
        outputs = importer.graph.add_node(node.op, inputs, attrs, output_names=names, name=node.name or None).outputs
    except IRError as e:
        raise type(e)(f"{where}: {e}") from None
    for name, v in zip(names, outputs):
        if name is not None:
            importer.values[name] = v


def _import_carried(importer, g: gs.Graph, explicit: list, n_fixed: int, attrs: dict, where: str):
    """A Loop (``n_fixed=2``: iteration, condition) or Scan body, re-imported until the types
    of the loop-carried values are stable."""
    node_is_loop = n_fixed == 2
    if node_is_loop:
        states = [v.type for v in explicit[2:] if v is not None]
        if any(v is None for v in explicit[2:]):
            raise ModelFileError(f"{where}: a loop-carried initial value is absent")
    else:
        m = attrs.get("num_scan_inputs")
        if m is None:
            raise ModelFileError(f"{where}: Scan needs attribute 'num_scan_inputs'")
        n_state = len(explicit) - m
        if n_state < 0 or any(v is None for v in explicit):
            raise ModelFileError(f"{where}: Scan has {len(explicit)} inputs for num_scan_inputs={m}")
        states = [v.type for v in explicit[:n_state]]
        try:
            axes = scan_axes(attrs, "scan_input_axes", m)
            scan_types = scan_param_types([], [v.type for v in explicit[n_state:]], axes)
        except IRError as e:
            raise IRError(f"{where}: {e}") from None
    for _ in range(_MAX_TYPE_ROUNDS):
        formal = loop_param_types(states) if node_is_loop else states + scan_types
        body, outer = _import_body(importer, g, formal, f"{where} body")
        first = 1 if node_is_loop else 0  # the Loop body's first output is the condition
        outs = body.outputs[first:first + len(states)]
        if len(outs) < len(states):
            return body, outer  # the op's type inference reports the count mismatch
        try:
            joined = [join_types(s, o.type) for s, o in zip(states, outs)]
        except IRError as e:
            raise IRError(f"{where}: a loop-carried value changes element type: {e}") from None
        if joined == states:
            return body, outer
        states = joined
    raise UnsupportedOpError(f"{where}: the loop-carried types do not settle")


def _import_body(importer, g: gs.Graph, formal: list[TensorType], where: str) -> tuple[Graph, list]:
    """One ONNX subgraph as a closed IR graph, and the outer values bound to its captures."""
    if len(g.inputs) != len(formal):
        raise ModelFileError(f"{where}: the subgraph has {len(g.inputs)} inputs, expected {len(formal)}")
    child = _BodyImporter(importer, _clean_name(g.name or "body"))
    for t, ty in zip(g.inputs, formal):
        if t.name in child.values:
            raise ModelFileError(f"{where}: subgraph input {t.name!r} is listed twice")
        child.values[t.name] = child.graph.add_input(t.name, ty)
    for n in g.nodes:
        child._node(n)
    outputs = []
    for t in g.outputs:
        v = child._input(t)
        if v is None:
            raise ModelFileError(f"{where}: a subgraph output has no name")
        outputs.append(v)
    child.graph.set_outputs(outputs)
    return child.graph, child.captured


class _BodyImporter(_Importer):
    """Imports one subgraph; unknown names resolve in the enclosing importer (as captures)."""

    def __init__(self, parent: _Importer, name: str):
        super().__init__(parent.opset, parent.source_opset)
        self.parent = parent
        self.graph = Graph(name)
        self.captured: list = []  # outer values bound to the captures, in order

    def _input(self, t):
        if t is None or t.name == "":
            return None
        v = self.values.get(t.name)
        if v is not None:
            return v
        if isinstance(t, gs.Constant):
            return super()._input(t)  # an outer initializer: a constant of this subgraph
        outer = self.parent._input(t)
        if outer.is_constant:
            v = self.graph.add_constant(outer.const, self.graph.unique_name(t.name))
        else:
            v = self.graph.add_capture(self.graph.unique_name(t.name), outer.type)
            self.captured.append(outer)
        self.values[t.name] = v
        return v


# -- Scan before opset 9 ---------------------------------------------------------------------------
def rewrite_scan8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every opset-8 Scan (batch axis 0, optional ``sequence_lens``) into opset-9 Scans,
    one per batch entry (static batch size, no ``sequence_lens``), keeping the model at opset 8
    so the version converter upgrades the new nodes like any other. The converter's own Scan
    adapter then only renames ``directions`` and drops the empty ``sequence_lens`` slot."""
    if not any(n.op_type == "Scan" for n in _all_nodes(model.graph)):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    shapes = _static_shapes(m)
    _rewrite_graph(m.graph, shapes)
    return m


def _all_nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (inference is only a source of batch sizes here)
        inferred = model
    out: dict[str, tuple] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    for init in g.initializer:
        out[init.name] = tuple(init.dims)
    return out


def _rewrite_graph(graph: onnx.GraphProto, shapes: dict[str, tuple]) -> None:
    new_nodes = []
    for n in graph.node:
        if n.op_type == "Scan" and n.domain in ("", "ai.onnx"):
            new_nodes.extend(_split_scan8(n, shapes))
        else:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    _rewrite_graph(a.g, shapes)
            new_nodes.append(n)
    del graph.node[:]
    graph.node.extend(new_nodes)


def _split_scan8(n: onnx.NodeProto, shapes: dict[str, tuple]) -> list[onnx.NodeProto]:
    where = f"node {n.name or '<unnamed>'} (Scan, opset 8)"
    if n.input and n.input[0]:
        raise UnsupportedOpError(f"Scan with sequence_lens (opset 8) is not supported at {where}")
    data = list(n.input[1:])
    batch = {shapes.get(x, (None,))[0] for x in data if shapes.get(x)}
    batch.discard(None)
    if len(batch) != 1:
        raise UnsupportedOpError(f"Scan (opset 8) needs a static batch size to be converted at {where}")
    (nb,) = batch
    base = n.name or "scan8"
    nodes: list[onnx.NodeProto] = []
    per_batch_outs: list[list[str]] = [[] for _ in n.output]
    for b in range(nb):
        idx = f"{base}__b{b}"
        nodes.append(helper.make_node("Constant", [], [idx], value=helper.make_tensor(idx, onnx.TensorProto.INT64, [], [b])))
        ins = []
        for x in data:
            xb = f"{x}__{base}_b{b}"
            nodes.append(helper.make_node("Gather", [x, idx], [xb], axis=0))
            ins.append(xb)
        outs = [f"{o or base + '_out' + str(k)}__b{b}" for k, o in enumerate(n.output)]
        scan = onnx.NodeProto()
        scan.CopyFrom(n)
        scan.name = f"{base}_b{b}"
        del scan.input[:]
        scan.input.extend([""] + ins)  # the converter's Scan 8->9 adapter drops the empty slot
        del scan.output[:]
        scan.output.extend(outs)
        nodes.append(scan)
        for k, o in enumerate(outs):
            ob = f"{o}__unsq"
            nodes.append(helper.make_node("Unsqueeze", [o], [ob], axes=[0]))
            per_batch_outs[k].append(ob)
    for k, o in enumerate(n.output):
        if o:
            nodes.append(helper.make_node("Concat", per_batch_outs[k], [o], axis=0))
    return nodes


# -- IR -> ONNX ------------------------------------------------------------------------------------
def export_node(node, tensor) -> list[gs.Node] | None:
    """The ONNX nodes of an IR node this module exports specially, or None: a node with
    subgraphs, or a batch-major (``layout=1``) RNN/GRU/LSTM, written as Transposes around the
    time-major op (ONNX Runtime implements only ``layout=0``)."""
    if any(isinstance(a, Graph) for a in node.attrs.values()):
        return export_subgraph_node(node, tensor)
    if node.op in ("RNN", "GRU", "LSTM") and node.attrs.get("layout") == 1:
        return _export_batch_major(node, tensor)
    return None


def _export_batch_major(node, tensor) -> list[gs.Node]:
    from .onnx_export import _attrs, _gs_dtype, _trim

    dt = _gs_dtype(node.outputs[0].dtype)
    nodes: list[gs.Node] = []

    def transpose(t, perm, name):
        out = gs.Variable(f"{node.name}_{name}", dtype=dt)
        nodes.append(gs.Node("Transpose", name=f"{node.name}_{name}", attrs={"perm": perm}, inputs=[t], outputs=[out]))
        return out

    ins = [tensor(v) for v in _trim(node.inputs)]
    ins[0] = transpose(ins[0], [1, 0, 2], "x_time_major")
    for i, what in ((5, "initial_h"), (6, "initial_c")):
        if i < len(ins) and node.inputs[i] is not None:
            ins[i] = transpose(ins[i], [1, 0, 2], f"{what}_time_major")
    attrs = _attrs(node)
    attrs.pop("layout")
    outs = [gs.Variable(f"{node.name}_{k}_time_major", dtype=dt) for k in range(len(node.outputs))]
    nodes.append(gs.Node(node.op, name=node.name, attrs=attrs, inputs=ins, outputs=outs))
    for k, (o, v) in enumerate(zip(outs, node.outputs)):
        if not v.uses and v not in v.graph.outputs:
            continue
        perm = [2, 0, 1, 3] if k == 0 else [1, 0, 2]
        nodes.append(gs.Node("Transpose", name=f"{node.name}_out{k}", attrs={"perm": perm}, inputs=[o], outputs=[tensor(v)]))
    return nodes


def export_subgraph_node(node, tensor) -> list[gs.Node]:
    """The ONNX node of an IR node with subgraphs: the explicit inputs become the node's inputs,
    and each body reads its captured outer tensors by name (ONNX outer-scope references).
    ``tensor`` maps an IR value of the enclosing graph to its graphsurgeon tensor."""
    from ..ir.subgraph import capture_groups, explicit_inputs
    from .onnx_export import _attrs, _trim

    attrs = _attrs(_without_graphs(node))
    for key, body, outer in capture_groups(node):
        attrs[key] = _export_body(body, [tensor(v) for v in outer], f"{node.name}.{key}/")
    return [gs.Node(node.op, name=node.name, attrs=attrs, inputs=[tensor(v) for v in _trim(explicit_inputs(node))],
                    outputs=[tensor(v) for v in node.outputs])]


def _without_graphs(node):
    from ..ir import Graph as IRGraph

    return types.SimpleNamespace(name=node.name, op=node.op,
                                 attrs={k: v for k, v in node.attrs.items() if not isinstance(v, IRGraph)})


def _export_body(body: Graph, capture_tensors: list, prefix: str) -> gs.Graph:
    """A body as an ONNX subgraph; every name it defines gets ``prefix`` (ONNX names must not
    shadow the outer scope)."""
    from .onnx_export import _DECOMPOSED, _attrs, _decompose, _dims, _gs_dtype, _trim

    tensors: dict[int, gs.Tensor] = {}
    for v, t in zip(body.captures, capture_tensors):
        tensors[id(v)] = t

    def tensor(v):
        if v is None:
            return gs.Variable.empty()
        t = tensors.get(id(v))
        if t is None:
            if v.is_constant:
                t = gs.Constant(prefix + v.name, v.const)
            else:
                t = gs.Variable(prefix + v.name, dtype=_gs_dtype(v.dtype), shape=_dims(v.type.shape))
            tensors[id(v)] = t
        return t

    nodes: list[gs.Node] = []
    for n in body.nodes:
        if any(isinstance(a, Graph) for a in n.attrs.values()):
            nodes.extend(export_subgraph_node(n, tensor))
        elif n.op in _DECOMPOSED:
            nodes.extend(_decompose(n, tensor))
        else:
            nodes.append(gs.Node(n.op, name=prefix + n.name, attrs=_attrs(n), inputs=[tensor(v) for v in _trim(n.inputs)],
                                 outputs=[tensor(v) for v in n.outputs]))
    inputs = [tensor(v) for v in body.params]
    outputs = []
    for k, v in enumerate(body.outputs):
        t = tensor(v)
        if v.producer is None:  # an input, capture or constant: ONNX wants a produced output
            out = gs.Variable(f"{prefix}out{k}", dtype=_gs_dtype(v.dtype), shape=_dims(v.type.shape))
            nodes.append(gs.Node("Identity", name=f"{prefix}out{k}_identity", inputs=[t], outputs=[out]))
            t = out
        outputs.append(t)
    return gs.Graph(nodes=nodes, inputs=inputs, outputs=outputs, name=prefix.rstrip("/").replace("/", "_") or body.name)
