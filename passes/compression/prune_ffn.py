"""``prune-ffn``: remove the least important feed-forward neurons, physically.

The same machinery as ``prune-heads`` (``structured``/``pruning``) on the FFN structure
(``ffn``): a neuron is an up-projection column (and gate column, bias entry) plus a
down-projection row; importance from calibration data, global ``ratio`` / ``layer_ratio`` /
``min_cosine`` budget, optional ridge re-fit of the down projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...ir.graph import Graph
from ..base import Pass, PassResult, option, register_pass
from .ffn import FFNBlock, find_ffn_blocks
from .projections import replace_weight
from .pruning import run_structured
from .shape_edits import StructureError, apply_edits
from .structured import Site


def ffn_sites(graph: Graph) -> list[Site]:
    sites = []
    for b in find_ffn_blocks(graph).blocks:
        up = np.sqrt(sum(np.linalg.norm(p.matrix(), axis=0) ** 2 for p in b.ups))
        mag = up * np.linalg.norm(b.down.matrix(), axis=1)
        sites.append(Site(b.name, b.neurons, [[u] for u in range(b.neurons)], b.hidden, -1, b.down, 1, mag,
                          b.residual, b.block_output))
    return sites


def rewrite_ffn(graph: Graph, blocks: list[FFNBlock], kept: list[list[int]], fits) -> None:
    from .prune_heads import _remove_block_value

    for b, units, fit in zip(blocks, kept, fits):
        if len(units) == b.neurons and fit is None:
            continue
        w = (fit[0] if fit is not None else b.down.matrix())[units]
        bias = fit[1] if fit is not None and fit[1] is not None else b.down.bias_vector()
        if not units:
            if b.residual is None or b.block_output is None:
                raise StructureError(f"{b.name}: all neurons removed but no residual path found")
            _remove_block_value(graph, b.block_output, b.residual, bias, b.name)
            continue
        if len(units) < b.neurons:
            for p in b.ups:
                pb = p.bias_vector()
                replace_weight(graph, p, p.matrix()[:, units], None if pb is None else pb[units])
            apply_edits(graph, b.edits, lambda e: len(units))
        replace_weight(graph, b.down, w, None if b.down.bias is None else bias)


def ffn_nodes(b: FFNBlock) -> list[str]:
    names = [b.down.node.name] + [n.name for n in b.region]
    for p in b.ups + [b.down]:
        names.append(p.node.name)
        if p.bias_add is not None:
            names.append(p.bias_add.name)
    return list(dict.fromkeys(names))


@register_pass
@dataclass
class PruneFFN(Pass):
    """Remove the least important feed-forward neurons (physically narrower up/gate/down
    projections), ranked on calibration data; global ratio, per-layer ratio or accuracy
    budget; optional least-squares re-fit of the down projections."""

    name: ClassVar[str] = "prune-ffn"
    lossy: ClassVar[bool] = True
    ratio: float = option(0.0, "global fraction of neurons to remove, in [0, 1)")
    layer_ratio: float = option(0.0, "fraction of neurons to remove in every layer (instead of a global ranking)")
    min_cosine: float = option(0.0, "accuracy budget: smallest calibration mean cosine allowed (alone: remove as many neurons as it allows)")
    importance: str = option("fisher", "fisher | magnitude | ablation")
    refit: bool = option(True, "re-fit the down projections by ridge least squares on calibration activations")
    steps: int = option(4, "removal rounds, re-scoring (and re-fitting) after each")
    shortlist: int = option(0, "fisher: measure the effect of this many x each round's count of best candidates and remove by that (0/1: off)")
    ridge: float = option(0.1, "re-fit regularization, relative to the mean input energy")
    refit_target: str = option("local", "local: reproduce the unpruned layer on the current inputs; residual: also undo the drift of the residual stream")

    def run(self, graph, ctx) -> PassResult:
        return run_structured(self, graph, ctx, kind="neurons", sites_of=ffn_sites,
                              blocks_of=find_ffn_blocks,
                              rewrite=lambda g, info, kept, fits: rewrite_ffn(g, info.blocks, kept, fits),
                              layer_nodes=lambda info: [ffn_nodes(b) for b in info.blocks])
