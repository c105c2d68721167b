"""Kernel tuning (``codegen/tuning``, ``optc tune``): MetaSchedule against the default schedules,
the persistent database, resuming, and the size dispatch that applies tuned kernels.

MetaSchedule is slow here (its first task in a process spends ~30 s importing TVM's tensor
intrinsics), so everything runs on one two-layer MLP with a symbolic batch, at 2 trials per
kernel, tuned once per module. Where a test needs a tuned kernel to be kept whatever the timings
say, it passes ``min_gain=-inf`` (keep any correct candidate): the numbers are then about the
mechanism, not about which schedule is faster on a noisy machine.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tvm

from optc.cli import main
from optc.codegen.build import build
from optc.codegen.tuning import TuneOptions, TuningDatabase, tune
from optc.ir import DType, Graph, TensorType
from optc.ir.interpreter import run
from optc.targets import get_target
from optc.tuning import parse_buckets, parse_duration

F32 = DType.FLOAT32
BUCKET = {"batch": 4}


def _mlp() -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("mlp")
    x = g.add_input("x", TensorType(F32, ("batch", 64)))
    h = g.op("Relu", g.op("Add", g.op("MatMul", x, g.add_constant(rng.standard_normal((64, 96)).astype(np.float32))),
                          g.add_constant(rng.standard_normal(96).astype(np.float32))))
    g.set_outputs([g.op("MatMul", h, g.add_constant(rng.standard_normal((96, 32)).astype(np.float32)))])
    return g


def _options(**kw) -> TuneOptions:
    base = dict(trials=2, buckets=[BUCKET], min_gain=-math.inf, min_kernel_us=0.0, rounds=2)
    base.update(kw)
    return TuneOptions(**base)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The MLP tuned once into a fresh database: (graph, target, db folder, report)."""
    db = tmp_path_factory.mktemp("tuning") / "db"
    g, target = _mlp(), get_target("x86")
    return g, target, db, tune(g, target, db, _options(), say=lambda _line: None)


def test_parse_buckets_and_durations():
    assert parse_buckets("seq=64,32 batch=1", ["batch", "seq"]) == [{"batch": 1, "seq": 32}, {"batch": 1, "seq": 64}]
    assert parse_buckets(None, ["batch_size", "seq"]) == [{"batch_size": 1, "seq": 128}]
    assert parse_buckets(None, []) == [{}]
    assert [parse_duration(t) for t in ("90", "90s", "20m", "1.5h")] == [90.0, 90.0, 1200.0, 5400.0]
    for bad in ("-3m", "soon", "0"):
        with pytest.raises(Exception, match="--time-budget must be a positive duration"):
            parse_duration(bad)
    with pytest.raises(Exception, match="no symbolic dim 'len'"):
        parse_buckets("len=8", ["batch", "seq"])
    with pytest.raises(Exception, match="NAME=SIZE"):
        parse_buckets("seq=0", ["seq"])


def test_every_kernel_gets_a_measured_verdict_and_the_records_reload(tuned):
    g, target, db_dir, report = tuned
    assert report.tuned_now == len(report.kernels) >= 2 and report.skipped == 0 and report.pending == 0
    for e in report.kernels:
        assert e.default_us > 0 and e.bucket == "batch=4" and 1 <= e.trials <= 2 and e.budget == 2
        assert e.choice == "tuned" and e.tuned_us > 0, e  # min_gain=-inf keeps every correct candidate
    db = TuningDatabase(db_dir, target)
    assert db.tuned_count() == len(report.kernels) == len(db.records().get_all_tuning_records())
    saved = json.loads((db.dir / "kernels.json").read_text())
    assert saved["target"]["name"] == "x86" and set(saved["kernels"]) == {e.key for e in report.kernels}


def test_a_repeat_tune_finds_everything_tuned(tuned):
    g, target, db_dir, first = tuned
    again = tune(g, target, db_dir, _options(), say=lambda _line: None)
    assert again.tuned_now == 0 and again.skipped == len(first.kernels)
    assert {e.key: e.tuned_us for e in again.kernels} == {e.key: e.tuned_us for e in first.kernels}


def test_a_killed_tune_resumes_with_the_kernels_it_had_not_finished(tmp_path):
    g, target = _mlp(), get_target("x86")
    lines = []

    def kill_after_first(line):
        lines.append(line)
        if line.startswith("[1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(g, target, tmp_path / "db", _options(), say=kill_after_first)
    assert len(TuningDatabase(tmp_path / "db", target).kernels) == 1
    resumed = tune(g, target, tmp_path / "db", _options(), say=lines.append)
    assert resumed.skipped == 1 and resumed.tuned_now == len(resumed.kernels) - 1 >= 1


def test_a_tuned_kernel_that_disagrees_with_the_default_is_not_kept(tmp_path, monkeypatch):
    from optc.codegen.tuning import tuner

    monkeypatch.setattr(tuner, "outputs_match", lambda a, b: "buffer 2 differs by 1")
    report = tune(_mlp(), get_target("x86"), tmp_path / "db", _options(), say=lambda _line: None)
    assert all(e.choice == "default" and "disagrees" in e.note for e in report.kernels)
    assert TuningDatabase(tmp_path / "db", get_target("x86")).tuned_count() == 0


def test_compile_with_the_database_dispatches_the_tuned_bucket(tuned):
    """The bucket's sizes run the static function with the tuned kernels, other sizes the
    general one; both match the reference interpreter."""
    from tvm import relax

    g, target, db_dir, report = tuned
    cm = build(g, target, tuning=TuningDatabase(db_dir, target))
    assert cm.buckets == [BUCKET] and len(cm.tuned) == len(report.kernels)
    model = cm.load()
    vm = relax.VirtualMachine(cm.executable, tvm.cpu())
    for batch, via_bucket in ((4, True), (3, False), (1, False)):
        feed = {"x": np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)}
        out = g.output_names()[0]
        np.testing.assert_allclose(model.run(feed)[out], run(g, feed)[out], rtol=1e-4, atol=1e-4)
        called = set()
        vm.set_instrument(lambda func, name, before, ret, *args: called.add(str(name)) or 0)
        vm["main"](tvm.runtime.tensor(feed["x"]))
        assert bool(called & set(cm.tuned)) == via_bucket, (batch, sorted(called))


def test_cli_tune_and_compile(tuned, tmp_path, capsys):
    g, target, db_dir, report = tuned
    from optc.api import save_model

    model = save_model(g, tmp_path / "mlp.optc-ir")
    assert main(["tune", str(model), "--db", str(db_dir), "--trials", "2", "--buckets", "batch=4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tuned_now"] == 0 and out["skipped"] == len(report.kernels), out
    art = tmp_path / "art"
    assert main(["compile", str(model), "--tuning-db", str(db_dir), "-o", str(art)]) == 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["build"]["buckets"] == [BUCKET] and len(manifest["build"]["tuned"]) == len(report.kernels)


@pytest.mark.parametrize("args, msg", [
    (["--time-budget", "soon"], "--time-budget must be a positive duration"),
    (["--buckets", "seq=8"], "no symbolic dim 'seq'"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--target", "arm64"], "cannot tune for arm64 here"),
])
def test_cli_tune_bad_requests_are_one_line(tmp_path, capsys, args, msg):
    from optc.api import save_model

    model = save_model(_mlp(), tmp_path / "mlp.optc-ir")
    assert main(["tune", str(model), "--db", str(tmp_path / "db"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "db").exists()


def test_compile_with_a_missing_tuning_database_is_one_line(tmp_path, capsys):
    from optc.api import save_model

    model = save_model(_mlp(), tmp_path / "mlp.optc-ir")
    assert main(["compile", str(model), "--tuning-db", str(tmp_path / "nothing"), "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "tuning database" in err and "does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a").exists()


# -- timing on a board over TVM's RPC: the host's optc-run server behind TVM's tracker, on loopback
from test_remote_bench import _eventually, _wait_registered, tracker  # noqa: E402,F401  (the tracker fixture)


def test_tune_through_an_rpc_tracker_times_on_the_board(tmp_path, tracker, capsys):  # noqa: F811
    from optc import native
    from optc.api import save_model

    if native.host_arch() != "x86_64":
        pytest.skip("the x86_64 runner serves on an x86_64 host")
    try:
        native.build_runner("x86_64")
    except native.NativeError as e:
        pytest.skip(str(e))
    model = save_model(_mlp(), tmp_path / "mlp.optc-ir")
    art = tmp_path / "art"
    assert main(["compile", str(model), "-o", str(art)]) == 0
    native.ship_runtime("x86_64", art)
    with native.start_rpc_server(art, extra_args=["--tracker", tracker, "--key", "optc-tune"]) as srv:
        _wait_registered(tracker, "optc-tune")
        capsys.readouterr()
        assert main(["tune", str(model), "--db", str(tmp_path / "db"), "--trials", "1", "--buckets", "batch=4",
                     "--rpc-tracker", tracker, "--rpc-key", "optc-tune", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["tuned_now"] == len(out["kernels"]) >= 2
        assert all(k["default_us"] > 0 for k in out["kernels"])
        assert _eventually(lambda: srv.log().count("ended after") >= 1), srv.log()  # the board served the session
        assert main(["tune", str(model), "--db", str(tmp_path / "db2"), "--rpc-tracker", tracker,
                     "--rpc-key", "rk3588"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has no board registered with key 'rk3588'" in err[0], err
    assert main(["tune", str(model), "--db", str(tmp_path / "db3"), "--rpc-tracker", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "127.0.0.1:1" in err[0], err
