"""arm64 end to end (``-m arm64``): models cross-compiled for the arm64 presets, run by the native
runner the artifact ships, under qemu-aarch64, against the reference interpreter.

- MiniLM (real weights) for ``arm64`` and ``arm64-dotprod`` through the CLI: ``optc compile
  --target ...`` then ``optc run DIR`` at seq 128 and seq 45 from the same artifact;
- the fused GPT-2 and Llama-GQA test models from the three import paths;
- the artifact folder copied alone to a fresh directory runs there with an empty environment.

Emulated runs check numbers, not speed. A missing cross toolchain is a one-line error (tested
without the toolchain, in the default tier).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from fusion_models import PATHS, fused_models
from optc import zoo
from optc.cli import main
from optc.codegen.build import build
from optc.frontend.onnx_import import import_onnx
from optc.ir.interpreter import run

TOL = 1e-3


def _tools_or_skip():
    missing = [t for t in ("aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory):
    import models

    model, inputs = models.minilm(batch=1, seq=128)
    path = zoo.export_onnx(model, inputs, tmp_path_factory.mktemp("minilm") / "minilm.onnx", dynamo=False,
                           output_names=["last_hidden_state", "pooler_output"])
    return path, import_onnx(path)


def _max_err(got: dict, want: dict) -> dict:
    return {k: float(np.abs(got[k] - want[k]).max()) for k in want}


@pytest.mark.arm64
@pytest.mark.parametrize("target", ["arm64", "arm64-dotprod"])
def test_minilm_cli_matches_reference_at_two_lengths(target, minilm_onnx, tmp_path, capsys):
    _tools_or_skip()
    import models

    onnx_path, graph = minilm_onnx
    art = tmp_path / "art"
    assert main(["compile", str(onnx_path), "--target", target, "-o", str(art)]) == 0
    for name in ("optc-run", "libtvm_runtime.so", "libtvm_ffi.so", "model.so", "manifest.json"):
        assert (art / name).is_file(), name
    for seq in (128, 45):
        _, inputs = models.minilm(batch=1, seq=seq, seed=seq)
        feed = {k: v.numpy() for k, v in inputs.items()}
        np.savez(tmp_path / "in.npz", **feed)
        assert main(["run", str(art), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")]) == 0
        got = dict(np.load(tmp_path / "out.npz"))
        errs = _max_err(got, run(graph, feed))
        assert max(errs.values()) <= TOL, f"{target} seq {seq}: {errs}"
    capsys.readouterr()


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    return fused_models(tmp_path_factory)


@pytest.mark.arm64
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_fused_model_runs_on_arm64(name, path, fused):
    _tools_or_skip()
    graph, feed, ref = fused(name, path)
    cm = build(graph, "arm64")
    assert not cm.fallback_funcs and not cm.unscheduled
    errs = _max_err(cm.load().run(feed), ref)
    assert max(errs.values()) <= TOL, errs


@pytest.mark.arm64
def test_artifact_folder_alone_runs_in_a_fresh_directory(tmp_path):
    """Everything the board needs is in the folder: copied alone, run with an empty environment."""
    _tools_or_skip()
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import optc

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    optc.compile(tmp_path / "m.onnx", tmp_path / "art", target="arm64")
    board = tmp_path / "board" / "model"
    shutil.copytree(tmp_path / "art", board)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    np.savez(board.parent / "in.npz", x=x)
    qemu = [shutil.which("qemu-aarch64"), "-L", "/usr/aarch64-linux-gnu"]
    r = subprocess.run(qemu + ["./model/optc-run", "in.npz", "-o", "out.npz"], cwd=board.parent, env={},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(board.parent / "out.npz")["y"], np.tanh(x @ w), atol=1e-5)


def test_missing_cross_compiler_is_one_line(tmp_path, monkeypatch, capsys):
    """Without aarch64-linux-gnu-g++ on PATH, compiling for arm64 fails at once, naming the package."""
    from optc.targets.base import host_arch

    if host_arch() == "aarch64":
        pytest.skip("an aarch64 host compiles arm64 natively")
    monkeypatch.setenv("PATH", str(tmp_path))
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", "arm64-dotprod", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aarch64-linux-gnu-g++" in err[0] and "g++-aarch64-linux-gnu" in err[0], err
    assert not (tmp_path / "out").exists()
