"""ONNX import (normalization, shape-chain folding, external data, bad files) and ONNX export
(checked against ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.frontend.onnx_export import save_onnx, to_onnx
from optc.frontend.onnx_import import import_onnx
from optc.ir import DType, Graph, ModelFileError, TensorType, UnsupportedOpError
from optc.ir.interpreter import run


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    # IR version 10: what ONNX Runtime 1.31 reads (onnx 1.23 would write 14).
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _ort(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _reshape_chain_model():
    """What exporters emit for x.view(B, S, 4, 16): a runtime shape computation."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["i0"], value=numpy_helper.from_array(np.array(0, np.int64))),
        helper.make_node("Constant", [], ["i1"], value=numpy_helper.from_array(np.array(1, np.int64))),
        helper.make_node("Gather", ["s", "i0"], ["b"]),
        helper.make_node("Gather", ["s", "i1"], ["q"]),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Unsqueeze", ["q", "ax"], ["q1"]),
        helper.make_node("Concat", ["b1", "q1", "tail"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "ax"), numpy_helper.from_array(np.array([4, 16], np.int64), "tail")]
    return _model(nodes, [x], [y], inits)


def test_shape_chain_folds_to_constant_target_with_symbolic_dims():
    g = import_onnx(_reshape_chain_model())
    ops = [n.op for n in g.nodes]
    assert ops == ["Reshape", "Relu"]
    reshape = g.nodes[0]
    assert reshape.inputs[1].is_constant
    assert list(reshape.inputs[1].const) == [0, 0, 4, 16]
    assert g.outputs[0].type == TensorType(DType.FLOAT32, ("batch", "seq", 4, 16))
    x = np.random.default_rng(0).standard_normal((3, 5, 64)).astype(np.float32)
    np.testing.assert_allclose(run(g, {"x": x})["y"], np.maximum(x.reshape(3, 5, 4, 16), 0))


def test_opset13_reduce_axes_attribute_becomes_input():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1], keepdims=1)], [x], [y], opset=13)
    g = import_onnx(m)
    node = g.nodes[0]
    assert node.op == "ReduceMean" and list(node.inputs[1].const) == [-1]
    a = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run(g, {"x": a})["y"], _ort(m, {"x": a})[0], rtol=1e-6)


def test_constant_nodes_become_constants_and_fold():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
        helper.make_node("Constant", [], ["d"], value_float=3.0),
        helper.make_node("Mul", ["c", "d"], ["cd"]),
        helper.make_node("Add", ["x", "cd"], ["y"]),
    ]
    g = import_onnx(_model(nodes, [x], [y]))
    assert [n.op for n in g.nodes] == ["Add"]
    np.testing.assert_allclose(run(g, {"x": np.zeros(2, np.float32)})["y"], [3.0, 6.0])


def test_external_data_loads_from_the_model_folder(tmp_path):
    w = np.random.default_rng(2).standard_normal((64, 32)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [numpy_helper.from_array(w, "w")])
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    g = import_onnx(tmp_path / "m.onnx")
    np.testing.assert_array_equal(g.constants["w"].const, w)


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [w])
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    sub = tmp_path / "model"
    sub.mkdir()
    t = m.graph.initializer[0]
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../secret.bin")
    onnx.save(m, sub / "m.onnx")
    with pytest.raises(ModelFileError, match="outside the model's folder"):
        import_onnx(sub / "m.onnx")


def test_truncated_file_is_a_clear_error(tmp_path):
    m = _reshape_chain_model()
    data = m.SerializeToString()
    (tmp_path / "bad.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a valid ONNX model"):
        import_onnx(tmp_path / "bad.onnx")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        import_onnx(tmp_path / "nope.onnx")


def test_unknown_op_names_op_node_and_opset():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    m = _model([helper.make_node("FancyOp", ["x"], ["y"], name="my_node")], [x], [y], opset=17)
    with pytest.raises(UnsupportedOpError, match=r"FancyOp.*my_node.*opset 17"):
        import_onnx(m)


@pytest.mark.parametrize("domain, op", [("com.microsoft", "BeamSearch"), ("com.example", "FastGelu")])
def test_custom_domain_is_unsupported(domain, op):
    """ONNX Runtime's contrib ops optc imports are in frontend/onnx_contrib.py; any other op of
    that domain, and any op of another domain, is refused naming op, node and domain."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    node = helper.make_node(op, ["x"], ["y"], domain=domain, name="fg")
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    with pytest.raises(UnsupportedOpError, match=rf"{domain}\.{op} at node fg \({op}, domain {domain}\)"):
        import_onnx(m)


def _small_graph() -> Graph:
    g = Graph("small")
    rng = np.random.default_rng(3)
    x = g.add_input("x", TensorType(DType.FLOAT32, ("batch", 8)))
    w = g.add_constant(rng.standard_normal((8, 16)).astype(np.float32), "w")
    h = g.op("MatMul", x, w)
    h = g.op("Gelu", h)
    h = g.op("Silu", h)
    h = g.op("ReduceMean", h, g.add_constant(np.array([-1], np.int64)), keepdims=1)
    y = g.add_node("Cast", [h], {"to": DType.FLOAT16}, output_names=["y"]).output
    g.set_outputs([y])
    return g


def test_export_runs_in_onnxruntime_and_matches(tmp_path):
    g = _small_graph()
    path = save_onnx(g, tmp_path / "small.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    got = _ort(onnx.load(str(path)), {"x": x})[0]
    want = run(g, {"x": x})["y"]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)
    assert not list(tmp_path.glob("*.tmp"))


def test_export_keeps_symbolic_dims_and_roundtrips_through_import():
    g = _small_graph()
    m = to_onnx(g)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 8
    back = import_onnx(m)
    x = np.random.default_rng(5).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(back, {"x": x})["y"], run(g, {"x": x})["y"])
