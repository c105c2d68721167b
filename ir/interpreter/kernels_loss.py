"""Kernels of the loss ops (ir/ops/loss.py): NegativeLogLikelihoodLoss and
SoftmaxCrossEntropyLoss. Half-precision scores are computed in float32."""

from __future__ import annotations

import torch

from .. import checks
from ..errors import IRError
from ..ops.loss import target_out_of_range
from .engine import kernel


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def nll(node, logp: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The NLL loss of log-probabilities ``logp`` [N, C, ...] (in their own dtype), reduced as
    the node says. A target outside [0, C) that is not ``ignore_index`` is an InvalidValueError
    naming the node, worded as the compiled module's check."""
    c = logp.shape[1]
    t = target.to(torch.int64)
    ii = node.attrs["ignore_index"]
    keep = torch.ones_like(t, dtype=torch.bool) if ii is None else t != ii
    bad = keep & ((t < 0) | (t >= c))
    if bool(bad.any()):
        shape = node.inputs[0].shape
        raise checks.invalid(node, target_out_of_range(shape[1] if shape is not None else None, ii))
    if weight is not None and weight.shape != (c,):
        raise IRError(f"node {node.name} ({node.op}): the weight has shape {list(weight.shape)}, expected [{c}]")
    safe = torch.where(keep, t, torch.zeros_like(t))
    picked = torch.gather(logp, 1, safe.unsqueeze(1)).squeeze(1)
    if weight is None:
        w = keep.to(logp.dtype)
    else:
        w = torch.where(keep, weight.to(logp.dtype)[safe], torch.zeros((), dtype=logp.dtype))
    loss = -picked * w
    red = node.attrs["reduction"]
    if red == "none":
        return loss
    if red == "sum":
        return loss.sum()
    if red == "mean":
        return loss.sum() / w.sum()
    raise IRError(f"node {node.name} ({node.op}): unknown reduction {red!r}")


@kernel("NegativeLogLikelihoodLoss")
def _nll_loss(node, x, target, weight=None):
    acc = _acc(x)
    return nll(node, x.to(acc), target, weight).to(x.dtype)


@kernel("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(node, scores, labels, weights=None):
    acc = _acc(scores)
    logp = torch.log_softmax(scores.to(acc), dim=1)
    return nll(node, logp, labels, weights).to(scores.dtype), logp.to(scores.dtype)
