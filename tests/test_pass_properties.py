"""Property tests: on random small graphs (chains of elementwise / MatMul / Reshape / Transpose /
Concat / Identity / Cast ops with duplicated subexpressions and dead branches) every exact pass
and the default pipeline keep the outputs (reference interpreter, 1e-5) and leave a graph the
verifier accepts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optc.ir import DType, Graph, TensorType
from optc.ir.interpreter import run
from optc.ir.verifier import verify
from optc.passes import PassManager, random_inputs, registered_passes

F32 = DType.FLOAT32
N = 4  # every tensor is [N, N]: shape-preserving ops compose freely

EXACT = sorted(name for name, cls in registered_passes().items() if not cls.lossy and not name.startswith("test-"))


@st.composite
def graphs(draw) -> Graph:
    g = Graph("random")
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    vals = [g.add_input("x", TensorType(F32, (N, N))), g.add_input("y", TensorType(F32, (N, N)))]

    def pick():
        return vals[draw(st.integers(0, len(vals) - 1))]

    def const():
        if draw(st.booleans()):
            return g.add_constant(np.full((N, N), 0.5, np.float32))  # duplicated by value
        return g.add_constant(rng.standard_normal((N, N)).astype(np.float32))

    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["add", "mul", "sub", "relu", "tanh", "matmul", "reshape", "transpose",
                                     "transpose2", "concat", "identity", "cast", "cast2", "dup", "const", "dropout"]))
        a = pick()
        if kind in ("add", "mul", "sub", "matmul"):
            b = pick() if draw(st.booleans()) else const()
            op = {"add": "Add", "mul": "Mul", "sub": "Sub", "matmul": "MatMul"}[kind]
            v = g.op(op, a, b)
        elif kind == "relu":
            v = g.op("Relu", a)
        elif kind == "tanh":
            v = g.op("Tanh", a)
        elif kind == "reshape":
            same = draw(st.booleans())
            r = g.op("Reshape", a, g.add_constant(np.array([N, N] if same else [N * N], np.int64)))
            v = r if same else g.op("Reshape", r, g.add_constant(np.array([N, N], np.int64)))
        elif kind == "transpose":
            v = g.op("Transpose", a, perm=draw(st.sampled_from([(1, 0), (0, 1)])))
        elif kind == "transpose2":
            v = g.op("Transpose", g.op("Transpose", a, perm=(1, 0)), perm=(1, 0))
        elif kind == "concat":
            c = g.op("Concat", a, pick(), axis=0)
            v = g.op("Slice", c, g.add_constant(np.array([0], np.int64)), g.add_constant(np.array([N], np.int64)),
                     g.add_constant(np.array([0], np.int64)))
        elif kind == "identity":
            v = g.op("Identity", a)
        elif kind == "cast":
            v = g.op("Cast", a, to=F32)
        elif kind == "cast2":
            v = g.op("Cast", g.op("Cast", a, to=DType.FLOAT64), to=F32)
        elif kind == "dup":  # the same subexpression again
            producers = [n for n in g.nodes if n.op in ("Add", "Mul", "Relu", "MatMul", "Tanh")]
            if not producers:
                continue
            n = producers[draw(st.integers(0, len(producers) - 1))]
            v = g.add_node(n.op, list(n.inputs), dict(n.attrs)).output
        elif kind == "const":  # a constant subexpression
            v = g.op("Add", a, g.op("Mul", const(), const()))
        else:
            v = g.add_node("Dropout", [a]).output
        vals.append(v)
    # Outputs: the last value and maybe another; the rest may be dead branches.
    outs = [vals[-1]]
    extra = vals[draw(st.integers(0, len(vals) - 1))]
    if extra.producer is not None and extra not in outs and draw(st.booleans()):
        outs.append(extra)
    g.set_outputs(outs)
    return g


def _check(g: Graph, pipeline: str) -> None:
    verify(g)
    before = g.clone()
    x = random_inputs(before, seed=3)
    ref = run(before, x)
    PassManager.parse(pipeline).run(g)
    verify(g)
    got = run(g, x)
    assert list(got) == list(ref)  # output names and order kept
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("pipeline", EXACT + ["default", "cse,simplify,cse,fold-constants,dce"])
@SETTINGS
@given(g=graphs())
def test_exact_passes_preserve_outputs(pipeline, g):
    _check(g, pipeline)
