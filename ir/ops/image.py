"""Image and spatial-resampling ops: ``Resize``, ``GridSample``, ``AffineGrid``, ``Col2Im`` and
``CenterCropPad`` (semantics of the newest ONNX definitions; ``ir/resize.py`` holds Resize's
geometry, shared with the interpreter and codegen)."""

from __future__ import annotations

import numpy as np

from .. import resize as rz
from ..errors import UnsupportedOpError
from ..symbolic import div_dims
from ..types import DType, TensorType
from ._common import FLOAT, INT, INTS, STRING, A, const_ints, norm_axis, op, require_float, unknown_shape_of_rank


def absent(ctx, i: int) -> bool:
    """An optional operand that is missing or an empty tensor (ONNX spells "absent" both ways)."""
    if not ctx.has(i):
        return True
    s = ctx.shape(i)
    return s is not None and len(s) == 1 and s[0] == 0


RESIZE_ATTRS = {
    "antialias": A(INT, 0),
    "axes": A(INTS, None),
    "coordinate_transformation_mode": A(STRING, "half_pixel"),
    "cubic_coeff_a": A(FLOAT, -0.75),
    "exclude_outside": A(INT, 0),
    "extrapolation_value": A(FLOAT, 0.0),
    "keep_aspect_ratio_policy": A(STRING, "stretch"),
    "mode": A(STRING, "nearest"),
    "nearest_mode": A(STRING, "round_prefer_floor"),
}


def resize_operands(ctx) -> tuple[bool, list[float] | None, list[int] | None]:
    """(known, scales, sizes): whether the scales/sizes operands are known at compile time,
    and their values (None where absent)."""
    scales = sizes = None
    known = True
    if not absent(ctx, 2):
        c = ctx.const(2)
        if c is None:
            known = False
        else:
            scales = [float(v) for v in np.asarray(c, dtype=np.float64).reshape(-1)]
    if not absent(ctx, 3):
        s = const_ints(ctx, 3)
        if s is None:
            known = False
        else:
            sizes = s
    return known, scales, sizes


@op("Resize", ["X", "roi?", "scales?", "sizes?"], attrs=RESIZE_ATTRS)
def _resize(ctx):
    """Resample the axes named by ``axes`` (default: all) to ``sizes`` or by ``scales`` with
    nearest / (bi)linear / (bi)cubic interpolation, per ONNX opset 19."""
    try:
        rz.check_attrs(ctx.attrs)
    except rz.ResizeError as e:
        raise ctx.fail(str(e)) from None
    t = ctx.type(0)
    if t.dtype is DType.BOOL:
        raise ctx.fail("X must be numeric, got bool")
    for i, what in ((1, "roi"), (2, "scales")):
        if ctx.has(i) and not ctx.dtype(i).is_float:
            raise ctx.fail(f"{what} must be a float tensor, got {ctx.dtype(i).value}")
    if ctx.has(3) and ctx.dtype(3) is not DType.INT64:
        raise ctx.fail(f"sizes must be int64, got {ctx.dtype(3).value}")
    if not absent(ctx, 2) and not absent(ctx, 3):
        raise ctx.fail("scales and sizes cannot both be given")
    if absent(ctx, 2) and absent(ctx, 3):
        raise ctx.fail("one of scales and sizes must be given")
    if t.shape is None:
        return [t]
    known, scales, sizes = resize_operands(ctx)
    if not known:
        return [t.with_shape(unknown_shape_of_rank(t.rank))]
    try:
        shape = rz.output_shape(ctx.attrs, t.shape, scales, sizes)
    except rz.ResizeError as e:
        raise ctx.fail(str(e)) from None
    return [t.with_shape(shape if shape is not None else unknown_shape_of_rank(t.rank))]


GRID_SAMPLE_MODES = {"linear": "linear", "nearest": "nearest", "cubic": "cubic"}
"""GridSample's modes (the ONNX importer renames opset 16's bilinear / bicubic)."""
GRID_SAMPLE_PADDING = ("zeros", "border", "reflection")


@op("GridSample", ["X", "grid"], ["Y"], attrs={"align_corners": A(INT, 0), "mode": A(STRING, "linear"),
                                               "padding_mode": A(STRING, "zeros")})
def _grid_sample(ctx):
    """Y[n, c, o...] = X[n, c] interpolated at the normalized coordinates grid[n, o..., :]
    (x first, i.e. innermost axis first), any number of spatial axes."""
    mode, pad = ctx.attr("mode"), ctx.attr("padding_mode")
    if mode not in GRID_SAMPLE_MODES:
        raise ctx.fail(f"mode must be one of linear, nearest, cubic, got {mode!r}")
    if pad not in GRID_SAMPLE_PADDING:
        raise ctx.fail(f"padding_mode must be one of {', '.join(GRID_SAMPLE_PADDING)}, got {pad!r}")
    if not ctx.dtype(0).is_float:
        raise UnsupportedOpError(f"GridSample of a {ctx.dtype(0).value} input is not supported (float inputs only)")
    require_float(ctx, 1)
    x, g = ctx.shape(0), ctx.shape(1)
    if x is None or g is None:
        return [TensorType(ctx.dtype(0), None if x is None else unknown_shape_of_rank(len(x)))]
    r = len(x) - 2
    if r < 1:
        raise ctx.fail(f"X must be [N, C, D1, ...] with a spatial axis, got rank {len(x)}")
    if len(g) != len(x):
        raise ctx.fail(f"grid must have rank {len(x)} like X, got rank {len(g)}")
    if isinstance(g[-1], int) and g[-1] != r:
        raise ctx.fail(f"grid's last dim must be {r} (one coordinate per spatial axis), got {g[-1]}")
    if isinstance(x[0], int) and isinstance(g[0], int) and x[0] != g[0]:
        raise ctx.fail(f"grid has batch {g[0]}, X has {x[0]}")
    return [TensorType(ctx.dtype(0), (x[0], x[1]) + tuple(g[1:-1]))]


@op("AffineGrid", ["theta", "size"], ["grid"], attrs={"align_corners": A(INT, 0)})
def _affine_grid(ctx):
    """The sampling grid [N, (D,) H, W, 2|3] of the affine maps theta [N, 2, 3] / [N, 3, 4] over
    an output of ``size`` [N, C, (D,) H, W] (normalized coordinates in [-1, 1])."""
    require_float(ctx, 0)
    if ctx.dtype(1) is not DType.INT64:
        raise ctx.fail(f"size must be int64, got {ctx.dtype(1).value}")
    th = ctx.shape(0)
    if th is not None and (len(th) != 3 or (isinstance(th[1], int) and isinstance(th[2], int)
                                            and (th[1], th[2]) not in ((2, 3), (3, 4)))):
        raise ctx.fail(f"theta must be [N, 2, 3] or [N, 3, 4], got {list(th)}")
    size = const_ints(ctx, 1)
    n = ctx.shape(1)[0] if ctx.shape(1) is not None else None
    if size is None:
        if isinstance(n, int):
            return [TensorType(ctx.dtype(0), (None,) * n)]
        return [TensorType(ctx.dtype(0), None)]
    if len(size) not in (4, 5):
        raise ctx.fail(f"size must have 4 or 5 entries ([N, C, H, W] or [N, C, D, H, W]), got {len(size)}")
    if th is not None and isinstance(th[1], int) and th[1] != len(size) - 2:
        raise ctx.fail(f"theta {list(th)} does not fit a {len(size) - 2}-D size")
    if any(isinstance(d, int) and d <= 0 for d in size[2:]):
        raise ctx.fail(f"size {size} must be positive")
    return [TensorType(ctx.dtype(0), (size[0],) + tuple(size[2:]) + (len(size) - 2,))]


@op("Col2Im", ["input", "image_shape", "block_shape"], ["output"],
    attrs={"dilations": A(INTS, None), "pads": A(INTS, None), "strides": A(INTS, None)})
def _col2im(ctx):
    """The inverse of im2col: sums the columns [N, C*prod(block), L] of sliding blocks back into
    an image [N, C, *image_shape] (overlapping blocks add up)."""
    x = ctx.shape(0)
    if x is not None and len(x) != 3:
        raise ctx.fail(f"input must be [N, C*prod(block_shape), L], got rank {len(x)}")
    img, blk = const_ints(ctx, 1), const_ints(ctx, 2)
    if img is None or blk is None or x is None:
        k = ctx.shape(1)[0] if ctx.shape(1) is not None else None
        return [ctx.type(0).with_shape(None if not isinstance(k, int) else (None,) * (k + 2))]
    if len(img) != len(blk):
        raise ctx.fail(f"image_shape has {len(img)} entries, block_shape {len(blk)}")
    if any(not isinstance(b, int) or b <= 0 for b in blk):
        raise ctx.fail(f"block_shape {blk} must be positive")
    k = int(np.prod(blk))
    c = x[1]
    if isinstance(c, int):
        if c % k:
            raise ctx.fail(f"input dim 1 ({c}) is not a multiple of prod(block_shape) = {k}")
        c = c // k
    else:
        c = div_dims(c, k)
    return [ctx.type(0).with_shape((x[0], c) + tuple(img))]


@op("CenterCropPad", ["input_data", "shape"], ["output_data"], attrs={"axes": A(INTS, None)})
def _center_crop_pad(ctx):
    """Crop or zero-pad each of ``axes`` to ``shape``, keeping the center (the odd element goes
    to the end)."""
    t = ctx.type(0)
    if not ctx.dtype(1).is_int:
        raise ctx.fail(f"shape must be an integer tensor, got {ctx.dtype(1).value}")
    if t.shape is None:
        return [t]
    axes = [norm_axis(a, t.rank) for a in (ctx.attr("axes") or range(t.rank))]
    if len(set(axes)) != len(axes):
        raise ctx.fail(f"axes {list(ctx.attr('axes'))} repeat an axis")
    target = const_ints(ctx, 1)
    shape = list(t.shape)
    if target is None:
        for a in axes:
            shape[a] = None
        return [t.with_shape(tuple(shape))]
    if len(target) != len(axes):
        raise ctx.fail(f"shape has {len(target)} entries for {len(axes)} axes")
    for a, d in zip(axes, target):
        if isinstance(d, int) and d < 0:
            raise ctx.fail(f"shape {target} must not be negative")
        shape[a] = d
    return [t.with_shape(tuple(shape))]

