"""Head structure of attention blocks: which weight slices belong to which head.

For every attention core — a fused ``Attention`` node, or the unfused spelling
``MatMul(Q, Kᵀ) → scale/mask → Softmax → MatMul(·, V)`` — the analysis walks from Q, K and V
back to their projections (through the head-split reshape and transposes, RoPE, the GQA
repeat of K/V, the Split/Slice of a combined QKV projection, and the Concat that puts a KV
cache's past keys/values — graph inputs, recorded as ``carried`` — before the new ones) and from the context forward
to the output projection (through the head-merge reshape). It records the column offset of each
role inside its projection, the head count and head dimension, the KV groups, and every shape
constant that encodes a head count or a width (``ShapeEdit``), so a pruning pass can rewrite
all of them consistently. Blocks it cannot follow are listed in ``skipped`` with the reason.

    info = ctx.analysis("heads", graph)   # HeadAnalysis
    for b in info.blocks: b.q.columns(b.head_dim, [0, 3])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...ir.graph import Graph, Node, Value
from ..analysis import register_analysis
from .projections import Projection, as_projection, producer_projection
from .shape_edits import ShapeEdit, StructureError, shape_entry, trace_features_back, trace_features_forward

_PASS_THROUGH = ("Neg", "Cast", "Identity", "Dropout")
_BINARY = ("Add", "Sub", "Mul", "Div")


@dataclass
class HeadSlice:
    """One role's (q, k or v) columns inside a projection: head ``h`` owns columns
    ``offset + h*head_dim ... offset + (h+1)*head_dim``."""

    role: str
    projection: Projection
    offset: int
    heads: int

    def columns(self, head_dim: int, heads) -> list[int]:
        return [self.offset + h * head_dim + d for h in heads for d in range(head_dim)]


@dataclass
class CarriedHeads:
    """A graph input concatenated onto a role's heads (a KV cache's past keys or values, heads on
    ``axis``): pruning a head group shrinks the input too. ``level`` is ``kv`` when it holds one
    entry per KV group, ``q`` when one per query head (a cache of repeated keys)."""

    value: Value
    axis: int
    level: str


@dataclass
class AttentionBlock:
    name: str
    core: Node  # Attention, or the Softmax of an unfused block
    fused: bool
    heads: int  # query heads
    kv_heads: int
    head_dim: int
    q: HeadSlice
    k: HeadSlice
    v: HeadSlice
    out: Projection  # output projection: head h owns input rows h*head_dim ... (h+1)*head_dim
    context: Value  # the core's output, heads on ``head_axis``
    head_axis: int
    edits: list[ShapeEdit] = field(default_factory=list)
    segments: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """Per projection weight name: its output columns as ordered (role, width) segments."""
    residual: Value | None = None  # the other operand of the Add the block's output goes into
    block_output: Value | None = None  # the value added to the residual
    carried: list[CarriedHeads] = field(default_factory=list)
    """Graph inputs concatenated onto K or V (a KV cache's past)."""

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads

    def group_of(self, head: int) -> int:
        return head // self.group_size

    def projections(self) -> list[Projection]:
        seen, out = set(), []
        for s in (self.q, self.k, self.v):
            if s.projection.name not in seen:
                seen.add(s.projection.name)
                out.append(s.projection)
        return out

    def summary(self) -> dict:
        return {"name": self.name, "fused": self.fused, "heads": self.heads, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "q": self.q.projection.name, "k": self.k.projection.name,
                "v": self.v.projection.name, "out": self.out.name,
                "offsets": {"q": self.q.offset, "k": self.k.offset, "v": self.v.offset},
                **({"carried": [c.value.name for c in self.carried]} if self.carried else {})}


@dataclass
class HeadAnalysis:
    blocks: list[AttentionBlock]
    skipped: list[dict]  # {"core": node name, "reason": text}

    def summary(self) -> dict:
        return {"blocks": [b.summary() for b in self.blocks], "skipped": self.skipped}


# -- cores -----------------------------------------------------------------------------------
def _full_operand(node: Node, shape) -> Value | None:
    """The one non-constant input of ``node`` with exactly ``shape`` (the data, not a mask)."""
    cands = [v for v in node.inputs if v is not None and not v.is_constant and v.shape == shape]
    return cands[0] if len(cands) == 1 else None


def _unfused_core(sm: Node) -> tuple[Value, Value, Value, Value]:
    """Q, Kᵀ, V and the context of the block around Softmax ``sm``."""
    shape = sm.output.shape
    if shape is None or len(shape) < 3:
        raise StructureError("scores of unknown rank")
    axis = sm.attrs.get("axis", -1)
    if axis not in (-1, len(shape) - 1):
        raise StructureError("softmax not over the last axis")
    v = sm.input(0)
    while v.producer is not None and v.producer.op in _BINARY + ("Where", "Cast"):
        nxt = _full_operand(v.producer, shape)
        if nxt is None:
            raise StructureError(f"cannot tell scores from mask at {v.producer.name}")
        v = nxt
    mm = v.producer
    if mm is None or mm.op != "MatMul" or mm.input(1).is_constant:
        raise StructureError("softmax input is not a Q·Kᵀ MatMul")
    # forward: through the NaN guard / casts to the P·V MatMul
    frontier, pv = [sm.output], None
    while frontier and pv is None:
        val = frontier.pop()
        for n, i in val.uses:
            if n.op == "MatMul" and i == 0 and not n.input(1).is_constant:
                pv = n
            elif n.op in ("Where", "Cast", "Identity", "Dropout") and n.output.shape == shape:
                frontier.append(n.output)
    if pv is None:
        raise StructureError("no P·V MatMul after the softmax")
    return mm.input(0), mm.input(1), pv.input(1), pv.output


def _entry_value(node: Node, index: int, position: int) -> int | None:
    sym = node.input(index).sym if node.input(index) is not None else None
    return sym[position] if sym is not None and position < len(sym) and isinstance(sym[position], int) else None


def _aligned_dim(v: Value, axis: int, rank: int):
    """``v``'s size on ``axis`` of a rank-``rank`` broadcast (1 when ``v`` has fewer dims)."""
    s = v.shape
    if s is None:
        return None
    k = axis - (rank - len(s))
    return 1 if k < 0 else s[k]


def _trace_heads_back(value: Value, axis: int, role: str, q_heads: int
                      ) -> tuple[Node, int, list[ShapeEdit], set[Node], list[CarriedHeads]]:
    """From a core input (heads on ``axis``) up to the reshape that splits the projection's
    features into heads. Returns (that reshape, its head count, edits, region nodes, and the
    graph inputs concatenated onto the heads: a KV cache's past keys/values)."""
    edits: list[ShapeEdit] = []
    region: set[Node] = set()
    carried: list[CarriedHeads] = []
    splits: dict[int, tuple[Node, int]] = {}
    stack = [(value, axis, "q" if value.shape is not None and value.shape[axis] == q_heads else "kv")]
    seen = set()
    via_concat: dict[int, bool] = {}
    while stack:
        v, ax, level = stack.pop()
        if (id(v), ax) in seen:
            continue
        seen.add((id(v), ax))
        p = v.producer
        if p is None and via_concat.get(id(v)) and v in v.graph.inputs and v.shape is not None \
                and isinstance(v.shape[ax], int):
            carried.append(CarriedHeads(v, ax, level))
            continue
        if p is None:
            raise StructureError(f"{role}: reaches %{v.name} before a head-split reshape")
        region.add(p)
        rank = len(v.shape)
        count = v.shape[ax]
        if p.op == "Transpose":
            stack.append((p.input(0), p.attrs["perm"][ax], level))
        elif p.op in _PASS_THROUGH:
            stack.append((p.input(0), ax, level))
        elif p.op == "RotaryEmbedding":  # per head: [B, H, S, D] rotated along D
            if rank != 4 or ax != 1:
                raise StructureError(f"{role}: {p.name} does not keep the heads on axis 1 of a 4-D input")
            stack.append((p.input(0), ax, level))
        elif p.op in _BINARY:
            for x in p.inputs:
                if x is None or x.is_constant:
                    if x is not None and _aligned_dim(x, ax, rank) not in (1, None):
                        raise StructureError(f"{role}: {p.name} has a per-head constant")
                    continue
                d = _aligned_dim(x, ax, rank)
                if d == count and (count != 1 or tuple(x.shape) == tuple(v.shape)):
                    stack.append((x, ax - (rank - len(x.shape)), level))
                elif d != 1:
                    raise StructureError(f"{role}: {p.name} mixes head counts")
        elif p.op == "Slice":
            axes = p.input(3)
            if axes is None or not axes.is_constant or any(int(a) % rank == ax for a in axes.const.reshape(-1)):
                raise StructureError(f"{role}: {p.name} slices the head axis")
            stack.append((p.input(0), ax, level))
        elif p.op == "Concat":
            if int(p.attrs["axis"]) % rank == ax:
                raise StructureError(f"{role}: {p.name} concatenates along the head axis")
            stack.extend((x, ax, level) for x in p.inputs)
            via_concat.update((id(x), True) for x in p.inputs)
        elif p.op == "Unsqueeze":
            axes = p.input(1)
            if axes is None or not axes.is_constant:
                raise StructureError(f"{role}: {p.name} has run-time axes")
            ins = sorted(int(a) % rank for a in axes.const.reshape(-1))
            if ax in ins:
                raise StructureError(f"{role}: {p.name} inserts the head axis")
            stack.append((p.input(0), ax - sum(a < ax for a in ins), level))
        elif p.op == "Expand":
            x = p.input(0)
            xd = x.shape[ax - (rank - len(x.shape))] if x.shape is not None and ax - (rank - len(x.shape)) >= 0 else None
            if xd != count:
                raise StructureError(f"{role}: {p.name} expands the head axis")
            if isinstance(count, int) and count != 1 and _entry_value(p, 1, ax) != 1:
                e = shape_entry(p, 1, ax, f"heads:{level}", int(count))
                if e is not None:
                    edits.append(e)
            stack.append((x, ax - (rank - len(x.shape)), level))
        elif p.op == "Reshape":
            x = p.input(0)
            xs, ys = x.shape, v.shape
            if xs is None or ys is None:
                raise StructureError(f"{role}: {p.name} has unknown shapes")
            if (len(xs) == len(ys) - 1 and ax == len(ys) - 2 and tuple(xs[:ax]) == tuple(ys[:ax])
                    and isinstance(xs[-1], int) and isinstance(count, int) and isinstance(ys[-1], int)
                    and xs[-1] == count * ys[-1]):
                e = shape_entry(p, 1, ax, f"heads:{level}", int(count))
                if e is not None:
                    edits.append(e)
                splits[id(p)] = (p, int(count))
            elif (len(xs) == len(ys) + 1 and isinstance(xs[ax], int) and isinstance(xs[ax + 1], int)
                  and xs[ax] * xs[ax + 1] == count and tuple(xs[:ax]) == tuple(ys[:ax])):
                # the GQA repeat: [.., kv, rep, ..] -> [.., kv*rep, ..]
                e = shape_entry(p, 1, ax, "heads:q", int(count))
                if e is not None:
                    edits.append(e)
                stack.append((x, ax, "kv"))
            else:
                raise StructureError(f"{role}: {p.name} reshapes the heads in a way the analysis does not follow")
        else:
            raise StructureError(f"{role}: {p.op} {p.name} between the projection and the attention")
    if len(splits) != 1:
        raise StructureError(f"{role}: {len(splits)} head-split reshapes")
    (node, count), = splits.values()
    return node, count, edits, region, carried


def _trace_to_projection(value: Value, role: str) -> tuple[Projection, int, list[ShapeEdit], list[tuple]]:
    """From a split reshape's input (role features on the last axis) to the projection.
    Returns (projection, column offset, width edits, cuts) where a cut is a Split/Slice entry
    that the rewrite must recompute (``(node, index, element, what)``)."""
    edits: list[ShapeEdit] = []
    cuts: list[tuple] = []
    offset = 0
    kind = f"width:{role}"
    while True:
        value, e, _ = trace_features_back(value, kind)
        edits += e
        proj = producer_projection(value)
        if proj is not None:
            return proj, offset, edits, cuts
        p = value.producer
        if p is None:
            raise StructureError(f"{role}: no projection before the heads")
        rank = len(value.shape)
        if p.op == "Split" and int(p.attrs["axis"]) % rank == rank - 1:
            i = p.outputs.index(value)
            sizes = p.input(1)
            if sizes is None:  # equal parts: stays right while the parts stay equal (checked on rewrite)
                offset += i * int(value.shape[-1])
            elif not sizes.is_constant:
                raise StructureError(f"{role}: {p.name} without constant sizes")
            else:
                s = [int(x) for x in sizes.const.reshape(-1)]
                offset += sum(s[:i])
                cuts.append((p, 1, i, "size", role))
            kind = f"widthall:{role}"
        elif p.op == "Slice":
            starts, ends, axes = p.input(1), p.input(2), p.input(3)
            steps = p.input(4)
            if not (starts.is_constant and ends.is_constant and axes is not None and axes.is_constant
                    and starts.const.size == 1 and int(axes.const.reshape(-1)[0]) % rank == rank - 1
                    and (steps is None or int(steps.const.reshape(-1)[0]) == 1)):
                raise StructureError(f"{role}: {p.name} is not a plain feature slice")
            offset += int(starts.const.reshape(-1)[0])
            cuts.append((p, 1, 0, "start", role))
            cuts.append((p, 2, 0, "end", role))
            kind = f"widthall:{role}"
        else:
            raise StructureError(f"{role}: {p.op} {p.name} between the projection and the heads")
        value = p.input(0)


def _trace_out(context: Value, axis: int, heads: int, head_dim: int) -> tuple[Projection, list[ShapeEdit]]:
    """From the core's output to the output projection (merge reshape, flattening reshapes)."""
    edits: list[ShapeEdit] = []
    v, ax = context, axis
    g = context.graph
    while True:
        if len(_data_uses(v)) != 1 or v in g.outputs:
            raise StructureError("the attention context has several uses")
        n, i = _data_uses(v)[0]
        if n.op == "Transpose":
            ax = list(n.attrs["perm"]).index(ax)
            v = n.output
        elif n.op == "Reshape" and i == 0:
            y = n.output
            if (v.shape is not None and y.shape is not None and ax == len(v.shape) - 2
                    and len(y.shape) <= len(v.shape) - 1 and y.shape[-1] == heads * head_dim):
                e = shape_entry(n, 1, len(y.shape) - 1, "width:o", heads * head_dim)
                if e is not None:
                    edits.append(e)
                v = y
                break
            raise StructureError(f"{n.name}: not a head-merge reshape")
        else:
            raise StructureError(f"{n.op} {n.name} between the attention and the output projection")
    v, e, _ = trace_features_forward(v, "width:o")
    edits += e
    if len(_data_uses(v)) != 1:
        raise StructureError("the merged heads have several uses")
    n, i = _data_uses(v)[0]
    proj = as_projection(n)
    if proj is None or i != 0:
        raise StructureError(f"{n.op} {n.name} after the heads is not a projection")
    return proj, edits


def _data_uses(v: Value) -> list:
    """Uses other than ``Shape`` (which reads only the dims)."""
    return [(n, i) for n, i in v.uses if n.op != "Shape"]


def _residual(out: Projection) -> tuple[Value | None, Value | None]:
    """The residual operand of the Add (or AddLayerNorm) the block's output goes into."""
    try:
        v, _, _ = trace_features_forward(out.output, "width:hidden")
    except StructureError:
        return None, None
    if len(v.uses) != 1:
        return None, v
    n, i = v.uses[0]
    if n.op in ("Add", "AddLayerNorm") and i in (0, 1):
        other = n.input(1 - i)
        if other is not None and not other.is_constant:
            return other, v
    return None, v


def _block(core: Node) -> AttentionBlock:
    if core.op == "Attention":
        q, k, vv, ctx_v = core.input(0), core.input(1), core.input(2), core.output
        head_axis, k_axis, fused = 1, 1, True
        if q.shape is None or len(q.shape) != 4:
            raise StructureError("Attention inputs are not [batch, heads, seq, dim]")
    else:
        q, k, vv, ctx_v = _unfused_core(core)
        if q.shape is None or k.shape is None or ctx_v.shape is None:
            raise StructureError("unknown shapes")
        head_axis = len(q.shape) - 3
        k_axis = len(k.shape) - 3
        fused = False
        if head_axis < 1:
            raise StructureError("heads merged with the batch axis")
    heads = q.shape[head_axis]
    if not isinstance(heads, int) or not isinstance(ctx_v.shape[-1], int):
        raise StructureError("symbolic head count")
    head_dim = int(ctx_v.shape[-1])
    traced = {}
    edits: list[ShapeEdit] = []
    region: set[Node] = set()
    carried: list[CarriedHeads] = []
    for role, val, ax in (("q", q, head_axis), ("k", k, k_axis), ("v", vv, len(vv.shape) - 3)):
        split, count, e, r, c = _trace_heads_back(val, ax, role, heads)
        edits += e
        region |= r
        carried += c
        proj, offset, e2, cuts = _trace_to_projection(split.input(0), role)
        edits += e2
        traced[role] = (proj, offset, count, cuts)
    if traced["q"][2] != heads:
        raise StructureError(f"query heads {traced['q'][2]} at the split, {heads} at the attention")
    kv = traced["k"][2]
    if traced["v"][2] != kv or heads % kv:
        raise StructureError(f"key/value heads {kv}/{traced['v'][2]} do not divide {heads} query heads")
    for c in carried:
        if c.value.shape[c.axis] != (kv if c.level == "kv" else heads):
            want = f"{kv} KV" if c.level == "kv" else f"{heads} query"
            raise StructureError(f"%{c.value.name} carries {c.value.shape[c.axis]} heads, the attention {want} heads")
    # Projections shared by several roles (fused QKV) must be tiled exactly by the roles.
    segments: dict[str, list[tuple[str, int]]] = {}
    widths = {"q": heads * head_dim, "k": kv * head_dim, "v": kv * head_dim}
    by_proj: dict[str, list[tuple[int, str]]] = {}
    projs = {}
    for role, (proj, offset, _, _) in traced.items():
        by_proj.setdefault(proj.name, []).append((offset, role))
        projs[proj.name] = proj
    for name, entries in by_proj.items():
        entries.sort()
        pos = 0
        for offset, role in entries:
            if offset != pos:
                raise StructureError(f"{name}: columns {pos}..{offset} belong to no head")
            pos += widths[role]
        if pos != projs[name].out_features:
            raise StructureError(f"{name}: {projs[name].out_features} outputs, heads use {pos}")
        segments[name] = [(role, widths[role]) for _, role in entries]
    # every use of a projection output stays inside the block
    for proj in projs.values():
        for n, _ in proj.output.uses:
            if n not in region and n.op not in ("Reshape", "Split", "Slice", "Shape"):
                raise StructureError(f"{proj.name}: output used outside the attention block ({n.name})")
    cuts = [c for t in traced.values() for c in t[3]]
    for node, index, element, what, role in {(c[0].name, c[1], c[2], c[3], c[4]): c for c in cuts}.values():
        old = int(node.input(index).const.reshape(-1)[element])
        edits.append(ShapeEdit(node, index, element, f"{what}:{role}", old))
    out, e = _trace_out(ctx_v, head_axis, heads, head_dim)
    edits += e
    if out.in_features != heads * head_dim:
        raise StructureError(f"{out.name}: {out.in_features} inputs for {heads}x{head_dim} heads")
    edits = list({(id(x.node), x.index, x.element): x for x in edits}.values())
    residual, block_out = _residual(out)
    return AttentionBlock(
        name=out.name, core=core, fused=fused, heads=heads, kv_heads=kv, head_dim=head_dim,
        q=HeadSlice("q", traced["q"][0], traced["q"][1], heads),
        k=HeadSlice("k", traced["k"][0], traced["k"][1], kv),
        v=HeadSlice("v", traced["v"][0], traced["v"][1], kv),
        out=out, context=ctx_v, head_axis=head_axis, edits=edits, segments=segments,
        residual=residual, block_output=block_out, carried=carried)


def find_attention_blocks(graph: Graph) -> HeadAnalysis:
    """Every attention block the analysis understands, and the ones it skipped (why)."""
    blocks, skipped = [], []
    for node in graph.nodes:
        if node.op not in ("Attention", "Softmax"):
            continue
        try:
            blocks.append(_block(node))
        except StructureError as e:
            if node.op == "Softmax" and str(e).startswith(("softmax input is not", "scores of")):
                continue  # a softmax that is not attention (e.g. a classifier head)
            skipped.append({"core": node.name, "reason": str(e)})
    return HeadAnalysis(blocks, skipped)


@register_analysis("heads")
def _heads(graph: Graph) -> HeadAnalysis:
    return find_attention_blocks(graph)
