"""optc-run, the native runner (optc/native): built for x86_64 and run here, and built for aarch64
and run under qemu-aarch64 (``-m arm64``). Every error must be one ``optc-run: error:`` line with
exit status 2 (usage, files, inputs) or 1 (the model failed while running)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

import optc
from optc import native
from optc.codegen.artifact import write_artifact
from optc.codegen.build import build
from optc.ir import DType, Graph, TensorType

ERROR_LINE = re.compile(r"^optc-run: error: [^\n]+\n$")
GATHER_ERROR = "node embed (Gather): index out of range [-50, 50) on axis 0"


def _graph() -> Graph:
    """Token + position embedding, LayerNorm, a bias input and a bool output: symbolic dims
    shared by two inputs (``b``), a static dim, an assumption (``s <= 16``) and a run-time index
    check (the token ids)."""
    g = Graph("native_test")
    ids = g.add_input("ids", TensorType(DType.INT64, ("b", "s")))
    bias = g.add_input("bias", TensorType(DType.FLOAT32, ("b", 1, 8)))
    c = g.add_constant
    table = c(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32))
    tok = g.add_node("Gather", [table, ids], {"axis": 0}, name="embed").output
    seq = g.op("Unsqueeze", g.op("Gather", g.op("Shape", ids), c(np.int64(1))), c(np.int64([0])))
    pos_ids = g.op("Slice", c(np.arange(16, dtype=np.int64).reshape(1, 16)), c(np.int64([0])), seq, c(np.int64([1])))
    pos = g.op("Gather", c(np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)), pos_ids, axis=0)
    norm = g.op("LayerNormalization", g.op("Add", tok, pos), c(np.ones(8, np.float32)), c(np.zeros(8, np.float32)), axis=-1)
    y = g.op("Add", norm, bias)
    g.set_outputs([y, g.op("Greater", y, c(np.float32(0)))])
    return g


def _inputs(b=2, s=5, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"ids": rng.integers(0, 50, (b, s)), "bias": rng.standard_normal((b, 1, 8)).astype(np.float32)}


def _savez(path, **arrays):
    np.savez(path, **arrays)
    return path


def _raw(folder, *args, env=None, cwd=None):
    """The runner as a process (under qemu for a foreign architecture)."""
    return subprocess.run(native.runner_command(folder) + [str(a) for a in args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _runner_or_skip(arch):
    try:
        return native.build_runner(arch)
    except native.NativeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def x86(tmp_path_factory):
    """The test graph compiled for x86 by optc, with the x86_64 runner shipped beside it."""
    if native.host_arch() != "x86_64":
        pytest.skip("the x86_64 runner runs on an x86_64 host")
    _runner_or_skip("x86_64")
    graph = _graph()
    folder = write_artifact(build(graph, "x86"), tmp_path_factory.mktemp("x86") / "m.optc")
    assert native.ship_runtime("x86_64", folder) == ["optc-run", "libtvm_runtime.so", "libtvm_ffi.so", "libtvm_runtime_extra.so"]
    return folder, graph


def test_runs_and_matches_the_reference_and_the_python_runtime(x86, tmp_path):
    folder, graph = x86
    feeds = _inputs()
    out = tmp_path / "out.npz"
    res = native.run_native(folder, _savez(tmp_path / "in.npz", **feeds), out)
    assert res.stdout == ""
    got = np.load(out)
    assert sorted(got.files) == sorted(s.name for s in graph.outputs)
    ref = optc.run_reference(graph, feeds)
    py = optc.load(folder).run(feeds)
    y, flag = (v.name for v in graph.outputs)
    assert got[y].dtype == np.float32 and got[y].shape == (2, 5, 8)
    np.testing.assert_allclose(got[y], ref[y], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[y], py[y])
    assert got[flag].dtype == np.bool_
    np.testing.assert_array_equal(got[flag], py[flag])
    with zipfile.ZipFile(out) as zf:  # stored, CRCs right (testzip reads and checks every member)
        assert zf.testzip() is None and all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    assert set(optc.load_inputs(out)) == set(got.files)  # optc's own strict .npz reader takes it


def test_npy_inputs_any_byte_order_and_layout(x86, tmp_path):
    folder, graph = x86
    feeds = _inputs(b=3, s=4, seed=1)
    np.save(tmp_path / "ids.npy", np.asfortranarray(feeds["ids"]).astype(">i8"))  # big-endian, Fortran order
    np.save(tmp_path / "bias.npy", feeds["bias"])
    native.run_native(folder, {"ids": tmp_path / "ids.npy", "bias": tmp_path / "bias.npy"}, tmp_path / "o.npz")
    y = graph.outputs[0].name
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")[y], optc.load(folder).run(feeds)[y])


def test_without_outputs_file_prints_shapes(x86, tmp_path):
    folder, graph = x86
    res = native.run_native(folder, _savez(tmp_path / "in.npz", **_inputs(b=1, s=3)))
    y, flag = (v.name for v in graph.outputs)
    assert res.stdout.splitlines() == [f"{y}: f32 [1, 3, 8]", f"{flag}: bool [1, 3, 8]"]


def test_repeat_prints_timings(x86, tmp_path):
    folder, _ = x86
    res = native.run_native(folder, _savez(tmp_path / "in.npz", **_inputs()), tmp_path / "o.npz",
                            ["--repeat", "7", "--warmup", "2", "--threads", "1"])
    m = re.search(r"optc-run: 7 runs \(warmup 2, threads 1\): median ([\d.]+) ms, min ([\d.]+) ms, p90 ([\d.]+) ms",
                  res.stdout)
    assert m, res.stdout
    median, low, p90 = map(float, m.groups())
    assert 0 < low <= median <= p90


def test_signature_and_help(x86):
    folder, _ = x86
    import json

    r = _raw(folder, "--signature")
    assert r.returncode == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert json.loads(r.stdout) == {k: manifest[k] for k in json.loads(r.stdout)}
    r = _raw(folder, "--help")
    assert r.returncode == 0 and "usage: optc-run" in r.stdout and "--repeat" in r.stdout


def _python_message(folder, feeds):
    try:
        optc.load(folder).run(feeds)
    except optc.OptcError as e:
        return str(e)
    return None


# (name, feeds, the start of the message, the Python runtime gives the same message)
BAD_FEEDS = [
    ("unknown name", lambda f: {"ids": f["ids"], "bia": f["bias"]},
     "missing input(s) 'bias'; unexpected input(s) 'bia' (the graph takes 'ids', 'bias')", True),
    ("wrong dtype", lambda f: {"ids": f["ids"].astype(np.int32), "bias": f["bias"]},
     "input 'ids': expected element type i64, got i32", False),
    ("wrong static dim", lambda f: {"ids": f["ids"], "bias": np.zeros((2, 1, 7), np.float32)},
     "input 'bias': dim 2 must be 8", True),
    ("wrong rank", lambda f: {"ids": f["ids"][0], "bias": f["bias"]}, "input 'ids': expected rank 2", True),
    ("inconsistent symbolic dim", lambda f: {"ids": f["ids"], "bias": np.zeros((3, 1, 8), np.float32)},
     "input 'bias': dim 0 is 'b'=3, but input 'ids' bound 'b'=2", True),
    ("zero-size symbolic dim", lambda f: {"ids": np.zeros((2, 0), np.int64), "bias": f["bias"]},
     "input 'ids': dim 1 (s) is 0", True),
    ("assumption", lambda f: {"ids": np.zeros((2, 17), np.int64), "bias": f["bias"]},
     "inputs bind b=2, s=17, but the compiled model needs s <= 16 (slice end of node slice)", True),
]


@pytest.mark.parametrize("name,make,message,same", BAD_FEEDS, ids=[c[0] for c in BAD_FEEDS])
def test_bad_inputs_one_line_exit_2(x86, tmp_path, name, make, message, same):
    folder, _ = x86
    feeds = make(_inputs())
    r = _raw(folder, _savez(tmp_path / "in.npz", **feeds), "-o", tmp_path / "o.npz")
    assert r.returncode == 2 and ERROR_LINE.match(r.stderr), r.stderr
    got = r.stderr[len("optc-run: error: "):].strip()
    assert got.startswith(message), got
    if same:
        assert got == _python_message(folder, feeds)
    assert not (tmp_path / "o.npz").exists() and os.listdir(tmp_path) == ["in.npz"]  # nothing written, no temp


def _compressed(tmp_path):
    np.savez_compressed(tmp_path / "c.npz", **_inputs())
    return tmp_path / "c.npz"


def _truncated(tmp_path):
    data = _savez(tmp_path / "t.npz", **_inputs()).read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    return tmp_path / "t.npz"


def _folder(path):
    path.mkdir()
    return path


def _npy_as_npz(tmp_path):
    np.save(tmp_path / "x.npy", _inputs()["ids"])
    return tmp_path / "x.npy"


BAD_FILES = [
    ("compressed npz", lambda p: [_compressed(p)], "is compressed (numpy.savez_compressed)"),
    ("missing file", lambda p: [p / "nope.npz"], "no such file"),
    ("truncated npz", lambda p: [_truncated(p)], "not an .npz file"),
    ("a .npy given as the .npz", lambda p: [_npy_as_npz(p)], "not an .npz file (a .npy file"),
    ("missing .npy", lambda p: ["ids=" + str(p / "ids.npy")], "no such file"),
    ("bad option", lambda p: ["--repeats", "3"], "unknown option '--repeats'"),
    ("bad repeat", lambda p: ["--repeat", "0"], "--repeat must be an integer in 1..1000000"),
    ("bad threads", lambda p: ["--threads", "100000"], "--threads must be an integer in 1.."),
    ("bad output suffix", lambda p: [_savez(p / "in.npz", **_inputs()), "-o", p / "out.txt"], "must end in .npz"),
    ("output is a folder", lambda p: [_savez(p / "in.npz", **_inputs()), "-o", _folder(p / "o.npz")], "is a folder"),
    ("no model", lambda p: ["--model", p / "none.so"], "no such compiled library"),
    ("not a model", lambda p: ["--model", _savez(p / "in.npz", **_inputs())], "cannot load the compiled library"),
]


@pytest.mark.parametrize("name,make,fragment", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_and_usage_one_line_exit_2(x86, tmp_path, name, make, fragment):
    folder, _ = x86
    r = _raw(folder, *make(tmp_path))
    assert r.returncode == 2 and ERROR_LINE.match(r.stderr), r.stderr
    assert fragment in r.stderr, r.stderr


def _mutations(valid: bytes, cases: int, seed: int, head: int):
    """Seeded byte flips (mostly in the first ``head`` and the last 300 bytes, where the zip
    records and .npy headers are) and truncations of ``valid``."""
    rng = np.random.default_rng(seed)
    for case in range(cases):
        data = bytearray(valid)
        if case % 4 == 3:
            yield case, bytes(data[: int(rng.integers(0, len(data)))])
            continue
        for _ in range(int(rng.integers(1, 6))):
            r = rng.random()
            pos = int(rng.integers(0, head)) if r < 0.6 else \
                int(rng.integers(max(0, len(data) - 300), len(data))) if r < 0.8 else int(rng.integers(0, len(data)))
            data[pos] = int(rng.integers(0, 256)) if rng.random() < 0.5 else ord(rng.choice(list("0123456789(),' <>|:TF")))
        yield case, bytes(data)


def test_mutated_inputs_never_crash(x86, tmp_path):
    """Mutated .npz and .npy files: the runner exits 0, or 1/2 with one error line, never by a
    signal and never with a message that is not valid UTF-8 (names come from the file)."""
    folder, _ = x86
    feeds = _inputs()
    valid_npz = _savez(tmp_path / "valid.npz", **feeds).read_bytes()
    np.save(tmp_path / "ids.npy", feeds["ids"])
    np.save(tmp_path / "bias.npy", feeds["bias"])
    valid_npy = (tmp_path / "ids.npy").read_bytes()
    runs = [(valid_npz, 0, 200, lambda p: [p]), (valid_npy, 1, 128, lambda p: [f"ids={p}", f"bias={tmp_path / 'bias.npy'}"])]
    for valid, seed, head, args in runs:
        for case, data in _mutations(valid, 60, seed, head):
            (tmp_path / "m.bin").write_bytes(data)
            r = _raw(folder, *args(tmp_path / "m.bin"), "-o", tmp_path / "o.npz")
            assert r.returncode in (0, 1, 2), f"seed {seed} case {case}: exit {r.returncode} {r.stderr[-300:]}"
            assert r.returncode == 0 or ERROR_LINE.match(r.stderr), f"seed {seed} case {case}: {r.stderr!r}"


def test_module_check_error_one_line_exit_1(x86, tmp_path):
    folder, _ = x86
    feeds = _inputs()
    feeds["ids"][1, 2] = 50  # past the 50-row table: the compiled module's own check refuses it
    r = _raw(folder, _savez(tmp_path / "in.npz", **feeds), "-o", tmp_path / "o.npz")
    assert r.returncode == 1 and r.stderr == f"optc-run: error: {GATHER_ERROR}\n"
    assert _python_message(folder, feeds) == GATHER_ERROR
    with pytest.raises(native.NativeRunError, match=re.escape(GATHER_ERROR)) as e:
        native.run_native(folder, tmp_path / "in.npz")
    assert e.value.status == 1
    assert not (tmp_path / "o.npz").exists()


def test_output_replaced_atomically(x86, tmp_path):
    folder, graph = x86
    out = tmp_path / "o.npz"
    out.write_bytes(b"old")
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: its temp is a killed run's, removed by the next write
    (tmp_path / f".o.npz.optc-run-{dead.pid}.tmp").write_bytes(b"partial")
    (tmp_path / ".other.npz.optc-run-1.tmp").write_bytes(b"another destination's: kept")
    native.run_native(folder, _savez(tmp_path / "in.npz", **_inputs()), out)
    assert np.load(out)[graph.outputs[0].name].shape == (2, 5, 8)
    assert sorted(os.listdir(tmp_path)) == [".other.npz.optc-run-1.tmp", "in.npz", "o.npz"]


def test_low_precision_types_in_their_storage_form(tmp_path):
    """Types numpy lacks go in and out as the module holds them (uint8 bit patterns for fp8,
    uint16 for bf16, int8/uint8 values for i4/u4); ml_dtypes arrays saved by numpy (void
    elements) are accepted too; a sub-byte value out of range is refused."""
    import ml_dtypes

    _runner_or_skip("x86_64")
    g = Graph("lowp")
    a = g.add_input("a", TensorType(DType.FLOAT8E4M3FN, (2, 3)))
    b = g.add_input("b", TensorType(DType.INT4, (4,)))
    c = g.add_input("c", TensorType(DType.BFLOAT16, (3,)))
    d = g.add_input("d", TensorType(DType.FLOAT32, (3,)))
    f32 = [g.op("Cast", v, to=DType.FLOAT32) for v in (a, b, c)]
    g.set_outputs([g.op("Add", f32[0], f32[2]), f32[1], g.op("Cast", d, to=DType.FLOAT8E5M2),
                   g.op("Cast", d, to=DType.UINT4), g.op("Cast", d, to=DType.BFLOAT16)])
    folder = write_artifact(build(g, "x86"), tmp_path / "lowp.optc")
    native.ship_runtime("x86_64", folder)
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((2, 3)).astype(ml_dtypes.float8_e4m3fn), "b": np.array([-8, -1, 3, 7], ml_dtypes.int4),
             "c": rng.standard_normal(3).astype(ml_dtypes.bfloat16), "d": np.float32([0.3, 5.5, -2.25])}
    want = optc.load(folder).run(feeds)
    stored = {"a": feeds["a"].view(np.uint8), "b": feeds["b"].astype(np.int8), "c": feeds["c"].view(np.uint16), "d": feeds["d"]}
    for name, given in (("stored", stored), ("ml_dtypes", feeds)):
        native.run_native(folder, _savez(tmp_path / f"{name}.npz", **given), tmp_path / "o.npz")
        got = np.load(tmp_path / "o.npz")
        y, b32, e5m2, u4, bf16 = (v.name for v in g.outputs)
        assert (got[e5m2].dtype, got[u4].dtype, got[bf16].dtype) == (np.uint8, np.uint8, np.uint16)
        np.testing.assert_array_equal(got[y], want[y])
        np.testing.assert_array_equal(got[b32], want[b32])
        np.testing.assert_array_equal(got[e5m2].view(ml_dtypes.float8_e5m2), want[e5m2])
        np.testing.assert_array_equal(got[u4], want[u4].astype(np.uint8))
        np.testing.assert_array_equal(got[bf16].view(ml_dtypes.bfloat16), want[bf16])
    bad = dict(stored, b=np.int8([0, 9, 0, 0]))
    with pytest.raises(native.NativeRunError, match=r"^input 'b': element type i4 holds -8..7, got 9 at flat index 1$"):
        native.run_native(folder, _savez(tmp_path / "bad.npz", **bad))
    bad = dict(stored, a=feeds["a"].astype(np.float32))
    with pytest.raises(native.NativeRunError, match=r"input 'a': expected element type f8e4m3fn \(give its bit patterns "
                                                     r"as uint8\), got f32"):
        native.run_native(folder, _savez(tmp_path / "bad.npz", **bad))


def _loaded_libs(stderr: str) -> list[str]:
    """The libraries the dynamic loader initialized (``LD_DEBUG=libs``)."""
    return re.findall(r"calling init: (\S+)", stderr)


def _copy_folder(folder, dest):
    dest.mkdir()
    for name in ["optc-run", *native.RUNTIME_LIBS, "model.so"]:
        shutil.copy2(folder / name, dest / name)
    return dest


def test_copied_folder_runs_alone(x86, tmp_path):
    """Only the folder is needed: a copy runs from anywhere with an empty environment, and loads
    the TVM runtime from itself, not from site-packages."""
    folder, graph = x86
    copy = _copy_folder(folder, tmp_path / "board")
    inp = _savez(tmp_path / "in.npz", **_inputs())
    r = subprocess.run([str(copy / "optc-run"), str(inp), "-o", str(tmp_path / "o.npz")], capture_output=True,
                       text=True, env={"LD_DEBUG": "libs"}, cwd="/")
    assert r.returncode == 0, r.stderr
    tvm_libs = [p for p in _loaded_libs(r.stderr) if "tvm" in p]
    assert sorted(os.path.basename(p) for p in tvm_libs) == sorted(native.RUNTIME_LIBS)
    assert all(os.path.dirname(os.path.realpath(p)) == str(copy.resolve()) for p in tvm_libs), tvm_libs
    y = graph.outputs[0].name
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")[y], optc.load(folder).run(_inputs())[y])


def test_runner_is_cached_and_small():
    first = native.build_runner("x86_64") if shutil.which("g++") else pytest.skip("g++ is not installed")
    stamp = first.stat().st_mtime_ns
    assert native.build_runner("x86_64") == first and first.stat().st_mtime_ns == stamp
    assert native.elf_arch(first) == "x86_64" and first.stat().st_size < 1 << 20
    needed = subprocess.run(["readelf", "-d", str(first)], capture_output=True, text=True).stdout
    assert "libtvm_runtime.so" in needed and "libtvm_ffi.so" in needed and "$ORIGIN" in needed


def test_toolchain_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(native.ARCHES, "aarch64", ("no-such-aarch64-g++",) + native.ARCHES["aarch64"][1:])
    with pytest.raises(native.NativeError, match=r"no-such-aarch64-g\+\+, which is not installed "
                                                 r"\(Debian/Ubuntu: apt-get install g\+\+-aarch64-linux-gnu\)"):
        native.compiler("arm64")
    with pytest.raises(native.NativeError, match="no native runner"):
        native.run_native(tmp_path, None)
    with pytest.raises(native.NativeError, match="no native runner for architecture 'riscv64'"):
        native.runtime_libs("riscv64")


def test_offline_fetch_names_the_command(monkeypatch, tmp_path):
    foreign = "aarch64" if native.host_arch() == "x86_64" else "x86_64"
    monkeypatch.setenv("OPTC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPTC_WHEEL_DIR", raising=False)
    for var, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1"}.items():
        monkeypatch.setenv(var, value)  # offline: nothing listens on port 9
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(native.NativeError) as e:
        native.runtime_libs(foreign)
    msg = str(e.value)
    assert "\n" not in msg and f"python -m optc.native fetch {foreign}" in msg
    assert f"pip download --disable-pip-version-check --no-deps --only-binary=:all: --platform manylinux_2_28_{foreign}" in msg
    assert not any((tmp_path / "cache" / "tvm-runtime").iterdir())  # no half entry left behind
    with pytest.raises(native.NativeError, match=f"python -m optc.native fetch {foreign}"):
        native.runtime_libs(foreign, fetch=False)


# -- aarch64, under qemu-aarch64 ----------------------------------------------------------------------
def _arm64_tools_or_skip():
    missing = [t for t in ("aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install g++-aarch64-linux-gnu qemu-user)")
    try:
        native.runtime_libs("aarch64")
    except native.NativeError as e:
        pytest.skip(f"the aarch64 TVM runtime is not available: {e}")
    _runner_or_skip("aarch64")


def _aarch64_model(path, graph_inputs=("x", "w")):
    """A model.so for aarch64 built with plain TVM (not through an optc target) carrying an
    optc signature the way ``codegen.build.embed_signature`` embeds it."""
    import tvm
    from tvm.script import relax as R
    from tvm.support import cc

    from optc.codegen.build import embed_signature
    from optc.codegen.signature import Signature, TensorSpec

    @tvm.script.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor(("n", 4), "float32"), w: R.Tensor((4, 3), "float32")):
            with R.dataflow():
                y = R.matmul(x, w)
                z = R.nn.relu(y)
                R.output(y, z)
            return (y, z)

    f32 = DType.FLOAT32
    sig = Signature([TensorSpec("x", f32, ("n", 4)), TensorSpec("w", f32, (4, 3))],
                    [TensorSpec("y", f32, ("n", 3)), TensorSpec("z", f32, ("n", 3))], [],
                    {"name": "arm64", "kind": "cpu", "arch": "aarch64", "features": ["asimd", "fp"]}, True)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    ex = tvm.compile(embed_signature(Mod, sig), target)
    ex.export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    return path


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    _arm64_tools_or_skip()
    folder = tmp_path_factory.mktemp("arm") / "m.optc"
    folder.mkdir()
    _aarch64_model(folder / "model.so")
    assert native.elf_arch(folder / "model.so") == "aarch64"
    assert native.ship_runtime("arm64", folder) == ["optc-run", "libtvm_runtime.so", "libtvm_ffi.so", "libtvm_runtime_extra.so"]
    assert all(native.elf_arch(folder / n) == "aarch64" for n in ("optc-run", "libtvm_runtime.so", "libtvm_ffi.so"))
    return folder


@pytest.mark.arm64
def test_aarch64_runner_under_qemu(arm, tmp_path):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    res = native.run_native(arm, _savez(tmp_path / "in.npz", x=x, w=w), tmp_path / "o.npz", ["--repeat", "3"])
    assert "qemu-aarch64" in res.command[0] and "optc-run: 3 runs" in res.stdout
    got = np.load(tmp_path / "o.npz")
    np.testing.assert_allclose(got["y"], x @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["z"], np.maximum(x @ w, 0), rtol=1e-5, atol=1e-5)
    with pytest.raises(native.NativeRunError, match=r"input 'w': dim 1 must be 3") as e:
        native.run_native(arm, _savez(tmp_path / "bad.npz", x=x, w=np.zeros((4, 2), np.float32)))
    assert e.value.status == 2


@pytest.mark.arm64
def test_aarch64_copied_folder_runs_alone(arm, tmp_path):
    copy = _copy_folder(arm, tmp_path / "board")
    x, w = np.ones((2, 4), np.float32), np.eye(4, 3, dtype=np.float32)
    inp = _savez(tmp_path / "in.npz", x=x, w=w)
    cmd = native.runner_command(copy) + [str(inp), "-o", str(tmp_path / "o.npz")]
    r = subprocess.run(cmd, capture_output=True, text=True, env={"LD_DEBUG": "libs"}, cwd="/", timeout=300)
    assert r.returncode == 0, r.stderr
    tvm_libs = [p for p in _loaded_libs(r.stderr) if "tvm" in p]
    assert sorted(os.path.basename(p) for p in tvm_libs) == sorted(native.RUNTIME_LIBS)
    assert all(os.path.dirname(os.path.realpath(p)) == str(copy.resolve()) for p in tvm_libs), tvm_libs
    np.testing.assert_array_equal(np.load(tmp_path / "o.npz")["y"], x @ w)


@pytest.mark.arm64
def test_aarch64_optc_build_and_its_checks(tmp_path):
    """The test graph compiled by optc's own arm64 target (when this optc has one): same numbers
    as the reference, and the module's run-time check fails with exit 1 under qemu."""
    _arm64_tools_or_skip()
    graph = _graph()
    try:
        compiled = build(graph, "arm64")
    except optc.OptcError as e:
        pytest.skip(f"optc cannot build for arm64 here: {e}")
    folder = write_artifact(compiled, tmp_path / "m.optc")
    native.ship_runtime("aarch64", folder)
    feeds = _inputs()
    native.run_native(folder, _savez(tmp_path / "in.npz", **feeds), tmp_path / "o.npz")
    ref = optc.run_reference(graph, feeds)
    got = np.load(tmp_path / "o.npz")
    y, flag = (v.name for v in graph.outputs)
    np.testing.assert_allclose(got[y], ref[y], rtol=1e-5, atol=1e-5)
    assert got[flag].dtype == np.bool_
    feeds["ids"][0, 0] = -51
    r = _raw(folder, _savez(tmp_path / "bad.npz", **feeds))
    assert r.returncode == 1 and r.stderr == f"optc-run: error: {GATHER_ERROR}\n"


@pytest.mark.arm64
def test_x86_runner_refuses_an_aarch64_model(x86, arm):
    folder, _ = x86
    r = _raw(folder, "--model", arm / "model.so")
    assert r.returncode == 2 and ERROR_LINE.match(r.stderr) and "cannot load the compiled library" in r.stderr
