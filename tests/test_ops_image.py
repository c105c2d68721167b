"""Resize, GridSample, AffineGrid, Col2Im and CenterCropPad: the reference interpreter against
independent implementations (ONNX's own reference evaluator, torch's interpolate / grid_sample /
affine_grid / fold), the compiled module against the interpreter (including hostile grids), and
bad attributes as one-line errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from onnx.reference import ReferenceEvaluator

from optc.ir import DType, Graph, IRError, TensorType
from optc.ir.interpreter import run

F32, I64 = DType.FLOAT32, DType.INT64
RNG = np.random.default_rng(3)


def _onnx_model(op: str, inputs: dict, attrs: dict, opset: int) -> onnx.ModelProto:
    """One-node model; ``inputs`` maps names to arrays (None: an absent optional input)."""
    names = [n if a is not None else "" for n, a in inputs.items()]
    vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for n, a in inputs.items() if a is not None]
    node = helper.make_node(op, names, ["y"], **attrs)
    first = next(a for a in inputs.values() if a is not None)
    out = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(first.dtype), None)
    return helper.make_model(helper.make_graph([node], "g", vis, [out]), opset_imports=[helper.make_opsetid("", opset)])


def _ours(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    """The model through optc's ONNX importer and the reference interpreter."""
    from optc.frontend.onnx_import import import_onnx

    g = import_onnx(model)
    return run(g, feed)[g.output_names()[0]]


# -- Resize --------------------------------------------------------------------------------------
RESIZE_CASES = [
    # (attrs, input shape, scales, sizes, roi)
    ({"mode": "nearest"}, (1, 2, 4, 5), [1, 1, 1.7, 0.6], None, None),
    ({"mode": "nearest", "nearest_mode": "ceil", "coordinate_transformation_mode": "asymmetric"}, (1, 1, 5, 3), None, [1, 1, 9, 7], None),
    ({"mode": "nearest", "nearest_mode": "round_prefer_ceil", "coordinate_transformation_mode": "half_pixel_symmetric"}, (2, 3, 4), [1, 1, 2.5], None, None),
    ({"mode": "linear"}, (1, 2, 4, 4), [1, 1, 0.5, 1.5], None, None),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, (1, 1, 3, 5), None, [1, 1, 7, 2], None),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, (1, 1, 6, 6), None, [1, 1, 1, 4], None),
    ({"mode": "linear", "antialias": 1}, (1, 1, 9, 8), [1, 1, 0.4, 0.7], None, None),
    ({"mode": "cubic"}, (1, 2, 5, 4), [1, 1, 1.6, 0.8], None, None),
    ({"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, (1, 1, 4, 4), [1, 1, 2.0, 0.5], None, None),
    ({"mode": "cubic", "antialias": 1, "coordinate_transformation_mode": "half_pixel_symmetric"}, (1, 1, 10, 7), None, [1, 1, 4, 3], None),
    ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 9.0}, (1, 1, 5, 5), None, [1, 1, 4, 6], [0, 0, -0.2, 0.3, 1, 1, 0.9, 1.3]),
    ({"mode": "linear", "axes": [3, 2]}, (2, 2, 4, 5), [0.6, 1.9], None, None),
    ({"mode": "nearest", "axes": [2], "keep_aspect_ratio_policy": "not_smaller"}, (2, 3, 5), None, [7], None),
    ({"mode": "cubic", "axes": [1, 2], "keep_aspect_ratio_policy": "not_larger"}, (1, 6, 8, 2), None, [4, 3], None),
    ({"mode": "linear"}, (2, 3, 4, 5, 3), [1, 1, 0.5, 1.5, 2.0], None, None),  # trilinear
]


def _resize_inputs(shape, scales, sizes, roi, dtype=np.float32):
    x = (RNG.standard_normal(shape) * 4).astype(dtype) if dtype == np.float32 else RNG.integers(0, 256, shape).astype(dtype)
    return {"X": x, "roi": None if roi is None else np.array(roi, np.float32),
            "scales": None if scales is None else np.array(scales, np.float32),
            "sizes": None if sizes is None else np.array(sizes, np.int64)}


@pytest.mark.parametrize("attrs,shape,scales,sizes,roi", RESIZE_CASES)
def test_resize_matches_onnx_reference(attrs, shape, scales, sizes, roi):
    inputs = _resize_inputs(shape, scales, sizes, roi)
    model = _onnx_model("Resize", inputs, attrs, 19)
    feed = {k: v for k, v in inputs.items() if v is not None}
    want = ReferenceEvaluator(model).run(None, feed)[0]
    got = _ours(model, feed)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resize_uint8_rounds_and_saturates_like_onnx():
    inputs = _resize_inputs((1, 1, 4, 4), [1, 1, 1.5, 1.5], None, None, dtype=np.uint8)
    model = _onnx_model("Resize", inputs, {"mode": "cubic"}, 19)
    feed = {k: v for k, v in inputs.items() if v is not None}
    np.testing.assert_array_equal(_ours(model, feed), ReferenceEvaluator(model).run(None, feed)[0])


@pytest.mark.parametrize("mode,ctm,torch_mode,align", [
    ("linear", "half_pixel", "bilinear", False),
    ("linear", "align_corners", "bilinear", True),
    ("nearest", "asymmetric", "nearest", None),
    ("cubic", "half_pixel", "bicubic", False),
])
def test_resize_matches_torch_interpolate(mode, ctm, torch_mode, align):
    x = RNG.standard_normal((2, 3, 5, 7)).astype(np.float32)
    g = Graph("resize")
    xi = g.add_input("x", TensorType(F32, x.shape))
    sizes = g.add_constant(np.array([2, 3, 8, 4], np.int64))
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    g.set_outputs([g.op("Resize", xi, None, None, sizes, **attrs)])
    got = run(g, {"x": x})[g.output_names()[0]]
    want = F.interpolate(torch.from_numpy(x), size=(8, 4), mode=torch_mode, align_corners=align).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs,inputs,match", [
    ({"mode": "bilinear"}, ("scales",), "mode must be one of nearest, linear, cubic"),
    ({"coordinate_transformation_mode": "center"}, ("scales",), "coordinate_transformation_mode must be one of"),
    ({"mode": "nearest", "antialias": 1}, ("scales",), "antialias applies to linear and cubic"),
    ({}, ("scales", "sizes"), "scales and sizes cannot both be given"),
    ({}, (), "one of scales and sizes must be given"),
    ({"axes": [1, 1]}, ("scales2",), "repeat an axis"),
])
def test_bad_resize_is_one_line_error(attrs, inputs, match):
    g = Graph("bad")
    x = g.add_input("x", TensorType(F32, (1, 1, 4, 4)))
    scales = g.add_constant(np.array([1, 1, 2, 2], np.float32)) if "scales" in inputs else None
    if "scales2" in inputs:
        scales = g.add_constant(np.array([2, 2], np.float32))
    sizes = g.add_constant(np.array([1, 1, 8, 8], np.int64)) if "sizes" in inputs else None
    with pytest.raises(IRError, match=match) as e:
        g.op("Resize", x, None, scales, sizes, **attrs)
    assert "\n" not in str(e.value) and "Resize" in str(e.value)


def test_resize_nonpositive_scale_is_an_error():
    g = Graph("bad")
    x = g.add_input("x", TensorType(F32, (1, 1, 4, 4)))
    with pytest.raises(IRError, match="must be a positive finite number"):
        g.op("Resize", x, None, g.add_constant(np.array([1, 1, 0, 2], np.float32)))


# -- GridSample ----------------------------------------------------------------------------------
def _grid(n, *out, r=2, spread=1.3):
    return RNG.uniform(-spread, spread, (n,) + out + (r,)).astype(np.float32)


@pytest.mark.parametrize("mode,torch_mode", [("linear", "bilinear"), ("nearest", "nearest"), ("cubic", "bicubic")])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_2d_matches_torch(mode, torch_mode, padding, align):
    x = RNG.standard_normal((2, 3, 5, 6)).astype(np.float32)
    grid = _grid(2, 4, 7)
    if mode == "cubic" and padding == "border":
        # ONNX clamps the coordinate into the border before taking the 4 taps; torch clamps
        # only the taps: ONNX's reference is the authority here.
        model = _onnx_model("GridSample", {"X": x, "grid": grid}, {"mode": "cubic", "padding_mode": "border",
                                                                   "align_corners": align}, 22)
        feed = {"X": x, "grid": grid}
        want = ReferenceEvaluator(model).run(None, feed)[0]
        np.testing.assert_allclose(_ours(model, feed), want, rtol=1e-4, atol=1e-5)
        return
    g = Graph("gs")
    xi, gi = g.add_input("x", TensorType(F32, x.shape)), g.add_input("grid", TensorType(F32, grid.shape))
    g.set_outputs([g.op("GridSample", xi, gi, mode=mode, padding_mode=padding, align_corners=align)])
    got = run(g, {"x": x, "grid": grid})[g.output_names()[0]]
    want = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=torch_mode, padding_mode=padding,
                         align_corners=bool(align)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode,torch_mode", [("linear", "bilinear"), ("nearest", "nearest")])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_3d_matches_torch(mode, torch_mode, padding):
    x = RNG.standard_normal((1, 2, 3, 4, 5)).astype(np.float32)
    grid = _grid(1, 2, 3, 4, r=3)
    g = Graph("gs3")
    xi, gi = g.add_input("x", TensorType(F32, x.shape)), g.add_input("grid", TensorType(F32, grid.shape))
    g.set_outputs([g.op("GridSample", xi, gi, mode=mode, padding_mode=padding)])
    got = run(g, {"x": x, "grid": grid})[g.output_names()[0]]
    want = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=torch_mode, padding_mode=padding,
                         align_corners=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_grid_sample_3d_cubic_matches_onnx_reference():
    """Torch has no trilinear-cubic sampling; ONNX's reference does any rank."""
    x = RNG.standard_normal((1, 1, 3, 4, 3)).astype(np.float32)
    grid = _grid(1, 2, 2, 3, r=3)
    model = _onnx_model("GridSample", {"X": x, "grid": grid}, {"mode": "cubic", "padding_mode": "reflection"}, 22)
    feed = {"X": x, "grid": grid}
    np.testing.assert_allclose(_ours(model, feed), ReferenceEvaluator(model).run(None, feed)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attrs,match", [
    ({"mode": "area"}, "mode must be one of linear, nearest, cubic"),
    ({"padding_mode": "wrap"}, "padding_mode must be one of zeros, border, reflection"),
])
def test_bad_grid_sample_is_one_line_error(attrs, match):
    g = Graph("bad")
    x, gi = g.add_input("x", TensorType(F32, (1, 1, 4, 4))), g.add_input("grid", TensorType(F32, (1, 2, 2, 2)))
    with pytest.raises(IRError, match=match) as e:
        g.op("GridSample", x, gi, **attrs)
    assert "\n" not in str(e.value)


def test_grid_sample_wrong_grid_is_an_error():
    g = Graph("bad")
    x, gi = g.add_input("x", TensorType(F32, (1, 1, 4, 4))), g.add_input("grid", TensorType(F32, (1, 2, 2, 3)))
    with pytest.raises(IRError, match="grid's last dim must be 2"):
        g.op("GridSample", x, gi)


# -- AffineGrid, Col2Im, CenterCropPad -----------------------------------------------------------
@pytest.mark.parametrize("size", [[2, 3, 4, 5], [2, 1, 3, 4, 5]])
@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid_matches_torch(size, align):
    r = len(size) - 2
    theta = RNG.standard_normal((size[0], r, r + 1)).astype(np.float32)
    g = Graph("ag")
    t = g.add_input("theta", TensorType(F32, theta.shape))
    g.set_outputs([g.op("AffineGrid", t, g.add_constant(np.array(size, np.int64)), align_corners=align)])
    got = run(g, {"theta": theta})[g.output_names()[0]]
    want = F.affine_grid(torch.from_numpy(theta), size, align_corners=bool(align)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 1], "pads": [1, 0, 1, 2], "dilations": [1, 2]}])
def test_col2im_matches_torch_fold(attrs):
    image, block = [5, 6], [2, 3]
    strides, pads, dil = attrs.get("strides", [1, 1]), attrs.get("pads", [0, 0, 0, 0]), attrs.get("dilations", [1, 1])
    blocks = [(image[i] + pads[i] + pads[i + 2] - dil[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(2)]
    x = RNG.standard_normal((2, 3 * 6, blocks[0] * blocks[1])).astype(np.float32)
    g = Graph("c2i")
    xi = g.add_input("x", TensorType(F32, x.shape))
    g.set_outputs([g.op("Col2Im", xi, g.add_constant(np.array(image, np.int64)), g.add_constant(np.array(block, np.int64)),
                        **attrs)])
    got = run(g, {"x": x})[g.output_names()[0]]
    if pads[0] == pads[2] and pads[1] == pads[3]:
        want = F.fold(torch.from_numpy(x), image, block, dilation=dil, padding=pads[:2], stride=strides).numpy()
    else:  # torch pads symmetrically: fold into the padded image, then crop
        full = [image[i] + pads[i] + pads[i + 2] for i in range(2)]
        want = F.fold(torch.from_numpy(x), full, block, dilation=dil, stride=strides).numpy()
        want = want[:, :, pads[0]:pads[0] + image[0], pads[1]:pads[1] + image[1]]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_col2im_blocks_that_do_not_fit_are_an_error():
    g = Graph("bad")
    x = g.add_input("x", TensorType(F32, (1, 4, 7)))
    g.set_outputs([g.op("Col2Im", x, g.add_constant(np.array([3, 3], np.int64)), g.add_constant(np.array([2, 2], np.int64)))])
    with pytest.raises(IRError, match="blocks"):
        run(g, {"x": np.zeros((1, 4, 7), np.float32)})


def test_center_crop_pad_matches_numpy():
    x = RNG.standard_normal((5, 4, 3)).astype(np.float32)
    g = Graph("ccp")
    xi = g.add_input("x", TensorType(F32, x.shape))
    g.set_outputs([g.op("CenterCropPad", xi, g.add_constant(np.array([2, 7], np.int64)), axes=(0, -2))])
    got = run(g, {"x": x})[g.output_names()[0]]
    want = np.zeros((2, 7, 3), np.float32)
    want[:, 1:5, :] = x[1:3]  # crop 5 -> 2 keeps rows 1..2; pad 4 -> 7 puts 1 before, 2 after
    np.testing.assert_array_equal(got, want)


# -- compiled ------------------------------------------------------------------------------------
def _image_graph() -> Graph:
    """Many image ops in one module (one build)."""
    g = Graph("image")
    x = g.add_input("x", TensorType(F32, (2, 3, 6, 5)))
    grid = g.add_input("grid", TensorType(F32, (2, 4, 3, 2)))
    theta = g.add_input("theta", TensorType(F32, (2, 2, 3)))
    cols = g.add_input("cols", TensorType(F32, (1, 12, 16)))
    i64 = lambda *v: g.add_constant(np.array(v, np.int64))  # noqa: E731
    f32 = lambda *v: g.add_constant(np.array(v, np.float32))  # noqa: E731
    outs = [
        g.op("Resize", x, None, f32(1, 1, 1.7, 0.6), mode="nearest"),
        g.op("Resize", x, None, None, i64(2, 3, 4, 9), mode="linear", coordinate_transformation_mode="align_corners"),
        g.op("Resize", x, None, f32(0.5, 0.7), mode="cubic", antialias=1, axes=(2, 3)),
        g.op("Resize", x, f32(0, 0, 0.1, -0.2, 1, 1, 0.8, 1.1), None, i64(2, 3, 4, 4), mode="linear",
             coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-5.0),
        g.op("GridSample", x, grid, mode="linear", padding_mode="zeros"),
        g.op("GridSample", x, grid, mode="cubic", padding_mode="reflection", align_corners=1),
        g.op("GridSample", x, grid, mode="nearest", padding_mode="border"),
        g.op("AffineGrid", theta, i64(2, 3, 4, 5), align_corners=0),
        g.op("Col2Im", cols, i64(4, 5), i64(2, 2), pads=(1, 0, 0, 0)),
        g.op("CenterCropPad", x, i64(9, 3), axes=(2, 3)),
    ]
    g.set_outputs(outs)
    return g


@pytest.fixture(scope="module")
def compiled_image():
    from optc.codegen.build import build

    g = _image_graph()
    cm = build(g, "x86")
    return g, cm


def _image_feed(grid=None):
    return {"x": RNG.standard_normal((2, 3, 6, 5)).astype(np.float32),
            "grid": _grid(2, 4, 3) if grid is None else grid,
            "theta": RNG.standard_normal((2, 2, 3)).astype(np.float32),
            "cols": RNG.standard_normal((1, 12, 16)).astype(np.float32)}


def test_compiled_image_ops_equal_interpreter(compiled_image):
    g, cm = compiled_image
    assert not cm.unscheduled
    feed = _image_feed()
    got, want = cm.load().run(feed), run(g, feed)
    for name in g.output_names():
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_compiled_grid_sample_hostile_grid_stays_in_bounds(compiled_image):
    """Huge, infinite and NaN coordinates are data: every backend reads inside the input."""
    g, cm = compiled_image
    grid = _grid(2, 4, 3)
    grid[0, 0, 0] = [1e30, -1e30]
    grid[0, 1, 1] = [np.inf, -np.inf]
    grid[1, 2, 0] = [np.nan, 0.5]
    grid[1, 3, 2] = [3e9, np.nan]
    feed = _image_feed(grid)
    got, want = cm.load().run(feed), run(g, feed)
    for name in g.output_names():
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5, err_msg=name, equal_nan=True)


def test_resize_with_runtime_scales_names_the_gap():
    from optc.codegen.build import build
    from optc.ir import UnsupportedOpError

    g = Graph("rt")
    x = g.add_input("x", TensorType(F32, (1, 1, 4, 4)))
    s = g.add_input("s", TensorType(F32, (4,)))
    g.set_outputs([g.op("Resize", x, None, s, mode="linear")])
    with pytest.raises(UnsupportedOpError, match="Resize scales known only at run time"):
        build(g, "x86")
