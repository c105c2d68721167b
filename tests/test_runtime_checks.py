"""Compiled modules are memory-safe by default (codegen/checks.py, ``LowerContext.check_each``):
indices read from data, integer divisors, run-time broadcasts and reshapes, the module's own
assumptions and zero-size dims are checked inside the module, and both backends refuse the same
hostile inputs with the same one-line ``InvalidValueError`` (``ir/checks.py``) — never a signal.

The hostile cases (tests/runtime_check_cases.py) run in a subprocess: a kernel that read or wrote
out of bounds would kill it, which fails these tests instead of pytest. The other tests only
build graphs or run valid inputs in-process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optc.codegen.build import build
from optc.ir import DType, Graph, TensorType
from optc.ir.errors import InvalidValueError
from optc.ir.interpreter import run

sys.path.insert(0, str(Path(__file__).parent))
import runtime_check_cases as cases  # noqa: E402

RUNNER = Path(cases.__file__)
F32, I64 = DType.FLOAT32, DType.INT64
UNCHECKED_CASES = ["gather_token_ids", "gather_nd", "scatter_nd", "integer_division", "expand_runtime_target",
                   "reshape_runtime_target", "slice_start_past_end", "slice_runtime_negative_step"]


def _run_cases(*args: str) -> tuple[dict, subprocess.CompletedProcess]:
    """Run the case runner in a subprocess; its JSON results keyed by (case, feed)."""
    r = subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=1800)
    results, last = {}, None
    for line in r.stdout.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "running" in rec:
            last = rec
        else:
            results[(rec["case"], rec["feed"])] = rec
    r.last_running = last  # type: ignore[attr-defined]
    return results, r


def _why_missing(r: subprocess.CompletedProcess) -> str:
    where = r.last_running  # type: ignore[attr-defined]
    stage = f" while running case {where['running']} feed {where['feed']}" if where else ""
    how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit status {r.returncode}"
    return f"the case runner died ({how}){stage}: {r.stderr.strip()[-600:]}"


@pytest.fixture(scope="module")
def checked_results():
    return _run_cases()


@pytest.fixture(scope="module")
def unchecked_results():
    return _run_cases("--unchecked", *UNCHECKED_CASES)


@pytest.mark.parametrize("name", list(cases.CASES))
def test_hostile_inputs_same_error_in_both_backends(name, checked_results):
    results, r = checked_results
    _, feeds = cases.CASES[name]()
    for k, f in enumerate(feeds):
        rec = results.get((name, k))
        assert rec is not None, _why_missing(r)
        if f["expect"] is None:
            assert rec["ref"] == "ok" and rec["tvm"] == "ok", rec
            assert rec["same"], f"feed {k}: the backends disagree: {rec}"
            continue
        want = {"error": "InvalidValueError", "message": f["expect"]}
        assert rec["tvm"] == want, f"feed {k}: {rec}"
        if not f["raw"]:  # a raw call skips the Python input checks the interpreter always makes
            assert rec["ref"] == want, f"feed {k}: {rec}"
    assert r.returncode == 0 or (name, len(feeds) - 1) in results, _why_missing(r)


@pytest.mark.parametrize("name", UNCHECKED_CASES)
def test_unchecked_build_runs_valid_inputs(name, unchecked_results):
    results, r = unchecked_results
    _, feeds = cases.CASES[name]()
    valid = [k for k, f in enumerate(feeds) if f["expect"] is None and not f["raw"]]
    assert valid
    for k in valid:
        rec = results.get((name, k))
        assert rec is not None, _why_missing(r)
        assert rec["same"], rec


# -- compile time ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op, attrs, index, what", [
    ("Gather", {"axis": 0}, [1, 5], "index out of range [-5, 5) on axis 0"),
    ("Gather", {"axis": 1}, [-4], "index out of range [-3, 3) on axis 1"),
    ("GatherElements", {"axis": 0}, [[0, 9, 1]], "index out of range [-5, 5) on axis 0"),
    ("GatherND", {}, [[1, 3]], "index out of range [-3, 3) on axis 1"),
])
def test_constant_index_out_of_range_fails_when_the_graph_is_built(op, attrs, index, what):
    g = Graph()
    x = g.add_input("x", TensorType(F32, (5, 3)))
    with pytest.raises(InvalidValueError) as e:
        g.add_node(op, [x, g.add_constant(np.array(index, dtype=np.int64))], attrs, name="n1")
    assert str(e.value) == f"node n1 ({op}): {what}"


def test_constant_index_out_of_range_in_onnx_names_the_node(tmp_path):
    from optc import load_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    idx = helper.make_tensor("idx", TensorProto.INT64, [2], [0, 7])
    node = helper.make_node("Gather", ["x", "idx"], ["y"], name="lookup", axis=0)
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], [idx]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bad_index.onnx"
    onnx.save(m, path)
    with pytest.raises(InvalidValueError, match=re.escape("node lookup (Gather): index out of range [-4, 4) on axis 0")):
        load_model(path)


def test_constant_zero_divisor_fails_the_build_and_the_interpreter():
    g = Graph()
    a = g.add_input("a", TensorType(I64, (3,)))
    g.set_outputs([g.add_node("Div", [a, g.add_constant(np.int64([1, 0, 2]))], name="d").output])
    msg = "node d (Div): integer division by zero"
    with pytest.raises(InvalidValueError, match=re.escape(msg)):
        run(g, {"a": np.int64([1, 2, 3])})
    with pytest.raises(InvalidValueError, match=re.escape(msg)):
        build(g, "x86")


def test_zero_size_inputs_are_refused_by_the_interpreter():
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("n", 2)))
    g.set_outputs([g.op("Relu", x)])
    with pytest.raises(InvalidValueError, match=r"input 'x': dim 0 \(n\) is 0"):
        run(g, {"x": np.zeros((0, 2), np.float32)})
    static = Graph()
    s = static.add_input("x", TensorType(F32, (0, 2)))  # a static zero dim is fine
    static.set_outputs([static.op("Relu", s)])
    assert run(static, {"x": np.zeros((0, 2), np.float32)})[static.output_names()[0]].shape == (0, 2)


# -- what the checks cost ----------------------------------------------------------------------------
def _embedding():
    """Token + position embeddings and a layer norm, spelled as exporters do (position ids sliced
    from a constant buffer by seq)."""
    g = Graph("emb")
    ids = g.add_input("ids", TensorType(I64, ("b", "s")))
    c = g.add_constant
    tok = g.op("Gather", c(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)), ids, axis=0)
    seq = g.op("Unsqueeze", g.op("Gather", g.op("Shape", ids), c(np.int64(1))), c(np.int64([0])))
    pos_ids = g.op("Slice", c(np.arange(16, dtype=np.int64).reshape(1, 16)), c(np.int64([0])), seq, c(np.int64([1])))
    pos = g.op("Gather", c(np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)), pos_ids, axis=0)
    y = g.op("LayerNormalization", g.op("Add", tok, pos), c(np.ones(8, np.float32)), c(np.zeros(8, np.float32)), axis=-1)
    g.set_outputs([y])
    return g


def _callees(cm) -> set[str]:
    """The kernels a module calls (not the VM's builtins)."""
    return {k for k in re.findall(r"call\s+(\S+)", cm.executable.as_text()) if not k.startswith("vm.builtin.")}


def test_checks_leave_fusion_alone_and_skip_provable_indices():
    g = _embedding()
    checked, unchecked = build(g, "x86"), build(g, "x86", checked=False)
    assert checked.checked and not unchecked.checked
    assert checked.signature.checked and not unchecked.signature.checked
    assert unchecked.checks == []
    # token ids are checked; position ids sliced from a constant 0..15 are provably in range
    assert any("index out of range [-50, 50)" in m for m in checked.checks)
    assert not any("[-16, 16)" in m for m in checked.checks)
    assert any("s <= 16" in m for m in checked.checks)  # the slice's assumption, checked in the module
    kernels = {k for k in _callees(checked) if not k.startswith("check_")}
    assert kernels == _callees(unchecked)
    assert len(_callees(checked) - kernels) == len(checked.checks)
    feed = {"ids": np.array([[1, 49, 0, 7]], np.int64)}
    a, b, ref = checked.load().run(feed), unchecked.load().run(feed), run(g, feed)
    for k in ref:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_allclose(a[k], ref[k], rtol=1e-5, atol=1e-5)


# -- the CLI -------------------------------------------------------------------------------------------
def test_cli_out_of_range_token_id_is_one_line_exit_2(tmp_path):
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 4], np.arange(40, dtype=np.float32).tolist())
    node = helper.make_node("Gather", ["table", "ids"], ["y"], name="embed", axis=0)
    m = helper.make_model(helper.make_graph([node], "g", [ids], [y], [table]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, tmp_path / "emb.onnx")
    art = tmp_path / "art"
    cli = [sys.executable, "-m", "optc.cli"]
    r = subprocess.run(cli + ["compile", str(tmp_path / "emb.onnx"), "-o", str(art)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    np.savez(tmp_path / "in.npz", ids=np.array([[1, 10]], np.int64))
    r = subprocess.run(cli + ["run", str(art), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz")],
                       capture_output=True, text=True)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines == ["optc: error: node embed (Gather): index out of range [-10, 10) on axis 0"], r.stderr
