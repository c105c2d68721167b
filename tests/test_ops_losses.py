"""NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss: the reference interpreter against
torch's own loss functions (an independent formula), the compiled module against the
interpreter, and the errors: bad attributes at graph construction, out-of-range targets at run
time (the same one-line error from both backends, never a read out of bounds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optc.ir import DType, Graph, IRError, TensorType
from optc.ir.errors import InvalidValueError
from optc.ir.interpreter import run

F32, I64, I32 = DType.FLOAT32, DType.INT64, DType.INT32
RNG = np.random.default_rng(7)


def _graph(op: str, x_shape, t_shape, *, weight: bool, t_dtype=I64, log_prob: bool = False, **attrs) -> Graph:
    g = Graph(op.lower())
    x = g.add_input("x", TensorType(F32, tuple(x_shape)))
    t = g.add_input("t", TensorType(t_dtype, tuple(t_shape)))
    w = g.add_input("w", TensorType(F32, (x_shape[1],))) if weight else None
    n_out = 2 if log_prob else 1
    node = g.add_node(op, [x, t, w], attrs, num_outputs=n_out)
    g.set_outputs(node.outputs)
    return g


def _torch_nll(logp, t, w, reduction, ii):
    kw = {} if ii is None else {"ignore_index": ii}
    return F.nll_loss(torch.from_numpy(logp), torch.from_numpy(t.astype(np.int64)),
                      None if w is None else torch.from_numpy(w), reduction=reduction, **kw).numpy()


CASES = [
    # (x shape, reduction, weight, ignore_index)
    ((5, 4), "mean", False, None),
    ((5, 4), "sum", True, None),
    ((5, 4), "none", True, 2),
    ((3, 4, 2, 3), "mean", True, 1),
    ((3, 4, 2, 3), "none", False, -1),
    ((2, 5, 6), "mean", True, -100),
]


@pytest.mark.parametrize("shape,reduction,weight,ii", CASES)
def test_nll_matches_torch(shape, reduction, weight, ii):
    x = RNG.standard_normal(shape).astype(np.float32)
    t = RNG.integers(0, shape[1], (shape[0],) + shape[2:])
    if ii is not None:
        t.reshape(-1)[::3] = ii  # some positions ignored
    w = RNG.uniform(0.5, 2.0, shape[1]).astype(np.float32) if weight else None
    attrs = {"reduction": reduction} | ({} if ii is None else {"ignore_index": ii})
    g = _graph("NegativeLogLikelihoodLoss", shape, t.shape, weight=weight, **attrs)
    feed = {"x": x, "t": t} | ({"w": w} if weight else {})
    got = run(g, feed)[g.output_names()[0]]
    want = _torch_nll(x, t, w, reduction, ii)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,reduction,weight,ii", CASES)
def test_softmax_cross_entropy_matches_torch(shape, reduction, weight, ii):
    x = RNG.standard_normal(shape).astype(np.float32)
    t = RNG.integers(0, shape[1], (shape[0],) + shape[2:]).astype(np.int32)
    if ii is not None:
        t.reshape(-1)[1::4] = ii
    w = RNG.uniform(0.5, 2.0, shape[1]).astype(np.float32) if weight else None
    attrs = {"reduction": reduction} | ({} if ii is None else {"ignore_index": ii})
    g = _graph("SoftmaxCrossEntropyLoss", shape, t.shape, weight=weight, t_dtype=I32, log_prob=True, **attrs)
    feed = {"x": x, "t": t} | ({"w": w} if weight else {})
    out = run(g, feed)
    loss, logp = (out[n] for n in g.output_names())
    kw = {} if ii is None else {"ignore_index": ii}
    want = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t.astype(np.int64)),
                           None if w is None else torch.from_numpy(w), reduction=reduction, **kw).numpy()
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logp, torch.log_softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-5, atol=1e-6)


def test_out_of_range_target_is_one_line_error():
    g = _graph("NegativeLogLikelihoodLoss", (4, 3), (4,), weight=False, ignore_index=-1)
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    for bad in (3, -2):
        t = np.array([0, 1, bad, -1], dtype=np.int64)
        with pytest.raises(InvalidValueError) as e:
            run(g, {"x": x, "t": t})
        msg = str(e.value)
        assert "\n" not in msg and "NegativeLogLikelihoodLoss" in msg
        assert "target out of range [0, 3) and not ignore_index -1" in msg
    # ignore_index itself is fine even though it is outside [0, C)
    run(g, {"x": x, "t": np.array([0, 1, 2, -1], dtype=np.int64)})


@pytest.mark.parametrize("attrs,x_shape,t_shape,t_dtype,match", [
    ({"reduction": "avg"}, (4, 3), (4,), I64, "reduction must be one of none, sum, mean"),
    ({}, (4, 3), (4,), F32, "target must be int32 or int64"),
    ({}, (4, 3, 2), (4,), I64, "target must have rank 2"),
    ({}, (4, 3, 2), (4, 5), I64, "target dim 1 is 5"),
    ({}, (4,), (4,), I64, "rank >= 2"),
])
def test_bad_loss_nodes_are_one_line_errors(attrs, x_shape, t_shape, t_dtype, match):
    g = Graph("bad")
    x = g.add_input("x", TensorType(F32, x_shape))
    t = g.add_input("t", TensorType(t_dtype, t_shape))
    with pytest.raises(IRError, match=match) as e:
        g.add_node("NegativeLogLikelihoodLoss", [x, t], attrs)
    assert "\n" not in str(e.value)


def test_bad_weight_is_an_error():
    g = Graph("bad")
    x = g.add_input("x", TensorType(F32, (4, 3)))
    t = g.add_input("t", TensorType(I64, (4,)))
    w = g.add_input("w", TensorType(F32, (5,)))
    with pytest.raises(IRError, match="weight has 5 entries for 3 classes"):
        g.add_node("SoftmaxCrossEntropyLoss", [x, t, w], {})


# -- compiled ------------------------------------------------------------------------------------
def _loss_graph() -> Graph:
    """Five losses over the same scores in one module (one build)."""
    g = Graph("losses")
    x = g.add_input("x", TensorType(F32, (3, 5, 4)))
    t = g.add_input("t", TensorType(I64, (3, 4)))
    w = g.add_input("w", TensorType(F32, (5,)))
    outs = [
        g.op("NegativeLogLikelihoodLoss", x, t, reduction="none"),
        g.op("NegativeLogLikelihoodLoss", x, t, w, reduction="mean", ignore_index=2),
        g.op("NegativeLogLikelihoodLoss", x, t, reduction="sum", ignore_index=-1),
    ]
    sce = g.add_node("SoftmaxCrossEntropyLoss", [x, t, w], {"reduction": "mean", "ignore_index": -1}, num_outputs=2)
    outs += list(sce.outputs)
    outs.append(g.op("SoftmaxCrossEntropyLoss", x, t, reduction="none"))
    g.set_outputs(outs)
    return g


@pytest.fixture(scope="module")
def compiled_losses():
    from optc.codegen.build import build

    g = _loss_graph()
    return g, build(g, "x86").load()


def _feed(t):
    return {"x": RNG.standard_normal((3, 5, 4)).astype(np.float32), "t": t,
            "w": RNG.uniform(0.5, 2.0, 5).astype(np.float32)}


def test_compiled_losses_equal_interpreter(compiled_losses):
    g, model = compiled_losses
    feed = _feed(RNG.integers(0, 5, (3, 4)))
    got, want = model.run(feed), run(g, feed)
    for name in g.output_names():
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_compiled_out_of_range_target_raises_like_interpreter(compiled_losses):
    g, model = compiled_losses
    for bad in (5, -3, 1 << 40):
        t = np.zeros((3, 4), dtype=np.int64)
        t[1, 2] = bad
        feed = _feed(t)
        with pytest.raises(InvalidValueError) as ref:
            run(g, feed)
        with pytest.raises(InvalidValueError) as comp:
            model.run(feed)
        # Every node refuses it; each backend names the first node it checked.
        for e in (ref, comp):
            msg = str(e.value)
            assert "\n" not in msg and msg.startswith("node ") and "target out of range [0, 5)" in msg


def test_compiled_single_loss_error_is_the_interpreters():
    from optc.codegen.build import build

    g = _graph("SoftmaxCrossEntropyLoss", (2, 3), (2,), weight=False, ignore_index=7)
    model = build(g, "x86").load()
    feed = {"x": np.zeros((2, 3), np.float32), "t": np.array([7, 3], np.int64)}
    with pytest.raises(InvalidValueError) as ref:
        run(g, feed)
    with pytest.raises(InvalidValueError) as comp:
        model.run(feed)
    assert str(comp.value) == str(ref.value)
    feed["t"] = np.array([7, 2], np.int64)  # ignore_index 7 lies outside [0, 3): accepted
    np.testing.assert_allclose(model.run(feed)[g.output_names()[0]], run(g, feed)[g.output_names()[0]], rtol=1e-6)
