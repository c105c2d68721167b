"""IR → ONNX for the loss, image, sequence, activation and window ops: the exported model, run
by ONNX's own reference evaluator, gives the interpreter's results (so the IR spelling, the
attributes and the opset each op needs all survive export), and it imports back."""

from __future__ import annotations

import numpy as np
from onnx.reference import ReferenceEvaluator

from optc.frontend.onnx_export import to_onnx
from optc.frontend.onnx_import import import_onnx
from optc.ir import DType, Graph, TensorType
from optc.ir.interpreter import run

F32, I64 = DType.FLOAT32, DType.INT64
RNG = np.random.default_rng(21)


def _graph() -> Graph:
    g = Graph("new_ops")
    x = g.add_input("x", TensorType(F32, (2, 3, 4, 5)))
    t = g.add_input("t", TensorType(I64, (2, 4, 5)))
    grid = g.add_input("grid", TensorType(F32, (2, 3, 2, 2)))
    seq = g.add_input("seq", TensorType(F32, (4, 2, 3)))
    lens = g.add_input("lens", TensorType(I64, (2,)))
    cos, sin = g.add_input("cos", TensorType(F32, (6, 2))), g.add_input("sin", TensorType(F32, (6, 2)))
    ids = g.add_input("ids", TensorType(I64, (2, 3)))
    i64 = lambda *v: g.add_constant(np.array(v, np.int64))  # noqa: E731
    f32 = lambda *v: g.add_constant(np.array(v, np.float32))  # noqa: E731
    sce = g.add_node("SoftmaxCrossEntropyLoss", [x, t], {"reduction": "mean", "ignore_index": 0}, num_outputs=2)
    outs = [
        g.op("NegativeLogLikelihoodLoss", x, t, reduction="sum"),
        *sce.outputs,
        g.op("Resize", x, None, f32(1, 1, 1.5, 0.8), mode="cubic", coordinate_transformation_mode="half_pixel_symmetric"),
        g.op("GridSample", x, grid, mode="cubic", padding_mode="border"),
        g.op("AffineGrid", g.add_constant(RNG.standard_normal((2, 2, 3)).astype(np.float32)), i64(2, 1, 3, 4)),
        g.op("Col2Im", g.op("Reshape", x, i64(1, 12, 10)), i64(3, 6), i64(2, 2)),
        g.op("CenterCropPad", x, i64(6, 3), axes=(2, 3)),
        g.op("CumProd", x, g.add_constant(np.array(3, np.int64)), exclusive=1),
        g.op("Swish", x, alpha=0.7),
        g.op("SwiGLU", x, x, alpha=1.3),
        g.op("Shrink", x, lambd=0.4),
        g.op("ReverseSequence", seq, lens, batch_axis=1, time_axis=0),
        g.op("RotaryEmbedding", g.op("Reshape", seq, i64(1, 6, 4)), cos, sin, g.op("Reshape", ids, i64(1, 6)), num_heads=1),
        g.op("HammingWindow", g.add_constant(np.array(8, np.int64)), periodic=0, output_datatype=DType.FLOAT64),
    ]
    g.set_outputs(outs)
    return g


def test_export_runs_in_onnx_reference_and_imports_back():
    g = _graph()
    rows = RNG.uniform(0, 6.3, (6, 2))
    feed = {"x": RNG.standard_normal((2, 3, 4, 5)).astype(np.float32), "t": RNG.integers(0, 3, (2, 4, 5)),
            "grid": RNG.uniform(-1.2, 1.2, (2, 3, 2, 2)).astype(np.float32),
            "seq": RNG.standard_normal((4, 2, 3)).astype(np.float32), "lens": np.array([3, 4], np.int64),
            "cos": np.cos(rows).astype(np.float32), "sin": np.sin(rows).astype(np.float32),
            "ids": RNG.integers(0, 6, (2, 3))}
    want = run(g, feed)
    model = to_onnx(g)
    got = ReferenceEvaluator(model).run(None, feed)
    for name, have in zip(g.output_names(), got):
        np.testing.assert_allclose(have, want[name], rtol=1e-4, atol=1e-5, err_msg=name)
    back = import_onnx(model)
    again = run(back, feed)
    for a, b in zip(g.output_names(), back.output_names()):
        np.testing.assert_allclose(again[b], want[a], rtol=1e-6, atol=1e-6, err_msg=a)
