"""The compiled artifact: optc compile / run / bench, optc.load, atomic writes, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from optc.cli import main


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A small ONNX MLP with a symbolic batch, and its compiled artifact (compiled once)."""
    folder = tmp_path_factory.mktemp("artifact")
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal((32,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], [w1, b1, w2]),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    model = folder / "mlp.onnx"
    onnx.save(m, model)
    out = folder / "mlp.optc"
    assert main(["compile", str(model), "--target", "x86", "-o", str(out)]) == 0
    return model, out


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "optc.cli", *args], capture_output=True, text=True)


def test_artifact_layout_and_manifest(mlp):
    model, out = mlp
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.so"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["inputs"] == [{"name": "x", "dtype": "f32", "shape": ["batch", 16]}]
    assert man["outputs"] == [{"name": "y", "dtype": "f32", "shape": ["batch", 8]}]
    assert man["target"]["name"] == "x86" and man["versions"]["tvm"]
    assert man["model"]["files"]["mlp.onnx"]["sha256"]
    assert set(man["files"]) == {"model.so"} and man["files"]["model.so"]["bytes"] == (out / "model.so").stat().st_size
    assert man["checked"] is True
    assert "DenseRule" in man["codegen"]["schedule_rules"]


@pytest.mark.parametrize("batch", [1, 5])
def test_load_runs_any_batch_and_matches_reference(mlp, batch):
    model, out = mlp
    x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
    got = optc.load(out).run({"x": x})["y"]
    want = optc.run_reference(optc.load_model(model), {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_cli_run_on_artifact(mlp, tmp_path):
    _, out = mlp
    np.savez(tmp_path / "in.npz", x=np.ones((2, 16), np.float32))
    assert main(["run", str(out), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as o:
        assert o["y"].shape == (2, 8)


@pytest.mark.parametrize("feed,msg", [({}, "missing"), ({"x": np.ones((2, 15), np.float32)}, "x"),
                                      ({"x": np.ones((2, 16), np.float64)}, "x")])
def test_bad_inputs_are_clear_errors(mlp, feed, msg):
    with pytest.raises(optc.ir.OptcError, match=msg):
        optc.load(mlp[1]).run(feed)


def test_artifact_for_another_cpu_is_refused(mlp, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(mlp[1], other)
    sig = other / "manifest.json"
    meta = json.loads(sig.read_text())
    meta["target"]["features"] = meta["target"]["features"] + ["amx_tile_from_the_future"]
    sig.write_text(json.dumps(meta))
    r = _cli("run", str(other), "--inputs", "unused.npz", "-o", str(tmp_path / "o.npz"))
    assert r.returncode == 2 and "amx_tile_from_the_future" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(optc.ir.OptcError, match="amx_tile_from_the_future"):
        optc.load(other)


def test_failed_compile_leaves_previous_artifact_intact(mlp, tmp_path, monkeypatch):
    import shutil

    from optc.codegen import build as build_mod

    model, out = mlp
    target = tmp_path / "keep"
    shutil.copytree(out, target)
    before = (target / "manifest.json").read_text()

    def boom(*a, **k):
        raise optc.ir.OptcError("simulated build failure")

    monkeypatch.setattr(build_mod, "build", boom)
    assert main(["compile", str(model), "-o", str(target)]) == 2
    assert (target / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]  # no temp folders left behind


def test_not_an_artifact(tmp_path):
    r = _cli("bench", str(tmp_path))
    assert r.returncode == 2 and "not an optc artifact" in r.stderr and "Traceback" not in r.stderr


def test_bench_json_compares_onnxruntime(mlp):
    r = _cli("bench", str(mlp[1]), "--dim", "batch=4", "--repeat", "5", "--threads", "1",
             "--compare", "onnxruntime", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res["latency"]) == {"optc", "onnxruntime"} and res["ratio_vs"]["onnxruntime"] > 0
    assert res["inputs"] == {"x": [4, 16]}


def test_running_an_artifact_never_imports_torch(mlp, tmp_path):
    """optc.load(DIR).run(...) and `optc run DIR` need TVM's runtime and numpy only (tvm_ffi would
    import torch eagerly; the runtime keeps it out) — checked in a fresh process."""
    _, art = mlp
    np.savez(tmp_path / "in.npz", x=np.ones((2, 16), np.float32))
    script = f"""
import sys
import numpy as np
import optc
from optc.cli import main
out = optc.load({str(art)!r}).run({{"x": np.ones((3, 16), np.float32)}})
assert out["y"].shape == (3, 8)
assert main(["run", {str(art)!r}, "--inputs", {str(tmp_path / "in.npz")!r}, "-o", {str(tmp_path / "o.npz")!r}]) == 0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "onnx", "onnxruntime", "transformers", "onnx_graphsurgeon"}})
assert not heavy, heavy
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
