"""Kernels of the linear-algebra and neural-network ops (ir/ops/nn.py): MatMul, Gemm, Einsum,
convolution, pooling, normalizations and the composites ``Attention``, ``Linear``,
``AddLayerNorm`` and ``FusedConv`` (each the same arithmetic as the ops it replaces).

Convolution and pooling handle any ``auto_pad``, asymmetric ``pads``, ``dilations``,
``strides`` and ``ceil_mode`` for 1-D, 2-D and 3-D inputs by padding explicitly and then
calling torch with zero padding, so torch's own (symmetric-only) padding rules never apply.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import windows
from ..errors import IRError
from .engine import kernel, normalize_axis

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_STASH = {1: torch.float32, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


# -- linear algebra ----------------------------------------------------------------------------
@kernel("MatMul")
def _matmul(node, a, b):
    return torch.matmul(a, b)


@kernel("Gemm")
def _gemm(node, a, b, c=None):
    if node.attrs["transA"]:
        a = a.transpose(0, 1)
    if node.attrs["transB"]:
        b = b.transpose(0, 1)
    y = torch.matmul(a, b)
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else c * beta)
    return y


_LINEAR_ACT = {
    "none": lambda y: y,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
    "silu": F.silu,
}


def linear_activation(node, y: torch.Tensor) -> torch.Tensor:
    """Apply a fused op's ``activation`` epilogue (Linear, FusedConv)."""
    act = node.attrs["activation"]
    fn = _LINEAR_ACT.get(act)
    if fn is None:
        raise IRError(f"node {node.name} ({node.op}): unknown activation {act!r}")
    return fn(y)


@kernel("Linear")
def _linear(node, x, w, b=None):
    """act(X @ W + B), the same arithmetic as the MatMul/Add/activation it replaces."""
    y = torch.matmul(x, w)
    if b is not None:
        y = y + b
    return linear_activation(node, y)


@kernel("Einsum")
def _einsum(node, *xs):
    return torch.einsum(node.attrs["equation"].replace(" ", ""), *xs)


# -- convolution -------------------------------------------------------------------------------
def _spatial(node, x: torch.Tensor, w_kernel=None):
    """(n, kernel, strides, dilations) of a conv/pool node."""
    n = x.dim() - 2
    if n not in (1, 2, 3):
        raise IRError(f"node {node.name} ({node.op}): only 1-D, 2-D and 3-D inputs are supported, got rank {x.dim()}")
    kernel_shape, strides, dil = windows.window(node.attrs, n, w_kernel or ())
    return n, kernel_shape, strides, dil


def _pads(node, sizes, kernel_shape, strides, dil) -> tuple[list[int], list[int]]:
    """(begin, end) pads per spatial axis from ``auto_pad`` / ``pads``."""
    return windows.pads(node.attrs, list(sizes), kernel_shape, strides, dil)


def _pad_spatial(x: torch.Tensor, lo, hi, value: float = 0.0) -> torch.Tensor:
    if not any(lo) and not any(hi):
        return x
    flat = []
    for a in reversed(range(len(lo))):
        flat += [lo[a], hi[a]]
    return F.pad(x, flat, value=value)


@kernel("Conv")
def _conv(node, x, w, b=None):
    n, kernel_shape, strides, dil = _spatial(node, x, w.shape[2:])
    if list(w.shape[2:]) != kernel_shape:
        raise ValueError(f"kernel_shape {kernel_shape} does not match the weight's {list(w.shape[2:])}")
    lo, hi = _pads(node, x.shape[2:], kernel_shape, strides, dil)
    group = node.attrs["group"]
    if lo == hi:
        return _CONV[n](x, w, b, stride=strides, padding=lo, dilation=dil, groups=group)
    return _CONV[n](_pad_spatial(x, lo, hi), w, b, stride=strides, padding=0, dilation=dil, groups=group)


@kernel("FusedConv")
def _fused_conv(node, x, w, b=None):
    return linear_activation(node, _conv(node, x, w, b))


@kernel("ConvTranspose")
def _conv_transpose(node, x, w, b=None):
    n, kernel_shape, strides, dil = _spatial(node, x, w.shape[2:])
    if list(w.shape[2:]) != kernel_shape:
        raise ValueError(f"kernel_shape {kernel_shape} does not match the weight's {list(w.shape[2:])}")
    group = node.attrs["group"]
    opad = list(node.attrs["output_padding"] or [0] * n)
    lo, hi = windows.transpose_pads(node.attrs, list(x.shape[2:]), kernel_shape, strides, dil)
    y = _CONV_T[n](x, w, None, stride=strides, padding=0, output_padding=0, groups=group, dilation=dil)
    # Output padding extends the end with zeros; pads crop (negative pads extend).
    y = _pad_spatial(y, [-l for l in lo], [op - h for op, h in zip(opad, hi)])
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


# -- pooling -----------------------------------------------------------------------------------
def _pool_geometry(node, x):
    """(n, kernel, strides, dilations, lo, hi, extra): ``extra`` pads the end so that the
    windows a ceil_mode output adds lie inside the tensor; they count as outside the input."""
    n, kernel_shape, strides, dil = _spatial(node, x)
    sizes = list(x.shape[2:])
    lo, hi = _pads(node, sizes, kernel_shape, strides, dil)
    _, extra = windows.pool_extents(node.attrs, sizes, kernel_shape, strides, dil, lo, hi)
    return n, kernel_shape, strides, dil, lo, hi, extra


def _window_sum(x: torch.Tensor, n: int, kernel_shape, strides, dil) -> torch.Tensor:
    """Sum over each pooling window of an already padded tensor (a depthwise conv with a
    kernel of ones, which also covers dilation)."""
    shape = x.shape
    flat = x.reshape((shape[0] * shape[1], 1) + tuple(shape[2:]))
    ones = torch.ones((1, 1) + tuple(kernel_shape), dtype=x.dtype)
    y = _CONV[n](flat, ones, None, stride=strides, dilation=dil)
    return y.reshape(tuple(shape[:2]) + tuple(y.shape[2:]))


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


@kernel("MaxPool")
def _max_pool(node, x):
    n, kernel_shape, strides, dil, lo, hi, extra = _pool_geometry(node, x)
    src = x if x.dtype.is_floating_point else x.to(torch.float64)  # exact for int8/uint8
    hi_all = [h + e for h, e in zip(hi, extra)]
    xp = _pad_spatial(src, lo, hi_all, value=float("-inf"))
    want_indices = len(node.outputs) > 1
    res = _MAX_POOL[n](xp, kernel_shape, strides, 0, dil, ceil_mode=False, return_indices=want_indices)
    if not want_indices:
        return res
    y, idx = res
    # Indices: flattened over the whole input tensor, without padding; row-major, or
    # column-major over the spatial axes with storage_order=1.
    psizes = list(xp.shape[2:])
    sizes = list(x.shape[2:])
    coords = []
    rest = idx
    for i in reversed(range(n)):
        coords.append(torch.remainder(rest, psizes[i]) - lo[i])
        rest = torch.div(rest, psizes[i], rounding_mode="floor")
    coords.reverse()
    flat = torch.zeros_like(idx)
    order = range(n) if node.attrs["storage_order"] == 0 else reversed(range(n))
    for i in order:
        flat = flat * sizes[i] + coords[i]
    N, C = x.shape[:2]
    plane = math.prod(sizes)
    base = torch.arange(N * C, dtype=torch.int64).reshape((N, C) + (1,) * n) * plane
    return y, flat + base


def _avg_like(node, x, p: int | None):
    n, kernel_shape, strides, dil, lo, hi, extra = _pool_geometry(node, x)
    acc = _acc_dtype(x)
    src = x.to(acc)
    if p is not None:
        src = src.abs() if p == 1 else src.abs() ** p
    hi_all = [h + e for h, e in zip(hi, extra)]
    sums = _window_sum(_pad_spatial(src, lo, hi_all), n, kernel_shape, strides, dil)
    if p is not None:
        return (sums if p == 1 else sums ** (1.0 / p)).to(x.dtype)
    # Divisor: the window's cells inside the input, or inside input + explicit pads with
    # count_include_pad (never the ceil_mode tail).
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=acc)
    if node.attrs["count_include_pad"]:
        mask = _pad_spatial(_pad_spatial(ones, lo, hi, value=1.0), [0] * n, extra)
    else:
        mask = _pad_spatial(ones, lo, hi_all)
    counts = _window_sum(mask, n, kernel_shape, strides, dil)
    return (sums / counts).to(x.dtype)


@kernel("AveragePool")
def _average_pool(node, x):
    return _avg_like(node, x, None)


@kernel("LpPool")
def _lp_pool(node, x):
    return _avg_like(node, x, node.attrs["p"])


@kernel("GlobalAveragePool")
def _global_average_pool(node, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else x


@kernel("GlobalMaxPool")
def _global_max_pool(node, x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True) if x.dim() > 2 else x


# -- normalization -----------------------------------------------------------------------------
def _channel_shape(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


@kernel("BatchNormalization")
def _batch_norm(node, x, scale, bias, mean, var):
    """Inference form over channel axis 1."""
    if node.attrs["training_mode"]:
        raise IRError(f"node {node.name} (BatchNormalization): training_mode=1 is not supported")
    shape = _channel_shape(x)
    eps = node.attrs["epsilon"]
    return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(shape)


@kernel("InstanceNormalization")
def _instance_norm(node, x, scale, bias):
    dims = tuple(range(2, x.dim()))
    acc = _acc_dtype(x)
    xs = x.to(acc)
    mean = xs.mean(dim=dims, keepdim=True)
    d = xs - mean
    var = (d * d).mean(dim=dims, keepdim=True)
    y = (d / torch.sqrt(var + node.attrs["epsilon"])).to(x.dtype)
    shape = _channel_shape(x)
    return y * scale.reshape(shape) + bias.reshape(shape)


def _stash(node) -> torch.dtype:
    st = node.attrs["stash_type"]
    if st not in _STASH:
        raise ValueError(f"unsupported stash_type {st}")
    return _STASH[st]


@kernel("LayerNormalization")
def _layer_norm(node, x, scale, bias=None):
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    eps = node.attrs["epsilon"]
    stash = _stash(node)
    norm_shape = tuple(x.shape[axis:])
    if (len(node.outputs) == 1 and x.dtype == stash and tuple(scale.shape) == norm_shape
            and (bias is None or tuple(bias.shape) == norm_shape)):
        return F.layer_norm(x, norm_shape, scale, bias, eps)  # the same math, fused
    dims = tuple(range(axis, x.dim()))
    xs = x.to(stash)
    mean = xs.mean(dim=dims, keepdim=True)
    d = xs - mean
    var = (d * d).mean(dim=dims, keepdim=True)
    inv_std = 1.0 / torch.sqrt(var + eps)
    y = (d * inv_std).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv_std


@kernel("AddLayerNorm")
def _add_layer_norm(node, x, r, scale, bias=None):
    """The residual sum, then LayerNormalization's arithmetic (stash float32, or float64)."""
    s = x + r
    axis = normalize_axis(node.attrs["axis"], s.dim(), node)
    stash = torch.float64 if s.dtype == torch.float64 else torch.float32
    norm_shape = tuple(s.shape[axis:])
    if s.dtype == stash and tuple(scale.shape) == norm_shape and (bias is None or tuple(bias.shape) == norm_shape):
        y = F.layer_norm(s, norm_shape, scale, bias, node.attrs["epsilon"])
    else:
        dims = tuple(range(axis, s.dim()))
        ss = s.to(stash)
        d = ss - ss.mean(dim=dims, keepdim=True)
        var = (d * d).mean(dim=dims, keepdim=True)
        y = (d / torch.sqrt(var + node.attrs["epsilon"])).to(s.dtype) * scale
        if bias is not None:
            y = y + bias
    return y, s


@kernel("RMSNormalization")
def _rms_norm(node, x, scale):
    axis = normalize_axis(node.attrs["axis"], x.dim(), node)
    dims = tuple(range(axis, x.dim()))
    xs = x.to(_stash(node))
    ms = (xs * xs).mean(dim=dims, keepdim=True)
    return (xs / torch.sqrt(ms + node.attrs["epsilon"])).to(x.dtype) * scale


@kernel("GroupNormalization")
def _group_norm(node, x, scale, bias):
    """ONNX opset 21: statistics per (instance, group of channels), scale and bias per channel."""
    g = node.attrs["num_groups"]
    n, c = x.shape[:2]
    if g <= 0 or c % g:
        raise ValueError(f"num_groups {g} does not divide the {c} channels")
    if scale.numel() != c or bias.numel() != c:
        raise ValueError(f"scale and bias must have one entry per channel ({c}), got {scale.numel()} and {bias.numel()}")
    xs = x.to(_stash(node)).reshape(n, g, -1)
    mean = xs.mean(dim=-1, keepdim=True)
    d = xs - mean
    var = (d * d).mean(dim=-1, keepdim=True)
    y = (d / torch.sqrt(var + node.attrs["epsilon"])).reshape(x.shape).to(x.dtype)
    shape = _channel_shape(x)
    return y * scale.reshape(shape) + bias.reshape(shape)


@kernel("LRN")
def _lrn(node, x):
    size = node.attrs["size"]
    alpha, beta, bias = node.attrs["alpha"], node.attrs["beta"], node.attrs["bias"]
    # Channels c - floor((size-1)/2) .. c + ceil((size-1)/2), clipped to the tensor.
    before = (size - 1) // 2
    after = size - 1 - before
    sq = x * x
    flat = [0, 0] * (x.dim() - 2) + [before, after]
    windows = F.pad(sq, flat).unfold(1, size, 1)
    return x / (bias + (alpha / size) * windows.sum(dim=-1)) ** beta


# -- attention ---------------------------------------------------------------------------------
@kernel("Attention")
def _attention(node, q, k, v, mask=None):
    """softmax(Q Kᵀ · scale + mask) V with grouped-query heads; see the op's docstring. Half
    precision inputs are computed in float32 (as ONNX Runtime does). A query row whose keys are
    all masked out gives zeros (torch's scaled_dot_product_attention)."""
    hq, hk = q.shape[1], k.shape[1]
    if hq % hk:
        raise ValueError(f"query heads {hq} are not a multiple of key/value heads {hk}")
    dtype = q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.float()
    attn_mask = mask
    if node.attrs["is_causal"]:
        sq, sk = q.shape[2], k.shape[2]
        # Top-left aligned, as torch and ONNX (without a KV cache): query i sees keys j <= i.
        causal = torch.ones(sq, sk, dtype=torch.bool).tril()
        if mask is None:
            attn_mask = causal
        elif mask.dtype == torch.bool:
            attn_mask = mask & causal
        else:
            attn_mask = torch.where(causal, mask, torch.full((), float("-inf"), dtype=mask.dtype))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=node.attrs["scale"],
                                         enable_gqa=hq != hk)
    return out.to(dtype)
