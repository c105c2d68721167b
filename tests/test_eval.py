"""Output fidelity, ``optc eval`` / ``optc optimize`` / ``--calib``, and (slow) the Lee benchmark
on MiniLM with real weights."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.cli import main
from optc.passes.base import _REGISTRY, Pass, PassResult, option, register_pass
from optc.passes.compression.fidelity import compare, measure, output_vectors

# -- fidelity ----------------------------------------------------------------------------------------


def test_identical_outputs_have_cosine_one():
    rng = np.random.default_rng(0)
    out = [{"y": rng.standard_normal((3, 5)).astype(np.float32)} for _ in range(2)]
    f = compare(out, out, [{}, {}])
    assert f.mean_cosine == pytest.approx(1) and f.worst_cosine == pytest.approx(1)
    assert f.relative_error == 0 and f.top1 is None and f.vectors == 6


def test_rotation_gives_its_cosine():
    angles = np.array([0.1, 0.4, 0.7])
    ref = {"y": np.stack([np.ones(3), np.zeros(3)], axis=1) * 2.0}  # three vectors (2, 0)
    new = {"y": np.stack([np.cos(angles), np.sin(angles)], axis=1) * 2.0}
    f = compare([ref], [new], [{}])
    assert f.mean_cosine == pytest.approx(np.cos(angles).mean())
    assert f.worst_cosine == pytest.approx(math.cos(0.7))
    # |new - ref| = 2 * 2 sin(a/2) per vector; |ref| = 2 per vector
    want = np.sqrt(((4 * np.sin(angles / 2)) ** 2).sum()) / np.sqrt(3 * 4)
    assert f.relative_error == pytest.approx(want)


def test_zero_vectors():
    ref = {"y": np.array([[0.0, 0.0], [1.0, 0.0]])}
    assert compare([ref], [ref], [{}]).worst_cosine == 1  # identical zero rows agree
    other = {"y": np.array([[0.0, 1.0], [1.0, 0.0]])}
    assert compare([ref], [other], [{}]).worst_cosine == 0


def test_mask_pooling_ignores_padded_positions():
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((2, 4, 3))
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    changed = hidden.copy()
    changed[0, 2:] += 100.0
    changed[1, 3] -= 50.0
    feed = {"attention_mask": mask}
    f = compare([{"last_hidden_state": hidden}], [{"last_hidden_state": changed}], [feed])
    assert f.worst_cosine == pytest.approx(1) and f.relative_error == pytest.approx(0) and f.vectors == 2
    pooled = output_vectors("last_hidden_state", hidden, feed)
    np.testing.assert_allclose(pooled[0], hidden[0, :2].mean(0))
    np.testing.assert_allclose(pooled[1], hidden[1, :3].mean(0))
    changed[0, 1] += 1.0  # a real position counts
    assert compare([{"last_hidden_state": hidden}], [{"last_hidden_state": changed}], [feed]).worst_cosine < 0.999


def test_top1_agreement_on_logits():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 3, 5))
    new = logits.copy()
    row = new[1, 2]
    row[np.argmin(row)] = row.max() + 1.0  # one of six rows now has another argmax
    f = compare([{"logits": logits}], [{"logits": new}], [{}])
    assert f.top1 == pytest.approx(5 / 6) and f.vectors == 6


# -- tiny models ----------------------------------------------------------------------------------

W = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)


def save_linear(path, w, output="y"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 4])
    nodes = [helper.make_node("MatMul", ["x", "w"], [output])]
    g = helper.make_graph(nodes, "lin", [x], [y], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def models(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    return {"orig": save_linear(tmp_path / "orig.onnx", W), "scaled": save_linear(tmp_path / "scaled.onnx", W * 1.25),
            "noisy": save_linear(tmp_path / "noisy.onnx", W + 0.3 * rng.standard_normal(W.shape).astype(np.float32)),
            "inputs": tmp_path / "in.npz", "x": x, "dir": tmp_path}


def expected_fidelity(x, w_new):
    ref, new = (x @ W).astype(np.float64), (x @ w_new).astype(np.float64)
    cos = (ref * new).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(new, axis=1))
    return cos, np.linalg.norm(new - ref) / np.linalg.norm(ref)


def test_eval_scaled_copy(models, capsys):
    assert main(["eval", str(models["orig"]), str(models["scaled"]), "--inputs", str(models["inputs"]),
                 "--batch", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["input_sets"] == 3 and r["output"] == "y" and r["fidelity"]["vectors"] == 12
    assert r["fidelity"]["mean_cosine"] == pytest.approx(1, abs=1e-6)
    assert r["fidelity"]["relative_error"] == pytest.approx(0.25, abs=1e-5)
    assert r["sizes"]["original"]["params"] == r["sizes"]["compressed"]["params"] == 32
    assert r["sizes"]["original"]["flops"] == 5 * 2 * 8 * 4 and r["flops_dims"] == {"batch": 5}


def test_eval_perturbed_copy_text(models, capsys):
    assert main(["eval", str(models["orig"]), str(models["noisy"]), "--inputs", str(models["inputs"])]) == 0
    out = capsys.readouterr().out
    w_noisy = np.asarray(numpy_helper.to_array(onnx.load(str(models["noisy"])).graph.initializer[0]))
    cos, rel = expected_fidelity(models["x"], w_noisy)
    assert f"mean cosine     {cos.mean():.6f}" in out
    assert f"worst cosine    {cos.min():.6f}" in out
    assert f"relative error  {rel:.4g}" in out
    assert "parameters      32 -> 32" in out and "top-1" not in out


def test_eval_logits_reports_top1(models, capsys):
    a = save_linear(models["dir"] / "a.onnx", W, output="logits")
    b = save_linear(models["dir"] / "b.onnx", -W, output="logits")
    assert main(["eval", str(a), str(b), "--inputs", str(models["inputs"]), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    ref = models["x"] @ W
    assert r["fidelity"]["top1"] == pytest.approx((ref.argmax(1) == (-ref).argmax(1)).mean())
    assert r["fidelity"]["top1"] == 0 and r["fidelity"]["mean_cosine"] == pytest.approx(-1)


def test_optimize_writes_model_files_that_eval_reads(models, capsys):
    for suffix in (".optc-ir", ".onnx"):
        out = models["dir"] / f"opt{suffix}"
        assert main(["optimize", str(models["orig"]), "-o", str(out), "--passes", "default"]) == 0
        assert f"wrote {out}" in capsys.readouterr().out
        assert main(["eval", str(models["orig"]), str(out), "--inputs", str(models["inputs"]), "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        assert r["fidelity"]["relative_error"] < 1e-6 and r["sizes"]["compressed"]["params"] == 32
    assert not list(models["dir"].glob("*.tmp"))


def test_eval_compiled_artifact(models, capsys):
    art = models["dir"] / "art"
    assert main(["compile", str(models["scaled"]), "-o", str(art)]) == 0
    capsys.readouterr()
    assert main(["eval", str(models["orig"]), str(art), "--inputs", str(models["inputs"]), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["fidelity"]["relative_error"] == pytest.approx(0.25, abs=1e-4)
    assert "sizes" not in r and r["pipeline"].startswith("fold-shapes")


# -- a lossy pass that reads the calibration --------------------------------------------------------

@pytest.fixture
def calib_pass():
    @register_pass
    @dataclass
    class CalibScale(Pass):
        """Test-only lossy pass: scales every float constant; reports numpy-typed counts."""

        name: ClassVar[str] = "test-calib-scale"
        lossy: ClassVar[bool] = True
        factor: float = option(1.5, "scale")

        def run(self, graph, ctx):
            before = graph.clone()
            for v in graph.constants.values():
                if v.dtype.is_float:
                    v.const = (v.const * self.factor).astype(v.const.dtype)
            sets = ctx.sample_inputs(graph)
            return PassResult(True, {
                "calib_sets": len(ctx.calibration), "calib_rows": [int(s["x"].shape[0]) for s in ctx.calibration],
                "params_before": np.int64(32), "params_after": np.int64(24),
                "heads": {"layer0": np.array([1, 3]), "layer1": (2,)}, "scale": np.float32(self.factor),
                "fidelity": measure(before, graph, sets)})

    yield CalibScale
    del _REGISTRY["test-calib-scale"]


def test_calibration_reaches_the_pass_and_reports_print(models, calib_pass, capsys):
    out = models["dir"] / "c.optc-ir"
    assert main(["optimize", str(models["orig"]), "-o", str(out), "--passes", "test-calib-scale{factor=2.0}",
                 "--calib", str(models["inputs"]), "--calib-batch", "5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["passes"][0]
    assert r["calib_sets"] == 3 and r["calib_rows"] == [5, 5, 2]
    assert r["heads"] == {"layer0": [1, 3], "layer1": [2]} and r["scale"] == 2.0
    assert r["fidelity"]["relative_error"] == pytest.approx(1.0, abs=1e-5)  # 2y - y = y
    assert main(["optimize", str(models["orig"]), "-o", str(out), "--passes", "test-calib-scale",
                 "--calib", str(models["inputs"])]) == 0
    text = capsys.readouterr().out
    assert "test-calib-scale: changed" in text
    assert "params           32 -> 24 (-25.0%)" in text
    assert "fidelity         mean cosine 1" in text and "relative error 0.5" in text
    assert re.search(r"heads:\n +layer0 +\[1, 3\]\n +layer1 +\[2\]", text)


def test_compile_with_calibration_writes_a_json_manifest(models, calib_pass, capsys):
    art = models["dir"] / "art"
    assert main(["compile", str(models["orig"]), "-o", str(art), "--passes", "default,test-calib-scale",
                 "--calib", str(models["inputs"])]) == 0
    assert "params           32 -> 24" in capsys.readouterr().out
    manifest = json.loads((art / "manifest.json").read_text())
    lossy = [p for p in manifest["passes"] if p["lossy"]]
    assert lossy[0]["calib_rows"] == [8, 4] and lossy[0]["fidelity"]["vectors"] == 12


def test_inspect_passes_with_and_without_calib(models, calib_pass, capsys):
    assert main(["inspect", str(models["orig"]), "--passes", "test-calib-scale"]) == 0
    captured = capsys.readouterr()
    assert "without --calib" in captured.err and "test-calib-scale: changed" in captured.out
    assert main(["inspect", str(models["orig"]), "--passes", "test-calib-scale", "--json",
                 "--calib", str(models["inputs"]), "--calib-batch", "6"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["passes"][0]["calib_rows"] == [6, 6] and captured.err == ""


# -- user errors -----------------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optc.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("case, match", [
    ("eval_missing_inputs", "--inputs .*nope.npz: no such file"),
    ("eval_text_without_tokenizer", "a text file needs --tokenizer"),
    ("eval_wrong_names", r"missing input\(s\) 'x'"),
    ("eval_wrong_dtype", "expected element type f32, got f64"),
    ("eval_missing_model", "no such model file or artifact folder"),
    ("eval_no_output", "has no output 'z'"),
    ("eval_other_inputs", "the models take different inputs"),
    ("compile_text_without_tokenizer", "--calib .*: a text file needs --tokenizer"),
    ("tokenizer_without_calib", "--tokenizer needs --calib"),
    ("compile_tokenizer_not_one", "not a Hugging Face tokenizer folder"),
    ("optimize_bad_suffix", "ending in .onnx or .optc-ir"),
    ("optimize_bad_calib", "--calib .*nope.npz: no such file"),
    ("inspect_calib_without_passes", "--calib needs --passes"),
])
def test_user_errors_are_one_line_exit_2(case, match, models, capsys):
    d = models["dir"]
    orig, inputs = str(models["orig"]), str(models["inputs"])
    (d / "s.txt").write_text("A sentence.\n")
    np.savez(d / "bad_names.npz", z=models["x"])
    np.savez(d / "f64.npz", x=models["x"].astype(np.float64))
    other = d / "other.onnx"
    m = onnx.load(orig)
    m.graph.input[0].name = "q"
    m.graph.node[0].input[0] = "q"
    onnx.save(m, other)
    args = {
        "eval_missing_inputs": ["eval", orig, orig, "--inputs", str(d / "nope.npz")],
        "eval_text_without_tokenizer": ["eval", orig, orig, "--inputs", str(d / "s.txt")],
        "eval_wrong_names": ["eval", orig, orig, "--inputs", str(d / "bad_names.npz")],
        "eval_wrong_dtype": ["eval", orig, orig, "--inputs", str(d / "f64.npz")],
        "eval_missing_model": ["eval", orig, str(d / "gone.onnx"), "--inputs", inputs],
        "eval_no_output": ["eval", orig, orig, "--inputs", inputs, "--output", "z"],
        "eval_other_inputs": ["eval", orig, str(other), "--inputs", inputs],
        "compile_text_without_tokenizer": ["compile", orig, "-o", str(d / "art"), "--calib", str(d / "s.txt")],
        "tokenizer_without_calib": ["optimize", orig, "-o", str(d / "out.onnx"), "--tokenizer", str(d)],
        # compile takes --tokenizer alone (the artifact carries it), but it must be one
        "compile_tokenizer_not_one": ["compile", orig, "-o", str(d / "art"), "--tokenizer", str(d)],
        "optimize_bad_suffix": ["optimize", orig, "-o", str(d / "out.txt")],
        "optimize_bad_calib": ["optimize", orig, "-o", str(d / "out.onnx"), "--calib", str(d / "nope.npz")],
        "inspect_calib_without_passes": ["inspect", orig, "--calib", inputs],
    }[case]
    assert main(args) == 2  # in-process: a bug would raise here with its traceback
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error: "), r.stderr
    assert re.search(match, lines[0]), lines[0]
    assert not (d / "art").exists() and not (d / "out.onnx").exists() and not list(d.glob("*.tmp"))


def test_error_from_the_command_line_has_no_traceback(models):
    r = _cli("eval", str(models["orig"]), str(models["orig"]), "--inputs", str(models["dir"] / "nope.npz"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr


# -- MiniLM, real weights (slow) ----------------------------------------------------------------------

LEE_BASELINE = {128: 0.6538, 256: 0.6564}  # measured: python bench/lee.py [--max-length 256]


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory):
    from optc import zoo

    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    inputs = zoo.tokenize(zoo.SAMPLE_SENTENCES[:2], max_length=16)
    return zoo.export_onnx(zoo.load_minilm(), inputs, path, dynamo=False, output_names=["last_hidden_state", "pooler_output"])


@pytest.mark.slow
@pytest.mark.parametrize("max_length", [128, 256])
def test_lee_baseline(minilm_onnx, max_length):
    from optc import datasets, load_model
    from optc.evaluate import sentence_embeddings, similarity_pearson

    emb = sentence_embeddings(load_model(minilm_onnx), datasets.lee_documents(), max_length=max_length)
    assert emb.shape == (50, 384)
    assert similarity_pearson(emb, datasets.lee_similarities()) == pytest.approx(LEE_BASELINE[max_length], abs=0.01)


@pytest.mark.slow
def test_minilm_optimize_and_eval_on_news(minilm_onnx, tmp_path, capsys):
    from optc import datasets, zoo

    calib, held = tmp_path / "calib.txt", tmp_path / "holdout.txt"
    calib.write_text("\n".join(datasets.news_sentences("calib", 16)) + "\n")
    held.write_text("\n".join(datasets.news_sentences("holdout", 16)) + "\n")
    out = tmp_path / "minilm.optc-ir"
    tok = str(zoo.minilm_dir())
    assert main(["optimize", str(minilm_onnx), "-o", str(out), "--calib", str(calib), "--tokenizer", tok]) == 0
    capsys.readouterr()
    assert main(["eval", str(minilm_onnx), str(out), "--inputs", str(held), "--tokenizer", tok, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["output"] == "last_hidden_state" and r["fidelity"]["vectors"] == 16
    assert r["fidelity"]["worst_cosine"] > 0.99999 and r["fidelity"]["relative_error"] < 1e-4
    assert abs(r["sizes"]["compressed"]["params"] - r["sizes"]["original"]["params"]) < 100


def test_api_optimize_takes_input_sets(models, calib_pass):
    import optc
    from optc.calibration import CalibrationError

    graph = optc.load_model(models["orig"])
    sets = [{"x": models["x"][:4]}, {"x": models["x"][4:]}]
    result = optc.optimize(graph, "test-calib-scale", calibration=sets)
    assert result.reports[0]["calib_rows"] == [4, 8]
    json.dumps(result.reports)  # numpy values, tuples and the Fidelity dataclass became JSON
    with pytest.raises(CalibrationError, match=r"calibration \(input set 1\): missing input\(s\) 'x'"):
        optc.optimize(optc.load_model(models["orig"]), "test-calib-scale", calibration=[sets[0], {"y": models["x"]}])


def test_jsonable():
    from optc.api import jsonable
    from optc.passes.compression.fidelity import Fidelity

    value = {"a": np.float32(0.5), "b": (np.int64(3), {1, 2}), "c": np.arange(3), "d": float("nan"),
             "e": Fidelity(1.0, 0.5, 0.1, None, 4), 7: np.bool_(True), "f": object}
    out = jsonable(value)
    assert json.loads(json.dumps(out)) == out
    assert out["a"] == 0.5 and out["b"] == [3, [1, 2]] and out["c"] == [0, 1, 2] and out["d"] == "nan"
    assert out["e"]["worst_cosine"] == 0.5 and out["7"] is True and isinstance(out["f"], str)
