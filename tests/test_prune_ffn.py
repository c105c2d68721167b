"""prune-ffn: the FFN analysis finds the up/gate columns and down rows of every neuron (by
value, three import paths), the rewrite equals the torch model with those neurons zeroed,
budgets hold, bad requests fail in one line and leave the graph unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

import prune_models as pm
from optc.ir.interpreter import Interpreter
from optc.ir.text import print_graph
from optc.ir.verifier import verify
from optc.passes import PassContext, PassError, PassManager
from optc.passes.compression.fidelity import measure
from optc.passes.compression.ffn import find_ffn_blocks
from optc.passes.compression.prune_ffn import rewrite_ffn

NEURONS = {"bert": 128, "gpt2": 256, "llama": 128}


def run(pipeline: str, g, calibration=None):
    return PassManager.parse(pipeline).run(g, PassContext(calibration=calibration or [])).reports[-1]


@pytest.mark.parametrize("pipeline", ["default", "cleanup"])
@pytest.mark.parametrize("path", pm.PATHS)
@pytest.mark.parametrize("name", list(pm.BUILDERS))
def test_ffn_slices(name, path, pipeline):
    g = pm.graph(name, path, pipeline)
    info = find_ffn_blocks(g)
    m = pm.model(name)
    assert len(info.blocks) == 2, info.skipped
    for b, (ups, down) in zip(info.blocks, pm.ffn_modules(name, m)):
        assert b.neurons == NEURONS[name]
        got = sorted(p.matrix().tobytes() for p in b.ups)
        assert got == sorted(pm.in_out(u).astype(np.float32).tobytes() for u in ups) or \
            all(any(np.allclose(p.matrix(), pm.in_out(u), atol=1e-6) for p in b.ups) for u in ups)
        np.testing.assert_allclose(b.down.matrix(), pm.in_out(down), atol=1e-6)


@pytest.mark.parametrize("name,path", [("bert", "torch.export"), ("gpt2", "onnx-torchscript"), ("gpt2", "torch.export"),
                                       ("llama", "onnx-dynamo"), ("bert", "onnx-torchscript")])
def test_rewrite_equals_zeroed_neurons_in_torch(name, path):
    g = pm.graph(name, path)
    blocks = find_ffn_blocks(g).blocks
    n = NEURONS[name]
    rng = np.random.default_rng(0)
    drop = [sorted(rng.choice(n, n // 3, replace=False).tolist()), sorted(rng.choice(n, n // 2, replace=False).tolist())]
    rewrite_ffn(g, blocks, [[u for u in range(n) if u not in d] for d in drop], [None, None])
    g.infer_types()
    verify(g)
    m = pm.model(name)
    for (_, down), d in zip(pm.ffn_modules(name, m), drop):
        pm.zero_inputs(down, d)
    got = Interpreter(g).run(pm.feed(name))["last_hidden_state"]
    np.testing.assert_allclose(got, pm.torch_output(m, pm.feed(name)), rtol=1e-4, atol=1e-4)
    after = find_ffn_blocks(g).blocks
    assert [b.neurons for b in after] == [n - len(d) for d in drop]


def test_ratio_report_and_budget():
    calib = pm.calibration("llama", 2)
    g, ref = pm.graph("llama"), pm.graph("llama")
    rep = run("prune-ffn{ratio=0.5}", g, calib)
    verify(g)
    json.dumps(rep)
    assert rep["neurons_before"] == 256 and rep["neurons_after"] == 128
    assert rep["params_after"] < rep["params_before"] and rep["flops_after"] < rep["flops_before"]
    assert abs(rep["calibration_fidelity"]["mean_cosine"] - measure(ref, g, calib[1:]).mean_cosine) < 1e-5  # held back
    g2 = pm.graph("llama")
    rep2 = run("prune-ffn{min_cosine=0.999,importance=magnitude}", g2, calib)
    assert measure(ref, g2, calib[1:]).mean_cosine >= 0.999 and rep2["removed"] >= 1


@pytest.mark.parametrize("pipeline,message", [
    ("prune-ffn{ratio=1.5}", "ratio must be in [0, 1)"),
    ("prune-ffn{ratio=0.9,min_cosine=0.9999999,importance=magnitude,refit=false}", "< min_cosine"),
])
def test_bad_requests(pipeline, message):
    g = pm.graph("gpt2")
    text = print_graph(g)
    with pytest.raises(PassError) as e:
        run(pipeline, g, pm.calibration("gpt2", 1))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert print_graph(g) == text
