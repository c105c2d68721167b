"""A decoder with a KV cache: one graph, and the prefill and decode steps derived from it.

A causal language model that carries its attention keys and values between calls is imported as
one graph (from ``torch.export`` through ``frontend/pytorch/decoder.py``, or from an ONNX export
with past key/values as inputs): it takes ``input_ids [batch, seq]`` and the cache of the tokens
before them, ``past_key_values.{i}.key|value [batch, kv_heads, past, head_dim]``, and returns
``logits [batch, seq, vocab]`` and the grown cache ``present.{i}.key|value [.., past+seq, ..]``.
These names are the convention Hugging Face's ONNX exports (optimum) use; optc's torch frontend
writes the same, so both frontends meet here. Every pass runs on that one graph.

Code generation builds two functions from it, sharing their weights:

- **prefill** (``prefill_graph``): ``past`` bound to 0. The past inputs are gone (an empty cache
  is never passed in: zero-size inputs are refused), the concatenations that appended to them
  are copies of the new keys, and ``seq`` stays symbolic — a prompt of any length;
- **decode** (``decode_graph``): ``seq`` bound to 1 — one new token, the cache of any length
  ``past >= 1``. Code generation also binds the batch to 1 (generation runs one sequence), so
  every projection is a matrix-vector product of static shape (``schedules/dense.py``
  ``tile_rows``: a one-row register tile; low-precision weights decoded inside the product).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import IRError
from .folding import eliminate_dead_code, fold_graph
from .graph import Graph
from .specialize import bind_dims, specialize_dims
from .symbolic import Polynomial, add_dims
from .types import TensorType

_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_PRESENT = re.compile(r"present\.(\d+)\.(key|value)")
INPUT_IDS = "input_ids"
LOGITS = "logits"
MASK = "attention_mask"  # optional: [batch, past+seq], 1 where a position is a token (0: padding)
POSITIONS = "position_ids"  # optional: [batch, seq], each new token's position
SEQ_AXIS, CACHE_AXIS = 1, 2


@dataclass(frozen=True)
class KVCache:
    """Where a decoder graph keeps its cache: ``pairs`` of (past input, present output) names in
    layer order (key, then value), and the symbolic dims of the new tokens and the cache."""

    pairs: tuple[tuple[str, str], ...]
    seq_dim: str
    past_dim: str

    @property
    def past_names(self) -> list[str]:
        return [p for p, _ in self.pairs]

    def to_json(self) -> dict:
        return {"pairs": [list(p) for p in self.pairs], "seq_dim": self.seq_dim, "past_dim": self.past_dim}

    @staticmethod
    def from_json(d: dict) -> "KVCache":
        return KVCache(tuple((str(a), str(b)) for a, b in d["pairs"]), str(d["seq_dim"]), str(d["past_dim"]))


def cache_names(graph: Graph) -> tuple[set[str], set[str]]:
    """The names of the graph's past inputs and present outputs by the naming convention alone;
    never raises (a derived step, or a graph with only part of a cache, too)."""
    return ({v.name for v in graph.inputs if _PAST.fullmatch(v.name)},
            {v.name for v in graph.outputs if _PRESENT.fullmatch(v.name)})


def empty_cache_dims(graph: Graph) -> tuple[str, ...]:
    """The symbolic past length(s) of the graph's past inputs, which the reference interpreter
    lets be 0 (an empty cache); () for a graph without past inputs. Never raises: also for a
    derived step (decode has ``seq`` bound)."""
    dims = {v.type.shape[CACHE_AXIS] for v in graph.inputs if _PAST.fullmatch(v.name)
            and v.type.shape is not None and len(v.type.shape) == 4}
    return tuple(sorted(d for d in dims if isinstance(d, str)))


def find_kv_cache(graph: Graph) -> KVCache | None:
    """The graph's KV cache, when its inputs and outputs follow the naming convention above;
    None for a graph without past inputs. A graph that has some but not a consistent set of
    them (a past without its present, a cache axis that is not one symbolic dim) raises
    ``IRError`` naming what is wrong."""
    past = {m.groups(): v for v in graph.inputs if (m := _PAST.fullmatch(v.name))}
    if not past:
        return None
    present = {m.groups(): v for v in graph.outputs if (m := _PRESENT.fullmatch(v.name))}
    where = f"decoder graph {graph.name!r}"
    missing = sorted(set(past) - set(present), key=lambda k: (int(k[0]), k[1]))
    if missing:
        layer, kind = missing[0]
        raise IRError(f"{where}: input past_key_values.{layer}.{kind} has no output present.{layer}.{kind}")
    ids = next((v for v in graph.inputs if v.name == INPUT_IDS), None)
    if ids is None or ids.type.shape is None or len(ids.type.shape) != 2 or not isinstance(ids.type.shape[SEQ_AXIS], str):
        raise IRError(f"{where}: needs an input {INPUT_IDS!r} of shape [batch, seq] with a symbolic seq")
    if not any(v.name == LOGITS for v in graph.outputs):
        raise IRError(f"{where}: needs an output {LOGITS!r}")
    seq_dim = ids.type.shape[SEQ_AXIS]
    past_dims = {v.type.shape[CACHE_AXIS] if v.type.shape is not None and len(v.type.shape) == 4 else None
                 for v in past.values()}
    if len(past_dims) != 1 or not isinstance(next(iter(past_dims)), str) or not next(iter(past_dims)).isidentifier():
        raise IRError(f"{where}: the past keys/values must be [batch, heads, past, head_dim] with one symbolic "
                      f"past length (got {sorted(map(str, past_dims))})")
    past_dim = next(iter(past_dims))
    keys = sorted(past, key=lambda k: (int(k[0]), k[1]))
    return KVCache(tuple((past[k].name, present[k].name) for k in keys), seq_dim, past_dim)


def tie_mask_length(graph: Graph, cache: KVCache) -> Graph:
    """The graph with its ``attention_mask`` (when it takes one) ``[batch, past+seq]`` long.

    The mask covers the cached tokens and the new ones, but exporters give its length a name of
    its own — torch.export cannot derive one dim from two (``total``), optimum writes
    ``past_sequence_length + sequence_length`` with its own names — so the model only checks the
    relation at run time. Bound here, the prefill's mask is ``[batch, seq]`` and the decode
    step's ``[1, past+1]``, and the inputs' checks enforce it. A mask of another shape raises
    ``IRError``."""
    mask = next((v for v in graph.inputs if v.name == MASK), None)
    if mask is None:
        return graph
    shape = mask.type.shape
    want = add_dims(cache.past_dim, cache.seq_dim)
    if mask.type.dtype.is_float:  # step_inputs feeds 1 for a token: a float mask may be additive (0 / -inf)
        raise IRError(f"decoder graph {graph.name!r}: input {MASK!r} is {mask.type.dtype.value}; a mask of 0/1 "
                      "integers or booleans is needed (1: a token, 0: padding)")
    if want is None:
        raise IRError(f"decoder graph {graph.name!r}: the past and new-token dims ({cache.past_dim}, "
                      f"{cache.seq_dim}) do not add up to a dim")
    if shape is None or len(shape) != 2:
        raise IRError(f"decoder graph {graph.name!r}: input {MASK!r} must be [batch, past+seq], got "
                      f"{list(shape) if shape is not None else 'an unknown shape'}")
    length = shape[1]
    if length == want:
        return graph
    if isinstance(length, str) and (p := Polynomial.of(length)) is not None and p.to_dim() == want:
        g = graph.clone()  # optimum's "past_sequence_length + sequence_length": the same sum
        g.value(MASK).type = TensorType(mask.type.dtype, (shape[0], want))
        g.infer_types()
        return g
    if not isinstance(length, str) or not length.isidentifier() or length in (cache.past_dim, cache.seq_dim) \
            or any(length in (d for d in (v.type.shape or ()) if isinstance(d, str))
                   for v in graph.inputs if v is not mask):
        raise IRError(f"decoder graph {graph.name!r}: input {MASK!r} must be [batch, past+seq] long (the cache "
                      f"and the new tokens), got [{shape[0]}, {length}]")
    g = bind_dims(graph, {length: want})
    g.metadata.pop(f"dim_range.{length}", None)  # the importer's range of a name now gone
    return g


def step_inputs(names: Mapping[str, np.dtype], ids: np.ndarray, past: int) -> dict[str, np.ndarray]:
    """The inputs of ``names`` (name -> dtype) a step takes besides its cache, for the token ids
    ``ids [rows, seq]`` after ``past`` cached tokens: the ids, ``attention_mask`` all ones (every
    position a token) and ``position_ids`` counting from ``past``. Another name raises
    ``IRError``."""
    rows, seq = ids.shape
    out = {}
    for name, dtype in names.items():
        if name == INPUT_IDS:
            a = ids
        elif name == MASK:
            a = np.ones((rows, past + seq))
        elif name == POSITIONS:
            a = np.broadcast_to(np.arange(past, past + seq), (rows, seq))
        else:
            raise IRError(f"a decoder step's input {name!r} is not input_ids, {MASK} or {POSITIONS}")
        out[name] = np.ascontiguousarray(a, dtype=dtype)
    return out


def prefill_graph(graph: Graph, cache: KVCache) -> Graph:
    """The graph run on an empty cache: ``past`` = 0, the past inputs removed.

    With the cache empty, each concatenation onto a past input keeps only its other operands
    (the shapes read from the past fold to 0 first). A past input used any other way cannot be
    dropped and raises ``IRError`` naming the node."""
    g = bind_dims(tie_mask_length(graph, cache), {cache.past_dim: 0})
    past = {id(g.value(name)): name for name in cache.past_names}
    for name in cache.past_names:
        for node, _ in list(g.value(name).uses):
            if node.op == "Shape":
                _shape_without_past(g, node)
    for node in list(g.nodes):
        if node.op != "Concat" or not any(id(v) in past for v in node.inputs if v is not None):
            continue
        rest = [v for v in node.inputs if v is not None and id(v) not in past]
        if not rest:
            raise IRError(f"node {node.name} (Concat) concatenates only past keys/values")
        kept = g.add_node("Concat", rest, dict(node.attrs), before=node).output  # one operand: a copy
        out, name = node.output, node.output.name
        out.replace_all_uses_with(kept)
        g.remove_node(node)
        g.rename_value(kept, name)
    for name in cache.past_names:
        v = g.value(name)
        if v.uses:
            user, _ = next(iter(v.uses))
            raise IRError(f"cannot derive the prefill step: {user.op} node {user.name} reads the past input "
                          f"{name!r} other than by appending to it")
    g.inputs = [v for v in g.inputs if id(v) not in past]
    eliminate_dead_code(g)
    g.infer_types()
    fold_graph(g)
    return g


def _shape_without_past(g: Graph, node) -> None:
    """``Shape(past)[start:end]`` (an export reading the batch size off the cache) rebuilt from
    ``input_ids``' batch dim and the constant dims, so the empty past input can go."""
    past = node.input(0)
    shape, ids = past.type.shape, g.value(INPUT_IDS)
    rank = len(shape)
    start, end = node.attrs.get("start", 0) or 0, node.attrs.get("end")
    start = start + rank if start < 0 else start
    end = rank if end is None else (end + rank if end < 0 else end)
    pieces = []
    for axis in range(max(start, 0), min(end, rank)):
        if isinstance(shape[axis], int):
            pieces.append(g.add_constant(np.array([shape[axis]], np.int64)))
        elif axis == 0 and shape[0] == ids.type.shape[0]:
            pieces.append(g.add_node("Shape", [ids], {"start": 0, "end": 1}, before=node).output)
        else:
            return  # left for the check below to name
    new = pieces[0] if len(pieces) == 1 else g.add_node("Concat", pieces, {"axis": 0}, before=node).output
    node.output.replace_all_uses_with(new)
    g.remove_node(node)


def decode_graph(graph: Graph, cache: KVCache, batch: int | None = None) -> Graph:
    """The graph run on one new token: ``seq`` = 1; with ``batch``, the batch size bound too
    (``batch=1``: one sequence, every projection a matrix-vector product with a static shape)."""
    sizes = {cache.seq_dim: 1}
    lead = graph.value(INPUT_IDS).type.shape[0]
    if batch is not None and isinstance(lead, str):
        sizes[lead] = batch
    return specialize_dims(tie_mask_length(graph, cache), sizes)
