"""Targets: presets, TVM target JSON, the backend interface codegen asks, and one-line errors for
bad targets and for artifacts this machine cannot run."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from optc.cli import main
from optc.targets import get_target, known_targets
from optc.targets.base import Target, TargetError, host_problem
from optc.targets.cpu import CPUTarget


def test_every_preset_resolves_to_its_family():
    names = known_targets()
    for want in ("x86", "x86-avx2", "x86-avx512", "arm64", "arm64-dotprod", "arm64-i8mm", "cuda-sm80", "cuda-sm90"):
        assert want in names
    for name in names:
        if name == "cuda":
            continue  # the detected GPU (none here, see below)
        t = get_target(name)
        assert isinstance(t, Target) and t.name == name and t.summary
        d = t.describe()
        assert d["arch"] in ("x86_64", "aarch64") and d["kind"] in ("cpu", "cuda")
    a = get_target("arm64-dotprod")
    assert (a.arch, a.vector_bits) == ("aarch64", 128) and {"asimd", "asimddp", "asimdhp"} <= set(a.features)
    assert "i8mm" in get_target("arm64-i8mm").features and "i8mm" not in a.features
    assert get_target("cuda-sm90").describe()["tvm"]["arch"] == "sm_90"


def test_tvm_target_json_picks_the_family_and_records_features():
    t = get_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}')
    assert isinstance(t, CPUTarget) and t.arch == "aarch64" and "asimddp" in t.features
    t = get_target('{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}')
    assert t.arch == "x86_64" and "avx2" in t.features and t.vector_bits == 256
    assert get_target('{"kind": "cuda", "arch": "sm_80"}').kind == "cuda"


@pytest.mark.parametrize("target, msg", [
    ("arm65", "unknown target 'arm65'"),
    ("x86-avx9", "unknown x86 target"),
    ("cuda-sm99", "unknown CUDA target"),
    ("{not json", "not a valid TVM target JSON"),
    ('{"kind": "lvm"}', "TVM refuses the target JSON"),
    ('{"kind": "llvm", "mtriple": "riscv64-linux-gnu"}', "no schedules for LLVM architecture 'riscv64'"),
    ('{"kind": "vulkan"}', "no backend for TVM target kind 'vulkan'"),
])
def test_bad_targets_are_one_line(target, msg, tmp_path, capsys):
    assert main(["compile", str(tmp_path / "m.onnx"), "--target", target, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_cuda_detected_without_a_gpu_is_one_line():
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    with pytest.raises(TargetError, match="has none; name an architecture"):
        get_target("cuda")


def test_optc_targets_lists_every_preset(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in known_targets():
        assert f"\n{name} " in "\n" + out
    assert main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(known_targets())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("targets")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    path = folder / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path, onnx.numpy_helper.to_array(w)


def test_a_new_target_plugs_in_without_touching_codegen(model):
    """Codegen asks the target object for every step: a target whose schedule rules are none
    gets every kernel from its fallback, with no other change."""
    from optc.codegen.build import build
    from optc.frontend.onnx_import import import_onnx

    calls = []

    @dataclasses.dataclass(frozen=True)
    class Plain(CPUTarget):
        def schedule_rules(self):
            calls.append("schedule_rules")
            return []

        def export(self, executable, path):
            calls.append("export")
            super().export(executable, path)

    base = get_target("x86")
    plain = Plain(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    path, w = model
    cm = build(import_onnx(path), plain)
    assert cm.fallback_funcs and "schedule_rules" in calls
    x = np.ones((3, 8), np.float32)
    np.testing.assert_allclose(cm.load().run({"x": x})["y"], x @ w, rtol=1e-5)


def test_cuda_artifact_without_a_gpu_is_refused_in_one_line(model, tmp_path, capsys):
    """The manifest's target is checked before the library is touched: a CUDA artifact on a
    machine without a GPU is one line, exit 2 (here: an x86 artifact relabelled as CUDA)."""
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    path, _ = model
    art = tmp_path / "art"
    optc.compile(path, art)
    m = json.loads((art / "manifest.json").read_text())
    m["target"] = get_target("cuda-sm90").describe()
    (art / "manifest.json").write_text(json.dumps(m))
    np.savez(tmp_path / "in.npz", x=np.ones((2, 8), np.float32))
    assert main(["run", str(art), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0], err
    assert host_problem(get_target("cuda-sm80").describe()).endswith("this machine has no CUDA GPU")


def test_cross_compiled_target_needs_its_toolchain(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    t = get_target("arm64")
    if t.cross_compiler is None:
        pytest.skip("an aarch64 host builds arm64 natively")
    with pytest.raises(TargetError, match="apt-get install g.._aarch64|g\\+\\+-aarch64-linux-gnu"):
        t.check_toolchain()
