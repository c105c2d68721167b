"""Kernels of the image ops (ir/ops/image.py): Resize, GridSample, AffineGrid, Col2Im and
CenterCropPad.

Resize applies ``ir/resize.py``'s per-axis tables (the same ones codegen embeds); GridSample
follows the ONNX reference implementation's arithmetic (x = innermost coordinate first, nearest
rounds half to even, reflection folds about the borders) for any number of spatial axes.
Interpolation runs in float32 (float64 for float64 data, and for integer Resize data, whose
result is rounded half to even and saturated as ONNX says).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from .. import resize as rz
from ..geometry import base_grid, center_crop_pad_slices, col2im_positions
from ..ops.image import GRID_SAMPLE_MODES
from .engine import as_ints, kernel, normalize_axis


def _present(t: torch.Tensor | None) -> bool:
    return t is not None and t.numel() > 0


def _floats(t: torch.Tensor | None) -> list[float] | None:
    return [float(v) for v in t.detach().to(torch.float64).reshape(-1).tolist()] if _present(t) else None


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64


def _saturate(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Back to the input's element type: integers round half to even and saturate."""
    if dtype.is_floating_point:
        return y.to(dtype)
    info = torch.iinfo(dtype)
    return torch.clamp(torch.round(y), info.min, info.max).to(dtype)


# -- Resize ------------------------------------------------------------------------------------
@kernel("Resize")
def _resize(node, x, roi=None, scales=None, sizes=None):
    sz = as_ints(sizes) if _present(sizes) else None
    out_shape, plans = rz.plan(node.attrs, list(x.shape), _floats(roi), _floats(scales), sz)
    if not plans:
        return x
    arithmetic = any(not p.is_gather or p.extrapolate is not None for p in plans)
    y = x.to(_work_dtype(x.dtype)) if arithmetic else x
    for p in plans:
        idx = torch.from_numpy(p.index.reshape(-1))
        g = torch.index_select(y, p.axis, idx)
        if p.is_gather:
            y = g
        else:
            taps = p.coeffs.shape[1]
            g = g.reshape(tuple(y.shape[:p.axis]) + (p.size_out, taps) + tuple(y.shape[p.axis + 1:]))
            w = torch.from_numpy(p.coeffs).to(y.dtype).reshape((p.size_out, taps) + (1,) * (y.dim() - p.axis - 1))
            y = (g * w).sum(dim=p.axis + 1)
        if p.extrapolate is not None:
            mask = torch.from_numpy(p.extrapolate).reshape((p.size_out,) + (1,) * (y.dim() - p.axis - 1))
            y = torch.where(mask, torch.tensor(node.attrs["extrapolation_value"], dtype=y.dtype), y)
    assert list(y.shape) == out_shape
    return _saturate(y, x.dtype) if arithmetic else y


# -- GridSample --------------------------------------------------------------------------------
_CUBIC_A = -0.75


def reflect(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Fold coordinates outside [lo, hi] back inside by reflecting about the borders."""
    rng = hi - lo
    if rng <= 0:
        return torch.full_like(x, lo)
    below, above = x < lo, x > hi
    dx = torch.where(below, lo - x, torch.where(above, x - hi, torch.zeros_like(x)))
    n = torch.trunc(dx / rng)
    r = dx - n * rng
    even = torch.remainder(n, 2) == 0
    from_lo, from_hi = lo + r, hi - r
    return torch.where(below, torch.where(even, from_lo, from_hi),
                       torch.where(above, torch.where(even, from_hi, from_lo), x))


def _cubic_weights(f: torch.Tensor) -> list[torch.Tensor]:
    a = _CUBIC_A
    return [((a * (f + 1) - 5 * a) * (f + 1) + 8 * a) * (f + 1) - 4 * a,
            ((a + 2) * f - (a + 3)) * f * f + 1,
            ((a + 2) * (1 - f) - (a + 3)) * (1 - f) * (1 - f) + 1,
            ((a * (2 - f) - 5 * a) * (2 - f) + 8 * a) * (2 - f) - 4 * a]


def _axis_taps(coord: torch.Tensor, size: int, mode: str, padding: str, align: bool):
    """[(index, weight, valid)] of one spatial axis: ``index`` int64 inside [0, size)."""
    lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
    x = (coord + 1) / 2 * (size - 1) if align else ((coord + 1) * size - 1) / 2
    if mode == "nearest":
        x = torch.round(x)  # half to even, as PyTorch and the ONNX reference
    outside = (x < lo) | (x > hi)
    if padding == "border":
        x = torch.where(outside, torch.clamp(x, 0, size - 1), x)
    elif padding == "reflection":
        x = torch.where(outside, reflect(x, lo, hi), x)
    if mode == "nearest":
        points, weights = [torch.trunc(x)], [torch.ones_like(x)]
    else:
        x0 = torch.floor(x)
        f = x - x0
        if mode == "linear":
            points, weights = [x0, x0 + 1], [1 - f, f]
        else:
            points, weights = [x0 - 1, x0, x0 + 1, x0 + 2], _cubic_weights(f)
    taps = []
    for p, w in zip(points, weights):
        valid = None
        if padding == "zeros":
            valid = (p >= 0) & (p < size)
        elif padding == "reflection":
            p = torch.trunc(reflect(p, lo, hi))
        idx = torch.clamp(torch.nan_to_num(p, nan=0.0), 0, size - 1).to(torch.int64)
        taps.append((idx, w, valid))
    return taps


@kernel("GridSample")
def _grid_sample(node, x, grid):
    mode = GRID_SAMPLE_MODES[node.attrs["mode"]]
    padding = node.attrs["padding_mode"]
    align = bool(node.attrs["align_corners"])
    n, c = x.shape[:2]
    dims = list(x.shape[2:])
    r = len(dims)
    if grid.shape[0] != n or grid.shape[-1] != r:
        raise ValueError(f"grid {list(grid.shape)} does not fit X {list(x.shape)}")
    work = torch.float64 if torch.float64 in (x.dtype, grid.dtype) else torch.float32
    g = grid.to(work)
    out_sp = list(grid.shape[1:-1])
    p = math.prod(out_sp)
    per_axis = [_axis_taps(g[..., r - 1 - i].reshape(n, 1, p), dims[i], mode, padding, align) for i in range(r)]
    strides = [math.prod(dims[i + 1:]) for i in range(r)]
    xf = x.to(work).reshape(n, c, -1)
    y = torch.zeros((n, c, p), dtype=work)
    if xf.shape[2] == 0:
        return y.reshape([n, c] + out_sp).to(x.dtype)
    for combo in itertools.product(*per_axis):
        flat = sum(t[0] * s for t, s in zip(combo, strides))
        w = combo[0][1]
        for t in combo[1:]:
            w = w * t[1]
        val = torch.gather(xf, 2, flat.expand(n, c, p))
        masks = [t[2] for t in combo if t[2] is not None]
        if masks:
            ok = masks[0]
            for m in masks[1:]:
                ok = ok & m
            val = torch.where(ok, val, torch.zeros((), dtype=work))
        y = y + val * w
    return y.reshape([n, c] + out_sp).to(x.dtype)


# -- AffineGrid --------------------------------------------------------------------------------
@kernel("AffineGrid")
def _affine_grid(node, theta, size):
    sz = as_ints(size)
    n, sp = sz[0], sz[2:]
    r = len(sp)
    if tuple(theta.shape) != (n, r, r + 1):
        raise ValueError(f"theta {list(theta.shape)} does not fit size {sz} (expected [{n}, {r}, {r + 1}])")
    base = torch.from_numpy(base_grid(sp, bool(node.attrs["align_corners"])))
    grid = torch.matmul(base, theta.to(torch.float64).transpose(1, 2))
    return grid.reshape([n] + sp + [r]).to(theta.dtype)


# -- Col2Im ------------------------------------------------------------------------------------
@kernel("Col2Im")
def _col2im(node, x, image_shape, block_shape):
    image, block = as_ints(image_shape), as_ints(block_shape)
    if len(image) != len(block) or any(b <= 0 for b in block) or any(d < 0 for d in image):
        raise ValueError(f"image_shape {image} and block_shape {block} must have the same length and be positive")
    n, ck, length = x.shape
    k = math.prod(block)
    if ck % k:
        raise ValueError(f"input dim 1 ({ck}) is not a multiple of prod(block_shape) = {k}")
    pos = col2im_positions(node.attrs, image, block)
    if pos.shape[1] != length:
        raise ValueError(f"input has {length} blocks, image_shape {image} with block_shape {block} gives {pos.shape[1]}")
    c = ck // k
    s = math.prod(image)
    idx = torch.from_numpy(np.where(pos < 0, s, pos).reshape(-1))  # padding goes to a dump slot
    acc = torch.zeros((n, c, s + 1), dtype=x.dtype)
    acc.index_add_(2, idx, x.reshape(n, c, k * length))
    return acc[:, :, :s].reshape([n, c] + image)


# -- CenterCropPad -----------------------------------------------------------------------------
@kernel("CenterCropPad")
def _center_crop_pad(node, x, shape):
    target = as_ints(shape)
    axes = [normalize_axis(a, x.dim(), node) for a in (node.attrs["axes"] or range(x.dim()))]
    if len(target) != len(axes):
        raise ValueError(f"shape has {len(target)} entries for {len(axes)} axes")
    if any(t < 0 for t in target):
        raise ValueError(f"shape {target} must not be negative")
    src, dst, out = center_crop_pad_slices(list(x.shape), axes, target)
    y = torch.zeros(out, dtype=x.dtype)
    y[tuple(dst)] = x[tuple(src)]
    return y
