"""Numpy geometry of the image ops shared by the reference interpreter and codegen (as
``windows.py`` for pooling and ``resize.py`` for Resize): AffineGrid's base grid, Col2Im's
block positions, CenterCropPad's slices. All of it depends on shapes and attributes only."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


def base_grid(sizes: list[int], align: bool) -> np.ndarray:
    """[prod(sizes), r + 1] homogeneous normalized coordinates (x, y[, z], 1), x innermost."""
    axes = []
    for d in sizes:
        if align:
            axes.append(np.linspace(-1.0, 1.0, d) if d > 1 else np.full(d, -1.0))
        else:
            axes.append((np.arange(d, dtype=np.float64) * 2 + 1) / d - 1)
    mesh = np.meshgrid(*axes, indexing="ij")  # outermost axis first
    cols = [m.reshape(-1) for m in reversed(mesh)] + [np.ones(math.prod(sizes))]
    return np.stack(cols, axis=1)


def col2im_geometry(attrs: Mapping[str, Any], image: list[int], block: list[int]) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(dilations, begin pads, end pads, strides, blocks per axis) of a Col2Im node; ValueError
    when the attributes or the blocks do not fit the image."""
    r = len(image)
    dil = list(attrs["dilations"] or [1] * r)
    pads = list(attrs["pads"] or [0] * (2 * r))
    strides = list(attrs["strides"] or [1] * r)
    if len(dil) != r or len(strides) != r or len(pads) != 2 * r:
        raise ValueError(f"dilations/strides need {r} entries and pads {2 * r}")
    if any(v <= 0 for v in dil + strides) or any(v < 0 for v in pads):
        raise ValueError("dilations and strides must be positive and pads non-negative")
    nb = [(image[i] + pads[i] + pads[i + r] - dil[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(r)]
    if any(b <= 0 for b in nb):
        raise ValueError(f"the blocks {block} do not fit the image {image} with these pads")
    return dil, pads[:r], pads[r:], strides, nb


def col2im_positions(attrs: Mapping[str, Any], image: list[int], block: list[int]) -> np.ndarray:
    """[prod(block), L] flat image position each column entry adds to; -1 where it falls in the
    padding."""
    dil, lo, _hi, strides, nb = col2im_geometry(attrs, image, block)
    r = len(image)
    kk = np.stack(np.meshgrid(*[np.arange(b) for b in block], indexing="ij"), 0).reshape(r, -1)  # [r, K]
    bb = np.stack(np.meshgrid(*[np.arange(b) for b in nb], indexing="ij"), 0).reshape(r, -1)  # [r, L]
    pos = bb[:, None, :] * np.array(strides)[:, None, None] - np.array(lo)[:, None, None] \
        + kk[:, :, None] * np.array(dil)[:, None, None]  # [r, K, L]
    inside = np.all((pos >= 0) & (pos < np.array(image)[:, None, None]), axis=0)
    flat = np.zeros(pos.shape[1:], dtype=np.int64)
    for i in range(r):
        flat = flat * image[i] + pos[i]
    return np.where(inside, flat, -1)


def center_crop_pad_slices(dims: list[int], axes: list[int], target: list[int]):
    """(source slices, destination slices, output shape) of CenterCropPad: the kept middle of
    each cropped axis, and where the input lands in each padded one (odd extra at the end)."""
    src = [slice(0, d) for d in dims]
    dst = [slice(0, d) for d in dims]
    out = list(dims)
    for a, t in zip(axes, target):
        d = dims[a]
        out[a] = t
        if t < d:
            s = (d - t) // 2
            src[a] = slice(s, s + t)
            dst[a] = slice(0, t)
        elif t > d:
            s = (t - d) // 2
            dst[a] = slice(s, s + d)
    return src, dst, out
