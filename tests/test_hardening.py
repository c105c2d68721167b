"""Issue #10's hostile-user cases, one by one: what optc writes (and refuses to touch), how an
artifact is verified before it is trusted, untrusted .pt2 archives, invalid ONNX models,
malformed input files, resource limits. Every case runs the CLI in a forked child
(``tests/isolation.py``) and asserts exit 2 with one line — or success with the right result —
never a signal, a hang, a traceback, or a changed file the user did not ask optc to write."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc
from isolation import assert_user_error_or_success, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _mlp_model(folder: Path, name: str = "mlp.onnx", hidden: int = 32) -> Path:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 8)).astype(np.float32), "w2")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], [w1, w2]),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path = folder / name
    onnx.save(m, path)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An ONNX MLP, its artifact (compiled once) and an input file."""
    folder = tmp_path_factory.mktemp("hardening")
    model = _mlp_model(folder)
    art = folder / "mlp.optc"
    o = run_cli(["compile", str(model), "-o", str(art)])
    assert o.status == 0, o.describe()
    inputs = folder / "in.npz"
    np.savez(inputs, x=np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32))
    return model, art, inputs


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its sha256: what must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _expect_error(argv, match: str, cwd=None):
    o = run_cli(argv, cwd=cwd)
    assert_user_error_or_success(o, " ".join(map(str, argv)))
    assert o.status == 2, f"expected a user error: {o.describe()}"
    assert match in o.stderr, o.stderr
    return o


# -- what optc writes ----------------------------------------------------------------------------
def test_compile_refuses_a_folder_that_is_not_an_artifact(built, tmp_path):
    model, _, _ = built
    victim = tmp_path / "work"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    shutil.copy(model, victim / "mlp.onnx")
    before = _tree(tmp_path)
    _expect_error(["compile", str(victim / "mlp.onnx"), "-o", str(victim)], "not an optc artifact")
    _expect_error(["compile", str(model), "-o", "."], "not a file or folder name", cwd=victim)
    _expect_error(["compile", str(model), "-o", str(tmp_path)], "current folder", cwd=victim)
    _expect_error(["compile", str(model), "-o", str(victim / "notes.txt")], "not a folder")
    assert _tree(tmp_path) == before


def test_compile_replaces_its_own_artifact_and_fills_an_empty_folder(built, tmp_path):
    model, art, _ = built
    old = tmp_path / "old"
    shutil.copytree(art, old)
    (old / "manifest.json").write_text((old / "manifest.json").read_text().replace('"pipeline"', '"pipeline_"', 1))
    assert run_cli(["compile", str(model), "-o", str(old)]).status == 0
    assert "pipeline" in json.loads((old / "manifest.json").read_text())
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["compile", str(model), "-o", str(empty)]).status == 0
    assert (empty / "model.so").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "old"]  # no temps left


@pytest.mark.parametrize("out,match", [(".", "not a file or folder name"), ("..", "not a file or folder name"),
                                       ("x.npz", "is a folder"), ("out.txt", "ending in .npz"),
                                       ("afile/o.npz", "is not a folder")])
def test_run_output_paths(built, tmp_path, out, match):
    _, art, inputs = built
    (tmp_path / "x.npz").mkdir()
    (tmp_path / "afile").write_text("x")
    before = _tree(tmp_path)
    _expect_error(["run", str(art), "--inputs", str(inputs), "-o", out], match, cwd=tmp_path)
    assert _tree(tmp_path) == before


def test_optimize_output_paths(built, tmp_path):
    model, _, _ = built
    (tmp_path / "m.onnx").mkdir()
    _expect_error(["optimize", str(model), "-o", str(tmp_path / "m.onnx")], "is a folder")
    _expect_error(["optimize", str(model), "-o", str(tmp_path / "m.txt")], "ending in")
    assert run_cli(["optimize", str(model), "-o", str(tmp_path / "o.onnx")]).status == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "o.onnx"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(built, tmp_path):
    model, _, _ = built
    out = tmp_path / "a.optc"
    dead = tmp_path / f".a.optc.optc-{_dead_pid()}-deadbeef.tmp"
    dead.mkdir()
    (dead / "model.so").write_bytes(b"x" * 1000)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".a.optc.optc-{sleeper.pid}-0badf00d.tmp"
        live.mkdir()
        other = tmp_path / f".b.optc.optc-{_dead_pid()}-deadbeef.tmp"  # another destination's: not ours to judge
        other.mkdir()
        assert run_cli(["compile", str(model), "-o", str(out)]).status == 0
        assert not dead.exists() and live.exists() and other.exists()
    finally:
        sleeper.kill()


@pytest.mark.parametrize("command", ["compile", "optimize"])
def test_killed_mid_write_leaves_the_old_output_and_a_temp_the_next_run_removes(built, tmp_path, tmp_path_factory,
                                                                                 command):
    """SIGKILL while the output is being written: the previous output stays intact, and the
    temp the dead process left is removed by the next write to the same destination."""
    model, art, _ = built
    out = tmp_path / ("m.optc" if command == "compile" else "m.onnx")
    if command == "compile":
        shutil.copytree(art, out)
    else:  # 40 MB of weights: a write long enough for the kill to land inside it
        shutil.copy(model, out)
        model = _mlp_model(tmp_path_factory.mktemp("big"), hidden=400_000)
    before = _tree(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "optc.cli", command, str(model), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temp = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.optc-{proc.pid}-")]
        if temps:
            temp = temps[0]
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    if temp is None:
        pytest.skip("the write finished before it could be interrupted")
    visible = lambda tree: {k: v for k, v in tree.items() if not k.startswith(".")}  # noqa: E731
    killed = visible(_tree(tmp_path))
    if killed != visible(before):
        # The rename landed between seeing the temp and the kill: then the output is the complete
        # new one (an artifact that verifies, a model identical to the one a full run writes).
        if command == "compile":
            optc.load(out)
        else:
            onnx.checker.check_model(str(out))
    assert run_cli([command, str(model), "-o", str(out)]).status == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if killed != visible(before) and command == "optimize":
        assert killed == visible(_tree(tmp_path))


# -- artifacts are verified before they are trusted ----------------------------------------------
def _tampered(art: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "t.optc"
    shutil.copytree(art, copy)
    edit(copy)
    return copy


def _edit_manifest(fn):
    def edit(folder: Path):
        m = json.loads((folder / "manifest.json").read_text())
        fn(m)
        (folder / "manifest.json").write_text(json.dumps(m))
    return edit


def _flip_byte(folder: Path):
    data = bytearray((folder / "model.so").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.so").write_bytes(bytes(data))


TAMPERING = {
    "truncated library": (lambda f: os.truncate(f / "model.so", 1000), "truncated"),
    "flipped byte": (_flip_byte, "sha256"),
    "library outside the folder": (_edit_manifest(lambda m: m.update(library="../model.so")), "inside the folder"),
    "absolute library": (_edit_manifest(lambda m: m.update(library="/usr/lib/x86_64-linux-gnu/libc.so.6")),
                         "inside the folder"),
    "file list outside": (_edit_manifest(lambda m: m["files"].update({"../x": m["files"]["model.so"]})),
                          "not a file name inside"),
    "assumptions dropped": (_edit_manifest(lambda m: m.update(assumptions=[], checked=False)), "do not match"),
    "another input shape": (_edit_manifest(lambda m: m["inputs"][0].update(shape=["batch", 17])), "do not match"),
    "another cpu": (_edit_manifest(lambda m: m["target"].update(name="x86-avx2", features=["avx2"])),
                    "do not match"),
    "newer tvm": (_edit_manifest(lambda m: m["versions"].update(tvm="9.9.9")), "TVM 9.9.9"),
    "old format": (_edit_manifest(lambda m: m.update(format="optc-artifact/1")), "recompile"),
    "inputs not a list": (_edit_manifest(lambda m: m.update(inputs=5)), "must be lists"),
    "files a list": (_edit_manifest(lambda m: m.update(files=[])), "'files'"),
    "library a number": (_edit_manifest(lambda m: m.update(library=3)), "'library'"),
    "sha256 not hex": (_edit_manifest(lambda m: m["files"]["model.so"].update(sha256="zz")), "sha256"),
    "manifest a list": (lambda f: (f / "manifest.json").write_text("[1, 2]"), "not a manifest"),
    "manifest not json": (lambda f: (f / "manifest.json").write_bytes(b"\xff{"), "not valid JSON"),
    "manifest missing": (lambda f: (f / "manifest.json").unlink(), "not an optc artifact"),
    "library missing": (lambda f: (f / "model.so").unlink(), "missing"),
    "library a symlink out": (lambda f: ((f / "model.so").unlink(), (f / "model.so").symlink_to("/bin/ls")),
                              "outside the artifact"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampered_artifacts_are_refused(built, tmp_path, case):
    _, art, inputs = built
    edit, match = TAMPERING[case]
    folder = _tampered(art, tmp_path, edit)
    _expect_error(["run", str(folder), "--inputs", str(inputs), "-o", str(tmp_path / "o.npz")], match)
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(optc.OptcError, match=match):
        optc.load(folder)


def test_bench_compare_checks_the_source_model_fingerprint(built, tmp_path):
    model, _, _ = built
    copy = tmp_path / "mlp.onnx"
    shutil.copy(model, copy)
    art = tmp_path / "a.optc"
    assert run_cli(["compile", str(copy), "-o", str(art)]).status == 0
    m = onnx.load(copy)
    m.graph.node[1].op_type = "Sigmoid"  # same inputs and outputs, another model
    onnx.save(m, copy)
    _expect_error(["bench", str(art), "--dim", "batch=2", "--repeat", "1", "--compare", "onnxruntime"],
                  "changed since the artifact was built")


# -- untrusted .pt2 archives ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pt2(tmp_path_factory):
    import torch

    class Two(torch.nn.Module):
        def forward(self, x):
            return {"a": x + 1.0, "b": x * 2.0}

    folder = tmp_path_factory.mktemp("pt2")
    path = folder / "m.pt2"
    torch.export.save(torch.export.export(Two(), (torch.ones(2, 3),), strict=False), str(path))
    return path


def _rewrite_member(src: Path, dst: Path, member_suffix: str, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith(member_suffix):
                data = edit(data)
            zout.writestr(info, data)


def _probe_module(folder: Path) -> Path:
    """A module that leaves a marker file if it is ever imported."""
    marker = folder / "IMPORTED"
    (folder / "optc_evil_probe.py").write_text(
        f"open({str(marker)!r}, 'w').write('pwned')\nimport enum\nclass E(enum.Enum):\n    A = 1\n")
    return marker


def _model_json_edit(fn):
    def edit(data: bytes) -> bytes:
        return json.dumps(fn(json.loads(data))).encode()
    return edit


def _swap_out_spec_type(doc):
    text = json.dumps(doc)
    text = text.replace("builtins.dict", "optc_evil_probe.Foo")
    return json.loads(text)


@pytest.mark.parametrize("attack", ["pytree type", "enum hook"])
def test_pt2_never_imports_a_module_it_names(pt2, tmp_path, attack):
    marker = _probe_module(tmp_path)
    bad = tmp_path / "bad.pt2"
    if attack == "pytree type":
        _rewrite_member(pt2, bad, "models/model.json", _model_json_edit(_swap_out_spec_type))
    else:
        def enum(doc):
            text = json.dumps(doc).replace('\\"type\\": \\"builtins.dict\\"',
                                           '\\"type\\": \\"builtins.dict\\", \\"x\\": {\\"__enum__\\": true, '
                                           '\\"fqn\\": \\"optc_evil_probe:E\\", \\"name\\": \\"A\\"}')
            return json.loads(text)
        _rewrite_member(pt2, bad, "models/model.json", _model_json_edit(enum))

    def attempt():
        sys.path.insert(0, str(tmp_path))  # the attacker's module is importable
        from optc.cli import main

        return main(["inspect", str(bad)])

    from isolation import run_isolated

    o = run_isolated(attempt, cwd=tmp_path)
    assert_user_error_or_success(o, attack)
    assert not marker.exists(), "the archive made optc import a module it named"


def test_pt2_pickled_payloads_are_refused(pt2, tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    bad = tmp_path / "bad.pt2"

    def config(data: bytes) -> bytes:
        doc = json.loads(data)
        for entry in doc.get("config", {}).values():
            entry["use_pickle"] = True
        return json.dumps(doc).encode()

    payload = pickle.dumps(Boom())
    with zipfile.ZipFile(pt2) as zin, zipfile.ZipFile(bad, "w") as zout:
        names = zin.namelist()
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("_config.json"):
                data = config(data)
            elif "/data/" in info.filename and not info.filename.endswith(".json"):
                data = payload
            zout.writestr(info, data)
    assert any("/data/" in n for n in names)
    o = run_cli(["inspect", str(bad)], cwd=tmp_path)
    assert_user_error_or_success(o, "pickled pt2")
    assert not (tmp_path / "PWNED").exists()


# -- invalid ONNX models -------------------------------------------------------------------------
def _variant(model: Path, tmp_path: Path, edit, name="v.onnx") -> Path:
    m = onnx.load(model)
    edit(m)
    out = tmp_path / name
    onnx.save(m, out)
    return out


def _set_opset(v):
    def edit(m):
        m.opset_import[0].version = v
    return edit


def _negative_dim(m):
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -16


def _duplicate_output(m):
    m.graph.output.append(m.graph.output[0])


@pytest.mark.parametrize("case,edit,match", [
    ("opset 99", _set_opset(99), "opset 99"),
    ("negative dim", _negative_dim, "negative dim"),
    ("duplicate output", _duplicate_output, "listed twice"),
])
def test_invalid_onnx_models_are_refused(built, tmp_path, case, edit, match):
    model, _, _ = built
    _expect_error(["inspect", str(_variant(model, tmp_path, edit))], match)


def test_initializer_shadowing_an_input_is_said_not_silent(built, tmp_path):
    model, _, _ = built

    def shadow(m):
        m.graph.input.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, [32, 8]))

    o = run_cli(["inspect", str(_variant(model, tmp_path, shadow)), "--json"])
    assert o.status == 0 and "'w2' has an initializer of the same name" in o.stderr

    def bad_shadow(m):
        m.graph.input.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, [8, 8]))

    _expect_error(["inspect", str(_variant(model, tmp_path, bad_shadow, "b.onnx"))], "initializer")


def _external(model: Path, tmp_path: Path) -> Path:
    m = onnx.load(model)
    onnx.save(m, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    return tmp_path / "ext.onnx"


@pytest.mark.parametrize("key,value,match", [("offset", "abc", "not a byte count"), ("offset", "-5", "not a byte count"),
                                             ("length", "-1", "not a byte count"),
                                             ("length", "99999999999", "beyond the end"),
                                             ("offset", "99999999999", "beyond the end"),
                                             ("location", "../../etc/passwd", "outside the model's folder"),
                                             ("location", "/etc/passwd", "outside the model's folder")])
def test_external_data_fields_are_validated(built, tmp_path, key, value, match):
    model, _, _ = built
    ext = _external(model, tmp_path)
    m = onnx.load(ext, load_external_data=False)
    for entry in m.graph.initializer[0].external_data:
        if entry.key == key:
            entry.value = value
    if key not in [e.key for e in m.graph.initializer[0].external_data]:
        m.graph.initializer[0].external_data.add(key=key, value=value)
    onnx.save(m, ext)
    _expect_error(["inspect", str(ext)], match)


# -- input files ---------------------------------------------------------------------------------
def _npz_with_header(tmp_path: Path, header_shape: tuple, data: bytes) -> Path:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": header_shape})
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue() + data)
    return path


def test_input_files(built, tmp_path):
    _, art, inputs = built
    out = str(tmp_path / "o.npz")
    np.save(tmp_path / "a.npy", np.zeros(3))
    _expect_error(["run", str(art), "--inputs", str(tmp_path / "a.npy"), "-o", out], "a .npy file")
    _expect_error(["run", str(art), "--inputs", str(_npz_with_header(tmp_path, (10**6, 10**6), b"\0" * 64)), "-o", out],
                  "claims 1,000,000,000,000 elements")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    _expect_error(["run", str(art), "--inputs", str(tmp_path / "obj.npz"), "-o", out], "Python objects")
    np.savez(tmp_path / "str.npz", x=np.array(["a", "b"]))
    _expect_error(["run", str(art), "--inputs", str(tmp_path / "str.npz"), "-o", out], "not a number type")
    (tmp_path / "trunc.npz").write_bytes(inputs.read_bytes()[:100])
    _expect_error(["run", str(art), "--inputs", str(tmp_path / "trunc.npz"), "-o", out], "trunc.npz")
    _expect_error(["run", str(art), "--inputs", str(tmp_path), "-o", out], "is a folder")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 15), np.float32))
    _expect_error(["run", str(art), "--inputs", str(tmp_path / "wrong.npz"), "-o", out], "dim 1 must be 16")
    assert not Path(out).exists()


def test_big_endian_and_fortran_inputs_give_the_same_result(built, tmp_path):
    _, art, inputs = built
    x = np.load(inputs)["x"]
    np.savez(tmp_path / "be.npz", x=x.astype(">f4"))
    np.savez(tmp_path / "f.npz", x=np.asfortranarray(x))
    for name in ("be", "f"):
        assert run_cli(["run", str(art), "--inputs", str(tmp_path / f"{name}.npz"), "-o", str(tmp_path / f"{name}.o.npz")]).status == 0
    want = optc.load(art).run({"x": x})["y"]
    for name in ("be", "f"):
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.o.npz")["y"], want)


# -- resource limits -----------------------------------------------------------------------------
@pytest.mark.parametrize("args,match", [(["--repeat", "0"], "--repeat"), (["--repeat", "-3"], "--repeat"),
                                        (["--threads", "-2"], "--threads"), (["--threads", "0"], "--threads"),
                                        (["--threads", "500"], "--threads"),
                                        (["--dim", "batch=99999999999"], "at most"),
                                        (["--dim", "batch=2000000000"], "bytes"),
                                        (["--dim", "batch=abc"], "whole number"),
                                        (["--dim", "batch=-1"], "whole number")])
def test_bench_limits(built, args, match):
    _, art, _ = built
    argv = ["bench", str(art), "--repeat", "1"] + args
    if not any(a.startswith("batch=") for a in args):
        argv += ["--dim", "batch=2"]
    _expect_error(argv, match)


def test_check_numerics_on_a_huge_declared_input(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [100000, 100000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [100000, 100000])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "big", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(m, tmp_path / "big.onnx")
    _expect_error(["inspect", str(tmp_path / "big.onnx"), "--passes", "default", "--check-numerics"], "limit")


# -- the Python API raises the same one-line errors ---------------------------------------------
def test_api_errors_are_optc_errors(built, tmp_path):
    model, art, _ = built
    with pytest.raises(optc.OptcError, match="no such file"):
        optc.load_inputs(tmp_path / "missing.npz")
    with pytest.raises(optc.OptcError, match="not an optc artifact"):
        optc.load(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(optc.OptcError, match="not an optc artifact"):
        optc.compile(model, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "x"
    with pytest.raises(optc.OptcError, match="ending in .npz"):
        optc.save_outputs(tmp_path / "o.txt", {"y": np.zeros(2)})
    with pytest.raises(optc.OptcError, match="mapping"):
        optc.load(art).run([np.zeros((1, 16), np.float32)])
