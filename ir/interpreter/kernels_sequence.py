"""Kernels of ir/ops/sequence.py: CumProd, ReverseSequence, RotaryEmbedding. Data-dependent
indices (sequence lengths, position ids) out of range are errors naming the node."""

from __future__ import annotations

import torch

from .. import checks
from ..errors import IRError
from ..ops.sequence import sequence_length_out_of_range
from .engine import as_ints, kernel, normalize_axis


@kernel("CumProd")
def _cumprod(node, x, axis):
    (a,) = as_ints(axis)
    a = normalize_axis(a, x.dim(), node)
    if node.attrs["reverse"]:
        x = x.flip(a)
    if node.attrs["exclusive"] and x.shape[a]:
        x = torch.cat([torch.ones_like(x.narrow(a, 0, 1)), x.narrow(a, 0, x.shape[a] - 1)], dim=a)
    y = torch.cumprod(x, dim=a).to(x.dtype)
    return y.flip(a) if node.attrs["reverse"] else y


@kernel("ReverseSequence")
def _reverse_sequence(node, x, lens):
    b = normalize_axis(node.attrs["batch_axis"], x.dim(), node)
    ta = normalize_axis(node.attrs["time_axis"], x.dim(), node)
    steps = x.shape[ta]
    ls = lens.to(torch.int64)
    if ls.shape != (x.shape[b],):
        raise IRError(f"node {node.name} ({node.op}): sequence_lens has shape {list(ls.shape)}, expected [{x.shape[b]}]")
    bad = (ls < 0) | (ls > steps)
    if bool(bad.any()):
        shape = node.inputs[0].shape
        raise checks.invalid(node, sequence_length_out_of_range(shape[ta] if shape is not None else None))
    t = torch.arange(steps, dtype=torch.int64)
    tt = t.reshape([steps if i == ta else 1 for i in range(2)])
    ll = ls.reshape([x.shape[b] if i == b else 1 for i in range(2)])
    src = torch.where(tt < ll, ll - 1 - tt, tt)  # [dim 0, dim 1]: the time step each position reads
    idx = src.reshape(tuple(src.shape) + (1,) * (x.dim() - 2)).expand(x.shape)
    return torch.gather(x, ta, idx)


@kernel("RotaryEmbedding")
def _rotary_embedding(node, x, cos, sin, position_ids=None):
    """The ONNX reference algorithm: [B, S, H, D] view, rotate the first ``rot`` features."""
    dtype = x.dtype
    four_d = x.dim() == 4
    if four_d:
        xs = x.transpose(1, 2)  # [B, S, H, D]
    else:
        heads = node.attrs["num_heads"]
        b, s, hidden = x.shape
        xs = x.reshape(b, s, heads, hidden // heads)
    head = xs.shape[3]
    rot = node.attrs["rotary_embedding_dim"] or head
    half = rot // 2
    if position_ids is not None:
        n_pos = cos.shape[0]
        if bool(((position_ids < -n_pos) | (position_ids >= n_pos)).any()):  # negative ids count from the end
            shape = node.inputs[1].shape
            raise checks.invalid(node, checks.index_out_of_range(shape[0] if shape is not None else None, 0))
        cos, sin = cos[position_ids], sin[position_ids]
    if cos.shape[-1] != half or sin.shape[-1] != half:
        raise ValueError(f"the cos/sin caches' last dim must be rotary_embedding_dim / 2 = {half}")
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    c, s_ = cos.to(work).unsqueeze(2), sin.to(work).unsqueeze(2)  # [B, S, 1, half]
    xr, rest = xs[..., :rot].to(work), xs[..., rot:]
    if node.attrs["interleaved"]:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
    real = c * x1 - s_ * x2
    imag = s_ * x1 + c * x2
    if node.attrs["interleaved"]:
        rotated = torch.stack([real, imag], dim=-1).reshape(xr.shape)
    else:
        rotated = torch.cat([real, imag], dim=-1)
    y = torch.cat([rotated.to(dtype), rest], dim=-1)
    return y.transpose(1, 2) if four_d else y.reshape(x.shape)
