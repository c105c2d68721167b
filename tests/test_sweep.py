"""``optc sweep``: the space file, the Pareto front and its files, resuming, Ray, and the CLI.

Everything runs on a two-layer MLP (a build costs about a second), over a six-point grid of
low-rank × quantize, on random calibration and evaluation sets saved as ``.npz``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from optc.api import save_model
from optc.cli import main
from optc.ir import DType, Graph, TensorType
from optc.sweep import SpaceError, load_space, parse_space, show
from optc.sweep.run import run_sweep

SPACE = {"base": "default", "passes": {"low-rank": {"keep": ["off", 0.95, 0.6]}, "quantize": {"precision": ["off", "int8"]}}}
SPACE_TOML = """base = "default"
[passes.low-rank]
keep = ["off", 0.95, 0.6]
[passes.quantize]
precision = ["off", "int8"]
"""


def _mlp() -> Graph:
    rng = np.random.default_rng(0)
    u = rng.standard_normal((64, 8)).astype(np.float32)
    g = Graph("mlp")
    x = g.add_input("x", TensorType(DType.FLOAT32, ("batch", 64)))
    w1 = (u @ rng.standard_normal((8, 96)) + 0.05 * rng.standard_normal((64, 96))).astype(np.float32)  # nearly rank 8
    h = g.op("Relu", g.op("Add", g.op("MatMul", x, g.add_constant(w1)), g.add_constant(rng.standard_normal(96).astype(np.float32))))
    g.set_outputs([g.op("MatMul", h, g.add_constant(rng.standard_normal((96, 32)).astype(np.float32)))])
    return g


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep-files")
    rng = np.random.default_rng(1)
    model = save_model(_mlp(), d / "mlp.optc-ir")
    np.savez(d / "calib.npz", x=rng.standard_normal((32, 64)).astype(np.float32))
    np.savez(d / "eval.npz", x=rng.standard_normal((32, 64)).astype(np.float32))
    (d / "space.toml").write_text(SPACE_TOML)
    return d, model


def _inputs(path):
    from optc.calibration import InputsFile

    return InputsFile(str(path), None, 128, 8, flag="--eval")


@pytest.fixture(scope="module")
def serial(files, tmp_path_factory):
    d, model = files
    run = tmp_path_factory.mktemp("runs") / "serial"
    report = run_sweep(model, d / "space.toml", run, calibration=_inputs(d / "calib.npz"),
                       eval_inputs=_inputs(d / "eval.npz"), eval_label="eval.npz", say=lambda _l: None)
    return run, report


def test_space_file_points_and_pipelines():
    space = parse_space(SPACE)
    assert space.size() == 6 and len(space.grid()) == 6
    assert space.pipeline({"low-rank.keep": "off", "quantize.precision": "off"}) == space.base_pipeline()
    text = space.pipeline({"low-rank.keep": 0.95, "quantize.precision": "int8"})
    assert text.endswith(",low-rank{keep=0.95},quantize")  # canonical: defaults left out
    ranged = parse_space({"passes": {"prune-heads": {"ratio": {"low": 0.1, "high": 0.3, "step": 0.1}}}})
    assert ranged.dimensions() == {"prune-heads.ratio": [0.1, 0.2, 0.3]}


@pytest.mark.parametrize("data, msg", [
    ({"passes": {"prune-everything": {"ratio": [0.1, 0.2]}}}, "unknown pass"),
    ({"passes": {"prune-heads": {"rate": [0.1, 0.2]}}}, "rate"),
    ({"passes": {"prune-heads": {"ratio": {"low": 0.5, "high": 0.1, "step": 0.1}}}}, "empty range"),
    ({"passes": {"prune-heads": {"ratio": []}}}, "empty list"),
    ({"passes": {"prune-heads": {"ratio": 0.2}}}, "nothing to sweep"),
    ({"passes": {}}, "nothing to sweep"),
    ({"base": "default", "knobs": {}}, "unknown key"),
])
def test_bad_spaces_are_one_line(data, msg):
    with pytest.raises(SpaceError, match=msg) as e:
        parse_space(data)
    assert "\n" not in str(e.value)


def test_a_space_file_that_is_not_toml(tmp_path):
    (tmp_path / "s.toml").write_text("[passes.quantize\nprecision = 1")
    with pytest.raises(SpaceError, match="not valid TOML"):
        load_space(tmp_path / "s.toml")


def test_serial_sweep_measures_the_grid_and_writes_the_front(serial):
    run, report = serial
    assert report.measured + report.reused == 6 and report.stopped == "every point of the space is measured"
    assert report.baseline.ok and report.baseline.fidelity == pytest.approx(1.0, abs=1e-6)
    data = json.loads((run / "pareto.json").read_text())
    assert data["front"] == report.front and len(report.front) >= 2
    for name in ("pareto.csv", "pareto.png", "report.html"):
        assert (run / name).stat().st_size > 0
    assert (run / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "Pareto front" in html
    # no front point is dominated by another measured point
    points = [json.loads(p.read_text()) for p in (run / "trials").glob("*.json")]
    ok = [p for p in points if p["error"] is None]
    for f in report.front:
        mine = next(p for p in ok if p["pipeline"] == f["pipeline"])  # the front's numbers are rounded
        assert not any(p["fidelity"] > mine["fidelity"] and p["latency_ms"] < mine["latency_ms"]
                       and p["size_mb"] < mine["size_mb"] for p in ok)
    text = show(run)
    assert f"{len(report.front)} Pareto point(s)" in text and report.front[0]["pipeline"] in text


def test_a_front_point_is_reproduced_by_compile_and_eval(serial, files, tmp_path, capsys):
    d, model = files
    run, report = serial
    point = min(report.front, key=lambda r: r["fidelity"])  # the most compressed
    art = tmp_path / "point"
    assert main(["compile", str(model), "--passes", point["pipeline"], "--calib", str(d / "calib.npz"),
                 "--calib-batch", "8", "-o", str(art)]) == 0
    capsys.readouterr()
    assert main(["eval", str(model), str(art), "--inputs", str(d / "eval.npz"), "--batch", "8", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["fidelity"]["mean_cosine"]
    assert abs(got - point["fidelity"]) <= 0.002


def test_a_restarted_sweep_never_measures_a_point_twice(files, tmp_path):
    d, model = files
    run = tmp_path / "run"
    kw = dict(calibration=_inputs(d / "calib.npz"), eval_inputs=_inputs(d / "eval.npz"), eval_label="eval.npz",
              say=lambda _l: None)
    first = run_sweep(model, d / "space.toml", run, trials=2, **kw)
    assert first.measured + first.reused == 2 and first.stopped == "2 point(s) measured"
    second = run_sweep(model, d / "space.toml", run, **kw)
    assert second.measured + second.reused == 4
    # 5 compressed points, each measured once; the all-off point is the baseline, read back
    assert first.measured + second.measured == 5 and first.reused + second.reused == 1
    assert len(list((run / "trials").glob("*.json"))) == 6
    again = run_sweep(model, d / "space.toml", run, **kw)
    assert again.measured == again.reused == 0 and again.total == 6
    with pytest.raises(Exception, match="another space"):
        run_sweep(model, parse_space({"passes": {"quantize": {"precision": ["off", "int8"]}}}), run, **kw)
    meta = json.loads((run / "sweep.json").read_text())
    assert meta["threads"] == len(os.sched_getaffinity(0))  # latencies timed as optc bench times them
    if meta["threads"] > 1:
        with pytest.raises(Exception, match="another threads"):
            run_sweep(model, d / "space.toml", run, threads=1, **kw)


def test_ray_workers_give_the_serial_results(serial, files, tmp_path):
    pytest.importorskip("ray")
    d, model = files
    run, report = serial
    par = run_sweep(model, d / "space.toml", tmp_path / "ray", workers=2, calibration=_inputs(d / "calib.npz"),
                    eval_inputs=_inputs(d / "eval.npz"), eval_label="eval.npz", say=lambda _l: None)
    assert par.measured + par.reused == 6

    def measured(folder):
        out = {}
        for p in (folder / "trials").glob("*.json"):
            r = json.loads(p.read_text())
            out[r["pipeline"]] = (r["error"] is None, round(r["fidelity"] or 0, 6), round(r["size_mb"] or 0, 6))
        return out

    assert measured(tmp_path / "ray") == measured(run)  # whatever each worker's PassMemo reused


def test_points_that_share_a_lossy_prefix_reuse_it(serial):
    run, _ = serial
    trials = [json.loads(p.read_text()) for p in (run / "trials").glob("*.json")]
    # low-rank{keep=K} and low-rank{keep=K},quantize: whichever ran second started from the other's
    # factored graph (twice: K = 0.95 and 0.6)
    assert sum(t["reused_passes"] for t in trials) >= 2


@pytest.mark.parametrize("args, msg", [
    ([], "needs --space"),
    (["--space", "SPACE", "-o", "RUN"], "lossy pass(es) (low-rank, quantize): give calibration data (--calib)"),
    (["--space", "SPACE", "-o", "RUN", "--calib", "CALIB"], "give held-out evaluation data (--eval)"),
    (["--space", "SPACE", "-o", "RUN", "--calib", "CALIB", "--eval", "EVAL", "--time-budget", "soon"], "--time-budget"),
    (["--space", "SPACE", "-o", "RUN", "--calib", "CALIB", "--eval", "EVAL", "--target", "arm64"], "does not run here"),
    (["--space", "SPACE", "-o", "RUN", "--calib", "CALIB", "--eval", "EVAL", "--dim", "seq=8"], "no symbolic dim 'seq'"),
    (["--space", "SPACE", "-o", "RUN", "--calib", "CALIB", "--eval", "EVAL", "--threads", "0"], "--threads must be"),
])
def test_cli_bad_requests_are_one_line(files, tmp_path, capsys, args, msg):
    d, model = files
    subs = {"SPACE": str(d / "space.toml"), "RUN": str(tmp_path / "run"), "CALIB": str(d / "calib.npz"),
            "EVAL": str(d / "eval.npz")}
    assert main(["sweep", str(model), *[subs.get(a, a) for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "run").exists()


def test_cli_show(serial, tmp_path, capsys):
    run, report = serial
    assert main(["sweep", "--show", str(run)]) == 0
    assert f"{len(report.front)} Pareto point(s)" in capsys.readouterr().out
    assert main(["sweep", "--show", str(tmp_path)]) == 2
    assert "not an optc sweep folder" in capsys.readouterr().err
