"""The command line: inspect and run, and one-line errors with exit status 2 for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.cli import main


@pytest.fixture
def model_file(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], [w, b]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "mlp.onnx"
    onnx.save(m, path)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optc.cli", *args], capture_output=True, text=True)


def test_inspect_json(model_file, capsys):
    assert main(["inspect", str(model_file), "--json", "--dim", "batch=3"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ops"] == {"Add": 1, "MatMul": 1, "Relu": 1}
    assert info["params"] == 8 * 4 + 4
    assert info["flops"] == 2 * 3 * 8 * 4 + 3 * 4 + 3 * 4  # MatMul, Add, Relu
    assert info["flops_expr"] == "72*batch"
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 8]}]
    assert info["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}]


def test_inspect_text_and_ir(model_file, capsys):
    assert main(["inspect", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "parameters: 36" in out and "MatMul" in out
    assert main(["inspect", str(model_file), "--ir"]) == 0
    assert "MatMul(%x, %w)" in capsys.readouterr().out


def test_run_reference_writes_outputs(model_file, tmp_path, capsys):
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = tmp_path / "out.npz"
    assert main(["run", str(model_file), "--inputs", str(tmp_path / "in.npz"), "-o", str(out), "--reference"]) == 0
    m = onnx.load(str(model_file))
    w, b = (numpy_helper.to_array(t) for t in m.graph.initializer)
    with np.load(out) as got:
        np.testing.assert_allclose(got["y"], np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("case", ["missing_model", "corrupt_model", "unknown_op", "bad_input_name", "bad_shape", "bad_npz"])
def test_user_errors_are_one_line_exit_2(case, model_file, tmp_path):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, x=np.zeros((2, 8), np.float32))
    model = model_file
    if case == "missing_model":
        model = tmp_path / "nope.onnx"
    elif case == "corrupt_model":
        model = tmp_path / "corrupt.onnx"
        model.write_bytes(model_file.read_bytes()[:50])
    elif case == "unknown_op":
        m = onnx.load(str(model_file))
        m.graph.node[2].op_type = "Frobnicate"
        model = tmp_path / "unknown.onnx"
        onnx.save(m, model)
    elif case == "bad_input_name":
        np.savez(inputs, wrong=np.zeros((2, 8), np.float32))
    elif case == "bad_shape":
        np.savez(inputs, x=np.zeros((2, 7), np.float32))
    elif case == "bad_npz":
        inputs.write_bytes(b"not a zip")
    out = tmp_path / "out.npz"
    r = _cli("run", str(model), "--inputs", str(inputs), "-o", str(out), "--reference")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error: ")
    if case == "unknown_op":
        assert "Frobnicate" in lines[0] and "opset 17" in lines[0]
    assert not out.exists()


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory):
    import torch

    from optc import zoo

    class Mlp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return torch.relu(self.fc(x))

    torch.manual_seed(0)
    dims = {"x": {0: torch.export.Dim("batch")}}
    return zoo.export_pt2(Mlp().eval(), {"x": torch.randn(2, 8)}, tmp_path_factory.mktemp("pt2") / "mlp.pt2", dynamic_shapes=dims)


def test_inspect_and_run_pt2(pt2_file, tmp_path, capsys):
    assert main(["inspect", str(pt2_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 8 * 4 + 4 and info["ops"]["MatMul"] == 1
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(pt2_file), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz"), "--reference"]) == 0


@pytest.mark.parametrize("case", ["truncated", "zip_but_not_archive"])
def test_bad_pt2_is_one_line_exit_2(case, pt2_file, tmp_path):
    import zipfile

    bad = tmp_path / "bad.pt2"
    if case == "truncated":
        bad.write_bytes(pt2_file.read_bytes()[:4096])
    else:
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("archive/data.txt", "hello")
    r = _cli("inspect", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error: ") and "Traceback" not in r.stderr


def test_optimized_ir_file_inspects_and_runs(model_file, tmp_path, capsys):
    ir_file = tmp_path / "mlp.optc-ir"
    assert main(["optimize", str(model_file), "-o", str(ir_file), "--passes", "default"]) == 0
    assert "resources {" in ir_file.read_text()  # self-contained: the weights travel with the text
    x = np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    for model in (model_file, ir_file):
        assert main(["run", str(model), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / f"{model.suffix}.npz")]) == 0
    with np.load(tmp_path / ".onnx.npz") as a, np.load(tmp_path / ".optc-ir.npz") as b:
        np.testing.assert_allclose(a["y"], b["y"], rtol=1e-6)
    capsys.readouterr()
    assert main(["inspect", str(ir_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 36
    bad = tmp_path / "bad.optc-ir"
    bad.write_text("graph main(%x: f32[2]) { %y = Frob(%x) return %y }")
    r = _cli("inspect", str(bad))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and str(bad) in r.stderr
