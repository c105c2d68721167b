"""``optc bench --remote``: timing an artifact on another machine over TVM's RPC, served by the
artifact's own runner (``optc-run --rpc-server``, no Python on the board), directly or through a
TVM RPC tracker; and ``optc bench`` on an arm64 artifact here, which runs under qemu-aarch64 and
says that its timings mean nothing.

The x86_64 tests (default tier) serve an x86 artifact on loopback with the x86 runner; the
``arm64`` ones serve an arm64 artifact with the aarch64 runner under qemu-aarch64. Every server
is this module's own process group, stopped in teardown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc import native
from optc.cli import main
from optc.native import remote as rn

RNG = np.random.default_rng(0)
W = RNG.standard_normal((16, 8)).astype(np.float32)
B = RNG.standard_normal(8).astype(np.float32)


def _reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W + B, 0)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path = tmp_path_factory.mktemp("model") / "mlp.onnx"
    onnx.save(m, path)
    return path


def _compile(model_file, target, folder, arch):
    """``optc compile --target T``; the runner shipped beside the model if the target does not."""
    assert main(["compile", str(model_file), "--target", target, "-o", str(folder)]) == 0
    if not (folder / native.RUNNER).is_file():
        native.ship_runtime(arch, folder)
    assert native.elf_arch(folder / "optc-run") == arch
    return folder


def _bench(capsys, *args):
    """``optc bench ...`` in this process: (status, stdout, stderr)."""
    capsys.readouterr()
    status = main(["bench", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err


def _one_error_line(err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("optc: error: ") and fragment in lines[0], err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eventually(cond, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- x86_64: the host's runner on loopback (default tier) -----------------------------------------
@pytest.fixture(scope="module")
def x86(model_file, tmp_path_factory):
    if native.host_arch() != "x86_64":
        pytest.skip("the x86_64 runner runs on an x86_64 host")
    try:
        native.build_runner("x86_64")
    except native.NativeError as e:
        pytest.skip(str(e))
    return _compile(model_file, "x86", tmp_path_factory.mktemp("x86") / "m.optc", "x86_64")


@pytest.fixture(scope="module")
def x86_server(x86, tmp_path_factory):
    work = tmp_path_factory.mktemp("rpc-work")
    with native.start_rpc_server(x86, extra_args=["--work-dir", work]) as srv:
        srv.work = work
        yield srv
    assert _gone(srv.process.pid)


def test_bench_over_loopback_json_and_text(x86, x86_server, capsys):
    status, out, err = _bench(capsys, x86, "--remote", x86_server.address, "--repeat", 3, "--dim", "n=4", "--json")
    assert status == 0, err
    r = json.loads(out)
    assert r["latency"]["optc"]["runs"] == 3 and r["latency"]["optc"]["median_ms"] > 0
    assert r["inputs"] == {"x": [4, 16]} and r["ratio_vs"] == {}
    assert r["remote"] == {"address": x86_server.address, "tracker": None, "key": None, "server": "optc-run",
                           "arch": "x86_64", "cpus": len(os.sched_getaffinity(0)), "tvm": r["remote"]["tvm"]}
    assert isinstance(r["threads"], int) and r["threads"] >= 1
    status, out, err = _bench(capsys, x86, "--remote", x86_server.address, "--repeat", 2, "--dim", "n=2",
                              "--threads", 1)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{x86}: 1 threads, inputs x[2, 16]"
    assert lines[1] == f"  on {x86_server.address} (optc-run server, x86_64, {len(os.sched_getaffinity(0))} CPUs)"
    assert lines[2].startswith("  optc         median")
    # sessions were served one after another, each in its own folder, removed when it ended
    assert _eventually(lambda: x86_server.log().count("ended after") >= 2), x86_server.log()
    assert _eventually(lambda: list(x86_server.work.iterdir()) == [])


def test_run_remote_matches_the_local_run(x86, x86_server):
    import optc

    x = RNG.standard_normal((3, 16)).astype(np.float32)
    got = native.run_remote(x86, {"x": x}, x86_server.address)
    np.testing.assert_array_equal(got["y"], optc.load(x86).run({"x": x})["y"])
    np.testing.assert_allclose(got["y"], _reference(x), rtol=1e-5, atol=1e-5)
    remote = rn.connect(x86_server.address)
    model = remote.load(x86)
    with pytest.raises(Exception, match=r"input 'x': dim 1 must be 16"):
        model.run({"x": np.zeros((2, 15), np.float32)})
    np.testing.assert_allclose(model.run({"x": x})["y"], got["y"])  # the session survives a refused input


def test_inputs_file_and_checks(x86, x86_server, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", x=np.ones((5, 16), np.float32))
    status, out, err = _bench(capsys, x86, "--remote", x86_server.address, "--inputs", tmp_path / "in.npz",
                              "--repeat", 1, "--json")
    assert status == 0, err
    assert json.loads(out)["inputs"] == {"x": [5, 16]}
    np.savez(tmp_path / "bad.npz", x=np.ones((5, 3), np.float32))
    status, out, err = _bench(capsys, x86, "--remote", x86_server.address, "--inputs", tmp_path / "bad.npz")
    assert status == 2
    _one_error_line(err, "input 'x': dim 1 must be 16")


def test_runner_json_timings(x86, tmp_path):
    """``optc-run --repeat N --json``: every run's milliseconds, what bench reads under qemu."""
    from optc import benchmark as bm

    np.savez(tmp_path / "in.npz", x=np.ones((2, 16), np.float32))
    res = native.run_native(x86, tmp_path / "in.npz", None, ["--repeat", "4", "--warmup", "0", "--json"])
    r = json.loads(res.stdout)
    assert r["runs"] == 4 and r["warmup"] == 0 and len(r["runs_ms"]) == 4 and r["median_ms"] > 0
    _, sig = bm.artifact_signature(x86)
    t = bm.emulated_timing(x86, sig, {"x": np.ones((3, 16), np.float32)}, 3, 1)
    assert t.name == "optc" and len(t.runs_ms) == 3


@pytest.mark.parametrize("value, fragment", [
    ("127.0.0.1", "--remote must be HOST:PORT"),
    ("127.0.0.1:", "--remote must be HOST:PORT"),
    ("127.0.0.1:port", "--remote must be HOST:PORT"),
    ("127.0.0.1:70000", "--remote port must be 1..65535"),
    ("no-such-host.invalid:9090", "unknown host"),
])
def test_bad_remote_values_one_line(x86, capsys, value, fragment):
    t = time.monotonic()
    status, out, err = _bench(capsys, x86, "--remote", value, "--dim", "n=2")
    assert status == 2 and out == ""
    _one_error_line(err, fragment)
    assert time.monotonic() - t < 15


def test_refused_and_misused_one_line_quickly(x86, x86_server, capsys):
    port = _free_port()  # nothing listens there now
    t = time.monotonic()
    status, _, err = _bench(capsys, x86, "--remote", f"127.0.0.1:{port}", "--dim", "n=2")
    assert status == 2 and time.monotonic() - t < 5
    _one_error_line(err, f"127.0.0.1:{port}: connection refused")
    status, _, err = _bench(capsys, x86, "--rpc-key", "board")
    assert status == 2
    _one_error_line(err, "--rpc-key goes with --remote")
    status, _, err = _bench(capsys, x86, "--remote", x86_server.address, "--compare", "onnxruntime")
    assert status == 2
    _one_error_line(err, "--compare runs the other runtimes on this machine")
    status, _, err = _bench(capsys, x86, "--remote", x86_server.address, "--threads", 4096, "--dim", "n=2")
    assert status == 2
    _one_error_line(err, "--threads must be between 1 and")


def test_silent_endpoint_times_out():
    """A port that accepts but never answers (a busy server, or not TVM): one error within the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        t = time.monotonic()
        with pytest.raises(rn.RemoteError, match=r"accepted the connection but did not answer within 0.5 s"):
            rn.connect(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
        assert time.monotonic() - t < 5


def test_server_key(x86, tmp_path, capsys):
    with native.start_rpc_server(x86, extra_args=["--key", "lab-board"]) as srv:
        status, _, err = _bench(capsys, x86, "--remote", srv.address, "--dim", "n=2")
        assert status == 2
        _one_error_line(err, "it does not serve key '' (give the server's key with --rpc-key)")
        status, out, err = _bench(capsys, x86, "--remote", srv.address, "--rpc-key", "lab-board", "--repeat", 1,
                                  "--dim", "n=1", "--json")
        assert status == 0, err
        assert json.loads(out)["remote"]["key"] == "lab-board"
        assert _eventually(lambda: "does not match" in srv.log())


def test_server_usage_errors_one_line(x86):
    cmd = native.runner_command(x86) + ["--rpc-server"]
    for args, fragment in [(["--port", "70000"], "--port must be an integer in 0..65535"),
                           (["--tracker", "127.0.0.1:1"], "--tracker needs --key"),
                           (["--work-dir", "/no/such/folder"], "--work-dir /no/such/folder: no such folder"),
                           (["--bogus"], "unknown or misplaced argument '--bogus'")]:
        r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr == f"optc-run: error: {r.stderr.split('error: ', 1)[1]}"
        assert fragment in r.stderr and r.stderr.count("\n") == 1, r.stderr
    with native.start_rpc_server(x86) as srv:  # the port is taken: a second server on it says so
        r = subprocess.run(cmd + ["--host", "127.0.0.1", "--port", str(srv.port)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and f"cannot listen on 127.0.0.1:{srv.port}" in r.stderr


def test_stop_ends_a_running_session(x86):
    """Killing the server while a client holds a session ends both, leaving no process behind."""
    srv = native.start_rpc_server(x86)
    try:
        remote = rn.connect(srv.address)
        remote.load(x86)
        assert _eventually(lambda: "session from" in srv.log())
    finally:
        srv.stop()
    assert srv.process.returncode == 0 and _gone(srv.process.pid)


# -- through a TVM RPC tracker ----------------------------------------------------------------------
# What `python -m tvm.exec.rpc_tracker` runs, in one process (it starts a second one) and without
# importing torch (tvm_ffi imports it when installed): seconds less to start.
TRACKER = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".", 1)[0] in ("torch", "torch_c_dlpack_ext"):
            raise ImportError(name)
sys.meta_path.insert(0, NoTorch())
from tvm.rpc.tracker import PopenTrackerServerState
host, port = sys.argv[1], int(sys.argv[2])
PopenTrackerServerState(host, port, port + 1, silent=True).thread.join()
"""


@pytest.fixture
def tracker():
    """TVM's own tracker on loopback: ``HOST:PORT``."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (pip install tornado)")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", TRACKER, "127.0.0.1", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                kind, sock = rn.probe("127.0.0.1", port, timeout=5)
                sock.close()
                assert kind == "tracker"
                break
            except rn.RemoteError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("TVM's RPC tracker did not start")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        if proc.poll() is None:  # not reaped: its process group is still this one's
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _wait_registered(address: str, key: str, timeout: float = 30) -> None:
    host, port = rn.parse_address(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kind, sock = rn.probe(host, port)
        try:
            rn._send_json(sock, [rn.TRACKER_SUMMARY])
            info = rn._recv_json(sock)[1]
        finally:
            sock.close()
        if any(s.get("key") == f"server:{key}" for s in info["server_info"]) and info["queue_info"].get(key, {}).get("free"):
            return
        time.sleep(0.1)
    raise AssertionError(f"no server registered as {key!r} at the tracker {address}")


def test_bench_through_a_tracker(x86, tracker, capsys):
    where = tracker
    with native.start_rpc_server(x86, extra_args=["--tracker", where, "--key", "optc-x86"]) as srv:
        _wait_registered(where, "optc-x86")
        for _ in range(2):  # the server offers itself again after each session
            status, out, err = _bench(capsys, x86, "--remote", where, "--rpc-key", "optc-x86", "--repeat", 3,
                                      "--dim", "n=2", "--json")
            assert status == 0, err + srv.log()
            r = json.loads(out)
            assert r["latency"]["optc"]["runs"] == 3
            assert r["remote"]["tracker"] == where and r["remote"]["key"] == "optc-x86"
            assert r["remote"]["address"] == srv.address and r["remote"]["server"] == "optc-run"
            _wait_registered(where, "optc-x86")
        t = time.monotonic()
        status, _, err = _bench(capsys, x86, "--remote", where, "--rpc-key", "rk3588", "--dim", "n=2")
        assert status == 2 and time.monotonic() - t < 5
        _one_error_line(err, f"tracker {where} has no board registered with key 'rk3588' (registered: 'optc-x86')")
        status, _, err = _bench(capsys, x86, "--remote", where, "--dim", "n=2")
        assert status == 2
        _one_error_line(err, f"{where} is a TVM RPC tracker: name the board with --rpc-key KEY")
        assert "registered with the tracker" in srv.log()


# -- arm64: the aarch64 runner under qemu-aarch64 -------------------------------------------------
@pytest.fixture(scope="module")
def arm(model_file, tmp_path_factory):
    missing = [t for t in ("aarch64-linux-gnu-g++", "qemu-aarch64") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install g++-aarch64-linux-gnu qemu-user)")
    try:
        native.runtime_libs("aarch64")
        native.build_runner("aarch64")
    except native.NativeError as e:
        pytest.skip(str(e))
    return _compile(model_file, "arm64", tmp_path_factory.mktemp("arm") / "m.optc", "aarch64")


@pytest.mark.arm64
def test_arm64_bench_over_rpc_under_qemu(arm, capsys):
    with native.start_rpc_server(arm) as srv:
        assert "aarch64" in srv.banner and "qemu-aarch64" in srv.command[0]
        status, out, err = _bench(capsys, arm, "--remote", srv.address, "--repeat", 3, "--dim", "n=4", "--json")
        assert status == 0, err + srv.log()
        r = json.loads(out)
        assert r["latency"]["optc"]["runs"] == 3 and r["inputs"] == {"x": [4, 16]}
        assert r["remote"]["arch"] == "aarch64" and r["remote"]["server"] == "optc-run"
        x = RNG.standard_normal((5, 16)).astype(np.float32)
        got = native.run_remote(arm, {"x": x}, srv.address)
        np.testing.assert_allclose(got["y"], _reference(x), rtol=1e-5, atol=1e-5)
        assert err == ""  # no qemu warning: the timings come from the server


@pytest.mark.arm64
def test_arm64_local_bench_warns_it_is_emulated(arm, capsys):
    status, out, err = _bench(capsys, arm, "--repeat", 3, "--dim", "n=4", "--threads", 1)
    assert status == 0, err
    assert err.startswith("optc: warning: ") and err.count("\n") == 1
    assert "runs under qemu-aarch64 emulation here: these timings say nothing about a real board" in err
    assert "--remote HOST:PORT" in err
    lines = out.splitlines()
    assert lines[0] == f"{arm}: 1 threads, inputs x[4, 16]" and "qemu-aarch64 emulation" in lines[1]
    assert lines[2].startswith("  optc         median")
    status, out, err = _bench(capsys, arm, "--repeat", 2, "--dim", "n=4", "--json")
    assert status == 0 and "qemu-aarch64 emulation" in err
    r = json.loads(out)
    assert r["emulated"] == "qemu-aarch64" and r["latency"]["optc"]["runs"] == 2
    status, out, err = _bench(capsys, arm, "--compare", "onnxruntime", "--dim", "n=4")
    assert status == 2 and out == ""
    _one_error_line(err, "runs here only under qemu-aarch64 emulation, so no comparison would mean anything")


@pytest.mark.arm64
def test_arm64_artifact_on_an_x86_server_one_line(arm, x86_server, capsys):
    status, out, err = _bench(capsys, arm, "--remote", x86_server.address, "--dim", "n=2")
    assert status == 2 and out == ""
    _one_error_line(err, f"is built for arm64 (aarch64); the remote {x86_server.address} is x86_64")
