"""``prune-heads``: remove the least important attention heads, physically.

Heads are ranked from calibration data (``importance=fisher``: Gauss-Newton estimate of the
output change, re-scored after every removal step; ``magnitude``; ``ablation``) and removed
globally (``ratio``), per layer (``layer_ratio``) or as many as an accuracy budget allows
(``min_cosine``: mean cosine of the output vectors on the calibration set). With ``refit`` the
output projections are re-fitted by ridge least squares on calibration activations: during
selection each reproduces its unpruned block on the current inputs; the final re-fit
(``refit_target=residual``) goes through the layers in order and makes each output projection,
and with ``compensate`` each FFN down projection, restore the unpruned model's block outputs,
undoing the drift the layers before it leave (MiniLM, 40% of heads, calibrated on sentences and
article leads: held-out cosine 0.962 -> 0.970). The rewrite slices Q/K/V columns and output-projection rows, fixes
every head count and width in the reshapes and splits (see ``heads``), drops whole KV groups
for GQA (and the same groups of a KV cache's past inputs: a decoder's cache shrinks with its
heads) and replaces a block whose heads are all gone by its output-projection bias, keeping
the residual path (in a decoder with a cache such a layer still computes its keys and values:
its ``present`` tensors are outputs of the step, which the pass does not remove). The pass works on a clone and commits only when the rewritten graph
reproduces the masked model it selected on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...ir.graph import Graph
from ...ir.types import TensorType
from ...ir.decoder import cache_names
from ..base import Pass, PassError, PassResult, option, register_pass
from .heads import AttentionBlock, find_attention_blocks
from .projections import replace_weight
from .shape_edits import ShapeEdit, StructureError, apply_edits
from .structured import Site, unit_rows
from .prune_ffn import ffn_sites
from .pruning import run_structured


def head_sites(graph: Graph) -> list[Site]:
    """One site per attention block the analysis understands (heads masked on the context)."""
    sites = []
    for b in find_attention_blocks(graph).blocks:
        d = b.head_dim
        wv = b.v.projection.matrix()
        wo = b.out.matrix()
        mag = np.array([np.linalg.norm(wv[:, b.v.columns(d, [b.group_of(h)])]) * np.linalg.norm(wo[h * d:(h + 1) * d])
                        for h in range(b.heads)])
        groups = [[g * b.group_size + j for j in range(b.group_size)] for g in range(b.kv_heads)]
        sites.append(Site(b.name, b.heads, groups, b.context, b.head_axis, b.out, d, mag, b.residual, b.block_output))
    return sites


def _new_value(block: AttentionBlock, nq: int, nkv: int, edit: ShapeEdit, traced_proj: dict[str, str]) -> int:
    d = block.head_dim
    width = {"q": nq * d, "k": nkv * d, "v": nkv * d, "o": nq * d}
    what, role = edit.kind.split(":", 1)
    if what == "heads":
        return nq if role == "q" else nkv
    if what == "width":
        return width[role]
    if what == "widthall":
        return sum(width[r] for r, _ in block.segments[traced_proj[role]])
    segs = block.segments[traced_proj[role]]
    start = 0
    for r, _ in segs:
        if r == role:
            break
        start += width[r]
    return {"size": width[role], "start": start, "end": start + width[role]}[what]


def rewrite_heads(graph: Graph, blocks: list[AttentionBlock], kept: list[list[int]],
                  fits: list[tuple[np.ndarray, np.ndarray | None] | None]) -> None:
    """Physically remove every head not in ``kept[i]`` from block ``i`` (whole KV groups), with
    the output projections' new rows from ``fits`` (None: the original rows)."""
    for b, heads, fit in zip(blocks, kept, fits):
        if len(heads) == b.heads and fit is None:
            continue
        groups = sorted({b.group_of(h) for h in heads})
        if sorted(heads) != [g * b.group_size + j for g in groups for j in range(b.group_size)]:
            raise StructureError(f"{b.name}: heads {heads} are not whole KV groups")
        d = b.head_dim
        rows = unit_rows(heads, d)
        w_o = (fit[0] if fit is not None else b.out.matrix())[rows]
        bias_o = (fit[1] if fit is not None else None)
        if bias_o is None and b.out.bias is not None:
            bias_o = b.out.bias_vector()
        if not heads:
            _remove_block(graph, b, bias_o)
            continue
        if len(heads) < b.heads:
            cols = {"q": b.q.columns(d, heads), "k": b.k.columns(d, groups), "v": b.v.columns(d, groups)}
            for proj in b.projections():
                c = [x for role, _ in b.segments[proj.name] for x in cols[role]]
                bias = proj.bias_vector()
                replace_weight(graph, proj, proj.matrix()[:, c], None if bias is None else bias[c])
            traced = {s.role: s.projection.name for s in (b.q, b.k, b.v)}
            apply_edits(graph, b.edits, lambda e: _new_value(b, len(heads), len(groups), e, traced))
            _check_equal_splits(b, len(heads), len(groups))
            for c in b.carried:  # the cache shrinks with the heads it holds
                shape = list(c.value.shape)
                shape[c.axis] = len(groups) if c.level == "kv" else len(heads)
                c.value.type = TensorType(c.value.dtype, tuple(shape))
        replace_weight(graph, b.out, w_o, None if b.out.bias is None else bias_o)


def _check_equal_splits(b: AttentionBlock, nq: int, nkv: int) -> None:
    if nq != nkv and any(len(s) > 1 for s in b.segments.values()):
        for s in (b.q, b.k, b.v):
            p = s.projection.output
            for n, _ in p.uses:
                if n.op == "Split" and n.input(1) is None:
                    raise StructureError(f"{b.name}: an equal Split of a fused QKV projection cannot take unequal parts")


def _remove_block(graph: Graph, b: AttentionBlock, bias: np.ndarray | None) -> None:
    """All heads gone: the block adds its output projection's bias (or nothing) to the
    residual stream."""
    if b.residual is None or b.block_output is None:
        raise StructureError(f"{b.name}: all heads removed but no residual path found")
    _remove_block_value(graph, b.block_output, b.residual, bias, b.name)


def _remove_block_value(graph: Graph, out, residual, bias: np.ndarray | None, name: str) -> None:
    """Replace a block's output ``out`` (added to ``residual``) by its constant ``bias``,
    broadcast to the residual's shape."""
    const = np.zeros(out.shape[-1], np.float32) if bias is None else np.asarray(bias, np.float32)
    c = graph.add_constant(const, graph.unique_name(f"{name}.removed_bias"))
    first = out.uses[0][0]
    shape = graph.add_node("Shape", [residual], before=first).output
    expanded = graph.add_node("Expand", [c, shape], before=first).output
    out.replace_all_uses_with(expanded)


@register_pass
@dataclass
class PruneHeads(Pass):
    """Remove the least important attention heads (physically smaller Q/K/V/O projections),
    ranked on calibration data; global ratio, per-layer ratio or accuracy budget; optional
    least-squares re-fit of the output projections."""

    name: ClassVar[str] = "prune-heads"
    lossy: ClassVar[bool] = True
    ratio: float = option(0.0, "global fraction of heads to remove, in [0, 1)")
    layer_ratio: float = option(0.0, "fraction of heads to remove in every layer (instead of a global ranking)")
    min_cosine: float = option(0.0, "accuracy budget: smallest calibration mean cosine allowed (alone: remove as many heads as it allows)")
    importance: str = option("fisher", "fisher | magnitude | ablation")
    refit: bool = option(True, "re-fit the output projections by ridge least squares on calibration activations")
    steps: int = option(4, "removal rounds, re-scoring (and re-fitting) after each")
    shortlist: int = option(2, "fisher: measure the effect of this many x each round's count of best candidates and remove by that (0/1: off)")
    ridge: float = option(0.3, "re-fit regularization (pull towards the original weights), relative to the mean input energy; 0.3 measured best on MiniLM")
    refit_target: str = option("residual", "local: reproduce the unpruned layer on the current inputs; residual: also undo the drift of the residual stream (a final in-order re-fit)")
    compensate: bool = option(True, "with the residual re-fit, also re-fit every feed-forward block's down projection to restore the unpruned block outputs")

    def run(self, graph, ctx) -> PassResult:
        _require_empty_cache(graph, ctx.calibration)
        return run_structured(self, graph, ctx, kind="heads", sites_of=head_sites,
                              blocks_of=lambda g: find_attention_blocks(g),
                              rewrite=lambda g, info, kept, fits: rewrite_heads(g, info.blocks, kept, fits),
                              layer_nodes=lambda info: [block_nodes(b) for b in info.blocks],
                              compensation_of=ffn_sites if self.compensate else None)


def _require_empty_cache(graph: Graph, calibration) -> None:
    """A decoder is pruned on windows that start with an empty cache (``token_windows`` makes
    them): the pruned graph takes a smaller cache, and only an empty one means the same for
    both."""
    past, _ = cache_names(graph)
    for feed in calibration:
        full = sorted(name for name in past if np.size(feed.get(name, ())) > 0)
        if full:
            raise PassError(f"prune-heads: calibration input {full[0]!r} holds a non-empty KV cache; calibrate a "
                            f"decoder on windows that start with an empty cache (past length 0)")


def block_nodes(b: AttentionBlock) -> list[str]:
    """The nodes a block's parameters and FLOPs are counted over: its projections (with bias
    adds) and the attention core."""
    names = [b.core.name]
    for p in b.projections() + [b.out]:
        names.append(p.node.name)
        if p.bias_add is not None:
            names.append(p.bias_add.name)
    return names
