"""RNN / GRU / LSTM: the reference interpreter against torch.nn for the configurations torch has,
against ONNX Runtime for the attributes torch lacks (clip, activations with alpha/beta,
peepholes, input_forget, sequence_lens, GRU's linear_before_reset=0), and the compiled module
(unrolled into Relax) against the interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from optc.codegen.build import build
from optc.frontend.onnx_import import import_onnx
from optc.ir import DType, Graph, IRError, TensorType, UnsupportedOpError
from optc.ir.errors import InvalidValueError
from optc.ir.interpreter import run

F32 = DType.FLOAT32
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _weights(op: str, x_shape, hidden: int, attrs: dict, *, bias=True, init=False, peep=False, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    layout = attrs.get("layout", 0)
    batch, size = (x_shape[1], x_shape[2]) if layout == 0 else (x_shape[0], x_shape[2])
    d = 2 if attrs.get("direction") == "bidirectional" else 1
    g_ = GATES[op]
    out = {"W": rng.standard_normal((d, g_ * hidden, size)).astype(np.float32) * 0.5,
           "R": rng.standard_normal((d, g_ * hidden, hidden)).astype(np.float32) * 0.5}
    if bias:
        out["B"] = rng.standard_normal((d, 2 * g_ * hidden)).astype(np.float32) * 0.5
    state = (d, batch, hidden) if layout == 0 else (batch, d, hidden)
    if init:
        out["initial_h"] = rng.standard_normal(state).astype(np.float32)
        if op == "LSTM":
            out["initial_c"] = rng.standard_normal(state).astype(np.float32)
    if peep:
        out["P"] = rng.standard_normal((d, 3 * hidden)).astype(np.float32)
    return out


def _graph(op: str, x_shape, hidden: int, attrs: dict, *, seq_lens=False, weights: dict | None = None, **kw):
    """A one-node graph: X (and sequence_lens) are inputs, the weights constants."""
    weights = weights if weights is not None else _weights(op, x_shape, hidden, attrs, **kw)
    layout = attrs.get("layout", 0)
    batch = x_shape[1] if layout == 0 else x_shape[0]
    g = Graph(op.lower())
    x = g.add_input("X", TensorType(F32, tuple(x_shape)))

    def const(name):
        return g.add_constant(weights[name], name) if name in weights else None

    ins = [x, const("W"), const("R"), const("B"),
           g.add_input("sequence_lens", TensorType(DType.INT32, (batch,))) if seq_lens else None, const("initial_h")]
    if op == "LSTM":
        ins += [const("initial_c"), const("P")]
    node = g.add_node(op, ins, {"hidden_size": hidden, **attrs}, num_outputs=3 if op == "LSTM" else 2)
    g.set_outputs(node.outputs)
    return g


# -- against torch.nn ------------------------------------------------------------------------------
def _onnx_order(op: str, t: torch.Tensor) -> np.ndarray:
    """torch's gate order (LSTM i,f,g,o; GRU r,z,n) in ONNX's (LSTM i,o,f,c; GRU z,r,h)."""
    chunks = t.detach().numpy().reshape(GATES[op], -1, *t.shape[1:])
    order = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}[op]
    return np.concatenate([chunks[i] for i in order])


@pytest.mark.parametrize("op,nonlin", [("RNN", "tanh"), ("RNN", "relu"), ("GRU", None), ("LSTM", None)])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_interpreter_matches_torch_nn(op, nonlin, bidirectional, batch_first):
    torch.manual_seed(0)
    T, B, I, H = 5, 3, 4, 6
    cls = {"RNN": torch.nn.RNN, "GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}[op]
    kw = {"nonlinearity": nonlin} if op == "RNN" else {}
    m = cls(I, H, batch_first=batch_first, bidirectional=bidirectional, **kw)
    d = 2 if bidirectional else 1
    sfx = ["", "_reverse"][:d]
    W = np.stack([_onnx_order(op, getattr(m, f"weight_ih_l0{s}")) for s in sfx])
    R = np.stack([_onnx_order(op, getattr(m, f"weight_hh_l0{s}")) for s in sfx])
    Bv = np.stack([np.concatenate([_onnx_order(op, getattr(m, f"bias_ih_l0{s}")),
                                   _onnx_order(op, getattr(m, f"bias_hh_l0{s}"))]) for s in sfx])
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    h0 = torch.randn(d, B, H)
    c0 = torch.randn(d, B, H)
    with torch.no_grad():
        out, state = m(x, (h0, c0) if op == "LSTM" else h0)

    layout = int(batch_first)
    g = Graph("torch_" + op)
    xv = g.add_input("X", TensorType(F32, tuple(x.shape)))
    to_layout = (lambda a: a) if layout == 0 else (lambda a: np.ascontiguousarray(a.transpose(1, 0, 2)))
    ins = [xv, g.add_constant(W), g.add_constant(R), g.add_constant(Bv), None, g.add_constant(to_layout(h0.numpy()))]
    if op == "LSTM":
        ins.append(g.add_constant(to_layout(c0.numpy())))
    attrs = {"hidden_size": H, "layout": layout, "direction": "bidirectional" if bidirectional else "forward"}
    if op == "RNN":
        attrs["activations"] = ("Relu" if nonlin == "relu" else "Tanh",) * d
    if op == "GRU":
        attrs["linear_before_reset"] = 1  # torch's GRU applies the reset gate after R
    node = g.add_node(op, ins, attrs, num_outputs=3 if op == "LSTM" else 2)
    g.set_outputs(node.outputs)
    res = run(g, {"X": x.numpy()})
    y, y_h = res[node.outputs[0].name], res[node.outputs[1].name]
    # torch: [T, B, D*H] (batch_first: [B, T, D*H]); ONNX: [T, D, B, H] ([B, T, D, H]).
    if batch_first:
        want_y = out.numpy().reshape(B, T, d, H)
        want_h = (state[0] if op == "LSTM" else state).numpy().transpose(1, 0, 2)
    else:
        want_y = out.numpy().reshape(T, B, d, H).transpose(0, 2, 1, 3)
        want_h = (state[0] if op == "LSTM" else state).numpy()
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_h, want_h, rtol=1e-5, atol=1e-5)
    if op == "LSTM":
        want_c = state[1].numpy() if not batch_first else state[1].numpy().transpose(1, 0, 2)
        np.testing.assert_allclose(res[node.outputs[2].name], want_c, rtol=1e-5, atol=1e-5)


# -- against ONNX Runtime -----------------------------------------------------------------------------
def _ort_case(op: str, attrs: dict, *, T=4, B=3, I=3, H=4, seq_lens=None, init=False, peep=False, seed=1):
    """An ONNX model of one recurrent node with all weights as inputs, and its feeds."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(seed)
    d = 2 if attrs.get("direction") == "bidirectional" else 1
    g_ = GATES[op]
    feeds = {
        "X": rng.standard_normal((T, B, I)).astype(np.float32),
        "W": (rng.standard_normal((d, g_ * H, I)) * 0.7).astype(np.float32),
        "R": (rng.standard_normal((d, g_ * H, H)) * 0.7).astype(np.float32),
        "B": (rng.standard_normal((d, 2 * g_ * H)) * 0.5).astype(np.float32),
    }
    names = ["X", "W", "R", "B", "", ""]
    if seq_lens is not None:
        feeds["sequence_lens"] = np.asarray(seq_lens, np.int32)
        names[4] = "sequence_lens"
    if init:
        feeds["initial_h"] = rng.standard_normal((d, B, H)).astype(np.float32)
        names[5] = "initial_h"
    if op == "LSTM":
        names += ["", ""]
        if init:
            feeds["initial_c"] = rng.standard_normal((d, B, H)).astype(np.float32)
            names[6] = "initial_c"
        if peep:
            feeds["P"] = rng.standard_normal((d, 3 * H)).astype(np.float32)
            names[7] = "P"
    while names and names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, hidden_size=H, **attrs)
    vi = [helper.make_tensor_value_info(k, TensorProto.INT32 if k == "sequence_lens" else TensorProto.FLOAT, v.shape)
          for k, v in feeds.items()]
    graph = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return model, feeds, sess.run(None, feeds)


ORT_CASES = [
    ("LSTM", {"clip": 0.4}, {}),
    ("LSTM", {"input_forget": 1}, {"init": True}),
    ("LSTM", {}, {"peep": True, "init": True, "seq_lens": [4, 2, 1]}),
    ("LSTM", {"direction": "reverse"}, {"seq_lens": [3, 4, 1], "peep": True}),
    ("LSTM", {"direction": "bidirectional", "activations": ["HardSigmoid", "Softsign", "ScaledTanh"] * 2,
              "activation_alpha": [0.3, 0.8, 0.25, 0.7], "activation_beta": [0.4, 1.2, 0.6, 0.9]},
     {"seq_lens": [2, 4, 3]}),
    ("LSTM", {"activations": ["Sigmoid", "Affine", "Tanh"], "activation_alpha": [3.0], "clip": 0.2}, {}),
    ("GRU", {"linear_before_reset": 0}, {"init": True}),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional"}, {"seq_lens": [1, 4, 2]}),
    ("GRU", {"direction": "reverse", "activations": ["Sigmoid", "Elu"], "activation_alpha": [0.6]}, {"seq_lens": [4, 0, 2]}),
    ("GRU", {"activations": ["HardSigmoid", "Softplus"], "clip": 1.5}, {}),
    ("RNN", {"activations": ["LeakyRelu"], "activation_alpha": [0.2]}, {"init": True}),
    ("RNN", {"direction": "bidirectional", "activations": ["ThresholdedRelu", "Relu"], "activation_alpha": [0.1]},
     {"seq_lens": [4, 3, 1]}),
    ("RNN", {"direction": "reverse", "activations": ["Sigmoid"], "clip": 0.5}, {"seq_lens": [2, 3, 4]}),
]


@pytest.mark.parametrize("op,attrs,kw", ORT_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(ORT_CASES)])
def test_interpreter_matches_onnxruntime(op, attrs, kw):
    model, feeds, want = _ort_case(op, attrs, **kw)
    g = import_onnx(model)
    got = run(g, feeds)
    for name, w in zip(g.output_names(), want):
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5, err_msg=name)


def test_batch_major_layout_is_the_transposed_time_major():
    attrs = {"direction": "bidirectional"}
    w0 = _weights("LSTM", (5, 2, 3), 4, attrs, init=True, peep=True)
    w1 = {k: (np.ascontiguousarray(v.transpose(1, 0, 2)) if k.startswith("initial") else v) for k, v in w0.items()}
    g0 = _graph("LSTM", (5, 2, 3), 4, attrs, weights=w0)
    g1 = _graph("LSTM", (2, 5, 3), 4, {**attrs, "layout": 1}, weights=w1)
    x = np.random.default_rng(3).standard_normal((5, 2, 3)).astype(np.float32)
    r0 = list(run(g0, {"X": x}).values())
    r1 = list(run(g1, {"X": np.ascontiguousarray(x.transpose(1, 0, 2))}).values())
    np.testing.assert_allclose(r1[0], r0[0].transpose(2, 0, 1, 3), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r1[1], r0[1].transpose(1, 0, 2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r1[2], r0[2].transpose(1, 0, 2), rtol=1e-6, atol=1e-6)


# -- compiled against the interpreter ------------------------------------------------------------
def _compiled_matches(g: Graph, feeds: list[dict], tol=1e-5):
    model = build(g).load()
    for feed in feeds:
        ref = run(g, feed)
        got = model.run(feed)
        for name, want in ref.items():
            np.testing.assert_allclose(got[name], want, rtol=tol, atol=tol, err_msg=name)


def test_compiled_lstm_bidirectional_all_inputs_symbolic_batch():
    attrs = {"direction": "bidirectional", "clip": 0.9, "activations": ["Sigmoid", "Tanh", "Softsign", "HardSigmoid", "Tanh", "Tanh"],
             "activation_alpha": [0.3], "activation_beta": [0.45]}
    g = _graph("LSTM", (6, "batch", 3), 5, attrs, seq_lens=True, peep=True)
    rng = np.random.default_rng(4)
    feeds = [{"X": rng.standard_normal((6, b, 3)).astype(np.float32),
              "sequence_lens": rng.integers(0, 7, (b,)).astype(np.int32)} for b in (1, 4)]
    _compiled_matches(g, feeds)


def test_compiled_gru_batch_major_reverse_linear_before_reset_0():
    g = _graph("GRU", (3, 5, 4), 6, {"direction": "reverse", "layout": 1, "linear_before_reset": 0}, init=True)
    x = np.random.default_rng(5).standard_normal((3, 5, 4)).astype(np.float32)
    _compiled_matches(g, [{"X": x}])


def test_compiled_rnn_activations_and_sequence_lens():
    attrs = {"direction": "bidirectional", "activations": ["Affine", "LeakyRelu"], "activation_alpha": [0.5, 0.1],
             "activation_beta": [0.2]}
    g = _graph("RNN", (4, 3, 2), 3, attrs, seq_lens=True)
    x = np.random.default_rng(6).standard_normal((4, 3, 2)).astype(np.float32)
    model = build(g).load()
    feed = {"X": x, "sequence_lens": np.array([4, 0, 2], np.int32)}
    ref = run(g, feed)
    got = model.run(feed)
    for name, want in ref.items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)
    # A length outside [0, T] is refused by both backends, with the same one-line message.
    bad = {"X": x, "sequence_lens": np.array([4, 5, 2], np.int32)}
    with pytest.raises(InvalidValueError) as ref_err:
        run(g, bad)
    with pytest.raises(InvalidValueError) as got_err:
        model.run(bad)
    assert str(ref_err.value) == str(got_err.value) == "node rnn (RNN): sequence_lens out of range [0, 4]"


# -- errors ----------------------------------------------------------------------------------------
def test_unknown_activation_is_a_one_line_error():
    with pytest.raises(IRError, match=r"^node rnn \(RNN\): RNN: unknown activation 'Swish'") as e:
        _graph("RNN", (2, 1, 2), 3, {"activations": ["Swish"]})
    assert "\n" not in str(e.value)


def test_weight_shape_mismatch_names_the_node():
    g = Graph("bad")
    x = g.add_input("X", TensorType(F32, (2, 1, 3)))
    w = g.add_constant(np.zeros((1, 12, 4), np.float32))  # input size 4, X has 3
    r = g.add_constant(np.zeros((1, 12, 3), np.float32))
    with pytest.raises(IRError, match=r"^node lstm \(LSTM\): LSTM: W must be \[1, 12, 3\], got f32\[1, 12, 4\]$"):
        g.add_node("LSTM", [x, w, r], {"hidden_size": 3}, num_outputs=2)


def test_symbolic_sequence_length_cannot_compile():
    g = _graph("GRU", ("seq", 2, 3), 4, {})
    with pytest.raises(UnsupportedOpError, match=r"^cannot compile: GRU over a sequence whose length is not static"):
        build(g)
