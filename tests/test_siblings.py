"""Sibling quantized projections merge into one GEMM (passes/fusion/siblings.py): which nodes
merge, that the merged graph computes the same bits in the interpreter, that a compiled module
(which merges on its own copy) matches the unmerged graph, and that the precision passes give
Q/K/V one SmoothQuant multiplier so that they can merge."""

from __future__ import annotations

import numpy as np
import pytest

from optc.ir import DType, Graph, TensorType
from optc.ir.interpreter import run
from optc.passes.fusion.siblings import merge_sibling_projections

RNG = np.random.default_rng(11)
K = 40


def _qlinear(g, x, n, name, bias=True, smooth=None, static=None, **attrs):
    w = RNG.integers(-127, 128, (K, n)).astype(np.int8)
    s = (RNG.random(n) * 0.02 + 1e-3).astype(np.float32)
    ins = [x, g.add_constant(w, f"{name}.w"), g.add_constant(s, f"{name}.s"), None,
           g.add_constant(RNG.standard_normal(n).astype(np.float32), f"{name}.b") if bias else None]
    if static is not None:
        ins += [g.add_constant(np.float32(static[0]), f"{name}.xs"), g.add_constant(np.uint8(static[1]), f"{name}.xz")]
    if smooth is not None:
        ins += [None] * (7 - len(ins)) + [g.add_constant(smooth, f"{name}.m")]
    attrs = {"act_quant": "dynamic" if static is None else "static", "act_qmax": 127, **attrs}
    return g.op("QLinear", *ins, **attrs)


def _block(static=None):
    """A norm feeding Q/K/V (one merges with bias, one without), an odd-one-out with its own
    smoothing, a weight-only layer and a GELU layer: only the first three can merge."""
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, ("b", "s", K)))
    h = g.op("LayerNormalization", x, g.add_constant(np.ones(K, np.float32)), g.add_constant(np.zeros(K, np.float32)),
             axis=-1)
    m = (RNG.random(K) + 0.5).astype(np.float32)
    outs = [_qlinear(g, h, 24, "q", smooth=m, static=static), _qlinear(g, h, 24, "k", bias=False, smooth=m.copy(), static=static),
            _qlinear(g, h, 16, "v", smooth=m.copy(), static=static),
            _qlinear(g, h, 8, "other", smooth=(m * 2).astype(np.float32), static=static),
            _qlinear(g, h, 8, "wonly", act_quant="none"),
            _qlinear(g, h, 8, "gelu", smooth=m.copy(), static=static, activation="gelu")]
    g.set_outputs([g.op("Concat", *outs, axis=-1), outs[0]])
    g.infer_types()
    return g


@pytest.mark.parametrize("static", [None, (0.04, 60)], ids=["dynamic", "static"])
def test_siblings_merge_bit_exact(static):
    g = _block(static)
    merged = g.clone()
    assert merge_sibling_projections(merged) == 2
    ops = [n.op for n in merged.nodes]
    assert ops.count("QLinear") == 4 and ops.count("Split") == 1
    big = next(n for n in merged.nodes if n.op == "QLinear" and n.input(1).const.shape[1] == 64)
    assert big.input(4).const[24:48].tolist() == [0.0] * 24  # K had no bias
    assert merged.output_names() == g.output_names()
    x = RNG.standard_normal((2, 7, K)).astype(np.float32) * 3
    want, got = run(g, {"x": x}), run(merged, {"x": x})
    for name in g.output_names():
        np.testing.assert_array_equal(got[name], want[name])
    assert merge_sibling_projections(merged) == 0  # nothing left to merge


def test_compiled_module_merges_and_matches_the_interpreter():
    from optc.codegen.build import build

    g = _block()
    x = RNG.standard_normal((1, 9, K)).astype(np.float32)
    want = run(g, {"x": x})
    got = build(g, "x86").load().run({"x": x})
    for name in g.output_names():
        scale = float(np.abs(want[name]).max())
        assert float(np.abs(got[name] - want[name]).max()) <= 2e-6 * scale
    assert sum(n.op == "QLinear" for n in g.nodes) == 6  # the caller's graph is left as it was


@pytest.mark.parametrize("target", [
    "x86-avx512", '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"}',  # built only here
    pytest.param("arm64-dotprod", marks=pytest.mark.arm64), pytest.param("arm64-i8mm", marks=pytest.mark.arm64),
])
def test_merged_siblings_build_for_other_presets(target):
    """The merged GEMM compiles for the CPUs CI may land on, and (arm64 tier) runs under qemu
    matching the unmerged graph in the interpreter."""
    from optc.codegen.build import build

    g = _block()
    cm = build(g, target)
    assert not cm.unscheduled
    if target.startswith("arm64"):
        x = RNG.standard_normal((1, 9, K)).astype(np.float32)
        want, got = run(g, {"x": x}), cm.load().run({"x": x})
        for name in g.output_names():
            assert float(np.abs(got[name] - want[name]).max()) <= 2e-6 * float(np.abs(want[name]).max())


def test_quantize_smooths_siblings_alike():
    """quantize{int8} on a block whose norm feeds Q, K and V: one multiplier for all three, so
    codegen merges them."""
    from optc.passes import PassContext, PassManager

    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (1, "s", K)))
    gamma = (RNG.random(K) + 0.5).astype(np.float32)
    gamma[3] = 40  # an outlier channel, as trained norms have, for SmoothQuant to move
    h = g.op("LayerNormalization", x, g.add_constant(gamma), g.add_constant(np.zeros(K, np.float32)), axis=-1)
    outs = [g.op("Linear", h, g.add_constant(RNG.standard_normal((K, 16)).astype(np.float32) * (1 + 4 * (i == 1)), f"w{i}"))
            for i in range(3)]
    g.set_outputs([g.op("Concat", *outs, axis=-1)])
    g.infer_types()
    calib = [{"x": RNG.standard_normal((1, 12, K)).astype(np.float32)} for _ in range(8)]
    PassManager.parse("quantize{precision=int8}").run(g, PassContext(calibration=calib, target="x86"))
    smooth = [n.input(7).const for n in g.nodes if n.op == "QLinear"]
    assert len(smooth) == 3 and all(np.array_equal(s, smooth[0]) for s in smooth)
    assert smooth[0][3] < 1  # the outlier channel was shrunk
    assert merge_sibling_projections(g.clone()) == 2
