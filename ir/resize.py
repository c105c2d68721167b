"""Resize geometry shared by type inference, the reference interpreter and codegen: which axes a
``Resize`` node scales, its output shape, and, per scaled axis, the source taps and weights of
every output position. One definition serves all three, so they cannot disagree about
``coordinate_transformation_mode`` or ``nearest_mode`` (as ``windows.py`` does for pooling).

Resize is separable (ONNX defines the N-D case as 1-D interpolation along one axis after the
other), so an axis plan is a small table: output position ``o`` along the axis is
``sum_k coeffs[o, k] * x[..., index[o, k], ...]``, with ``index`` always inside ``[0, in)``
(edge padding is a clamp) and, for ``tf_crop_and_resize``, a mask of the positions whose source
lies outside the input, which take ``extrapolation_value`` instead. The arithmetic follows the
ONNX reference implementation (float64 coordinates from the float32 scales).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
ASPECT_POLICIES = ("stretch", "not_larger", "not_smaller")


class ResizeError(ValueError):
    """An invalid Resize (attributes or operands); callers wrap it with the node's name."""


@dataclass(frozen=True)
class AxisPlan:
    """How one axis is resized: ``index``/``coeffs`` are [out, taps]; ``extrapolate`` is a bool
    [out] mask (tf_crop_and_resize only) or None."""

    axis: int
    size_in: int
    size_out: int
    index: np.ndarray
    coeffs: np.ndarray
    extrapolate: np.ndarray | None

    @property
    def is_gather(self) -> bool:
        """Every output position copies one input position (nearest): a plain gather."""
        return self.coeffs.shape[1] == 1


def check_attrs(attrs: Mapping[str, Any]) -> None:
    """Raise ResizeError for an attribute outside the ONNX definition."""
    mode = attrs.get("mode", "nearest")
    if mode not in MODES:
        raise ResizeError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    if ctm not in COORDINATE_MODES:
        raise ResizeError(f"coordinate_transformation_mode must be one of {', '.join(COORDINATE_MODES)}, got {ctm!r}")
    nm = attrs.get("nearest_mode", "round_prefer_floor")
    if nm not in NEAREST_MODES:
        raise ResizeError(f"nearest_mode must be one of {', '.join(NEAREST_MODES)}, got {nm!r}")
    pol = attrs.get("keep_aspect_ratio_policy", "stretch")
    if pol not in ASPECT_POLICIES:
        raise ResizeError(f"keep_aspect_ratio_policy must be one of {', '.join(ASPECT_POLICIES)}, got {pol!r}")
    if attrs.get("antialias", 0) and mode == "nearest":
        raise ResizeError("antialias applies to linear and cubic modes, not nearest")


def resize_axes(attrs: Mapping[str, Any], rank: int) -> list[int]:
    """The axes the scales/sizes/roi entries refer to, in their order."""
    axes = attrs.get("axes")
    if axes is None:
        return list(range(rank))
    out = []
    for a in axes:
        if not -rank <= a < rank:
            raise ResizeError(f"axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ResizeError(f"axes {list(axes)} repeat an axis")
    return out


def output_geometry(attrs: Mapping[str, Any], shape: Sequence[int], scales: Sequence[float] | None,
                    sizes: Sequence[int] | None) -> tuple[list[float], list[int]]:
    """(scale per axis, output size per axis) over all axes of ``shape`` (static ints)."""
    r = len(shape)
    axes = resize_axes(attrs, r)
    if (scales is None) == (sizes is None):
        raise ResizeError("exactly one of scales and sizes must be given")
    factors = [1.0] * r
    out = list(shape)
    if scales is not None:
        if len(scales) != len(axes):
            raise ResizeError(f"scales has {len(scales)} entries for {len(axes)} axes")
        for a, s in zip(axes, scales):
            if not s > 0 or not math.isfinite(s):
                raise ResizeError(f"scale {s} of axis {a} must be a positive finite number")
            factors[a] = float(s)
            out[a] = int(np.floor(float(s) * shape[a]))
        return factors, out
    if len(sizes) != len(axes):
        raise ResizeError(f"sizes has {len(sizes)} entries for {len(axes)} axes")
    for a, s in zip(axes, sizes):
        if s < 0:
            raise ResizeError(f"size {s} of axis {a} is negative")
        if shape[a] == 0 and s != 0:
            raise ResizeError(f"axis {a} is empty and cannot be resized to {s}")
    for a, s in zip(axes, sizes):
        factors[a] = s / shape[a] if shape[a] else 1.0
        out[a] = int(s)
    policy = attrs.get("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        cand = [factors[a] for a in axes]
        scale = min(cand) if policy == "not_larger" else max(cand)
        for a in axes:
            factors[a] = scale
            out[a] = int(scale * shape[a] + 0.5)  # round half up, as ONNX
    return factors, out


def output_shape(attrs: Mapping[str, Any], shape: Sequence, scales: Sequence[float] | None,
                 sizes: Sequence[int] | None) -> tuple | None:
    """The output shape when it follows from what is known: symbolic dims stay when they are
    not resized (or scaled by an integer factor). None where a resized dim is not static."""
    r = len(shape)
    axes = resize_axes(attrs, r)
    symbolic = [a for a in axes if not isinstance(shape[a], int)]
    if symbolic and sizes is not None and attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        output_geometry(attrs, [1] * r, scales, sizes)  # still check the operands
        return None  # the common scale depends on the symbolic extent
    static = [d if isinstance(d, int) else 1 for d in shape]
    _, out = output_geometry(attrs, static, scales, sizes)
    result = list(shape)
    for i, a in enumerate(axes):
        d = shape[a]
        if isinstance(d, int) or sizes is not None:
            result[a] = out[a]
        elif float(scales[i]) == 1.0:
            result[a] = d
        else:
            return None
    return tuple(result)


def plan(attrs: Mapping[str, Any], shape: Sequence[int], roi: Sequence[float] | None,
         scales: Sequence[float] | None, sizes: Sequence[int] | None) -> tuple[list[int], list[AxisPlan]]:
    """(output shape, the plans of the axes that change, in the order they are applied)."""
    check_attrs(attrs)
    r = len(shape)
    axes = resize_axes(attrs, r)
    factors, out = output_geometry(attrs, shape, scales, sizes)
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    full_roi = None
    if ctm == "tf_crop_and_resize":
        if roi is None:
            raise ResizeError("tf_crop_and_resize needs a roi")
        if len(roi) != 2 * len(axes):
            raise ResizeError(f"roi has {len(roi)} entries, expected {2 * len(axes)} (start and end per axis)")
        full_roi = [0.0] * r + [1.0] * r
        for i, a in enumerate(axes):
            full_roi[a], full_roi[r + a] = float(roi[i]), float(roi[len(axes) + i])
    plans = []
    for a in axes:
        same_roi = full_roi is None or (math.isclose(full_roi[a], 0.0) and math.isclose(full_roi[r + a], 1.0))
        if math.isclose(factors[a], 1.0) and out[a] == shape[a] and same_roi:
            continue  # identity along this axis (as the ONNX reference skips it)
        if shape[a] == 0 or out[a] == 0:
            plans.append(AxisPlan(a, shape[a], out[a], np.zeros((out[a], 1), np.int64), np.zeros((out[a], 1)), None))
            continue
        ax_roi = None if full_roi is None else (full_roi[a], full_roi[r + a])
        plans.append(_axis_plan(attrs, a, shape[a], out[a], factors[a], ax_roi))
    return out, plans


def _source_coords(ctm: str, y: np.ndarray, scale: float, n_in: int, out_w: float, n_out: int, roi):
    """Source coordinate of every output position, and the extrapolation mask."""
    extrap = None
    if ctm == "align_corners":
        x = np.zeros(n_out) if out_w == 1 else y * (n_in - 1) / (out_w - 1)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        if out_w == 1:
            x = np.full(n_out, (roi[1] - roi[0]) * (n_in - 1) / 2)
        else:
            x = y * (roi[1] - roi[0]) * (n_in - 1) / (out_w - 1)
        x = x + roi[0] * (n_in - 1)
        extrap = (x < 0) | (x > n_in - 1)
    elif ctm == "pytorch_half_pixel":
        x = np.full(n_out, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric
        offset = (n_in / 2) * (1 - n_out / out_w)
        x = offset + (y + 0.5) / scale - 0.5
    return x, extrap


def _coeffs(attrs: Mapping[str, Any], ratio: np.ndarray, scale: float) -> np.ndarray:
    """[out, taps] interpolation weights for the fractional positions ``ratio`` (in (0, 1])."""
    mode = attrs.get("mode", "nearest")
    if mode == "nearest":
        nm = attrs.get("nearest_mode", "round_prefer_floor")
        integral = ratio == np.floor(ratio)
        if nm == "round_prefer_floor":
            right = ratio > 0.5
        elif nm == "round_prefer_ceil":
            right = ratio >= 0.5
        elif nm == "floor":
            right = np.zeros_like(ratio, dtype=bool)
        else:
            right = np.ones_like(ratio, dtype=bool)
        right = right | integral
        return np.stack([~right, right], axis=1).astype(np.float64)
    antialias = bool(attrs.get("antialias", 0))
    if mode == "linear":
        if not antialias:
            return np.stack([1 - ratio, ratio], axis=1)
        s = min(scale, 1.0)
        start = int(np.floor(-1 / s) + 1)
        taps = np.arange(start, start + 2 - 2 * start)
        c = np.clip(1 - np.abs((taps[None, :] - ratio[:, None]) * s), 0, 1)
        return c / c.sum(axis=1, keepdims=True)
    a = float(attrs.get("cubic_coeff_a", -0.75))
    if not antialias:
        r = ratio
        return np.stack([
            ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
            ((a + 2) * r - (a + 3)) * r * r + 1,
            ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
            ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a,
        ], axis=1)
    s = min(scale, 1.0)
    i_start = int(np.floor(-2 / s) + 1)
    taps = np.arange(i_start, 2 - i_start)
    x = np.abs(s * (taps[None, :] - ratio[:, None]))
    c = np.where(x <= 1, (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1,
                 np.where(x < 2, a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a, 0.0))
    return c / c.sum(axis=1, keepdims=True)


def _axis_plan(attrs: Mapping[str, Any], axis: int, n_in: int, n_out: int, scale: float, roi) -> AxisPlan:
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    y = np.arange(n_out, dtype=np.float64)
    x, extrap = _source_coords(ctm, y, scale, n_in, scale * n_in, n_out, roi)
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ResizeError(f"axis {axis}: the source coordinates are not finite (roi or scale out of range)")
    x_int = np.floor(x)
    ratio = np.where(x == x_int, 1.0, x - x_int)  # prefer the pixel left of x
    coeffs = _coeffs(attrs, ratio, scale)
    n = coeffs.shape[1]
    # The n source positions nearest x (ties to the smaller one), in edge-padded coordinates.
    pad = int(math.ceil(n / 2))
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        base = -((n - 1) // 2)
        offset = np.where(frac <= 0.5, base, base + 1)
    index = (p + offset)[:, None] + np.arange(n)[None, :] - pad
    if attrs.get("exclude_outside", 0):
        coeffs = np.where((index < 0) | (index >= n_in), 0.0, coeffs)
        total = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    index = np.clip(index, 0, n_in - 1)
    if attrs.get("mode", "nearest") == "nearest":
        # One-hot weights: keep the chosen tap only (a gather).
        pick = np.argmax(coeffs, axis=1)
        index = index[np.arange(n_out), pick][:, None]
        coeffs = np.ones((n_out, 1))
    return AxisPlan(axis, n_in, n_out, index.astype(np.int64), coeffs, extrap if extrap is not None and extrap.any() else None)
