"""The fused test models end to end (slow): after the default pipeline, MiniLM / GPT-2 / Llama from
the three export paths compile with every kernel scheduled by optc's rules (the fused ops reach
the dense and row kernels, never the generic fallback), match the reference interpreter, and
export to ONNX for ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from fusion_models import PATHS, fused_models
from optc.frontend.onnx_export import to_onnx

pytestmark = pytest.mark.slow

MODELS = ["minilm", "gpt2", "llama_gqa"]


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    return fused_models(tmp_path_factory)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MODELS)
def test_compiled_fused_model(name, path, fused, monkeypatch):
    from tvm import tirx

    from optc.codegen import build as build_mod

    kernels = []
    original = build_mod.schedule_module

    def spy(mod, *args, **kwargs):
        kernels.extend(gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc))
        return original(mod, *args, **kwargs)

    monkeypatch.setattr(build_mod, "schedule_module", spy)
    graph, feed, ref = fused(name, path)
    cm = build_mod.build(graph, "x86")
    assert not cm.fallback_funcs and not cm.unscheduled
    if name != "llama_gqa":  # every layer norm is the add-while-reading row kernel
        assert not [k for k in kernels if "layer_norm" in k and "add_layer_norm" not in k], kernels
        assert [k for k in kernels if "add_layer_norm" in k]
    assert [k for k in kernels if "dense_packed" in k]
    got = cm.load().run(feed)
    for k in ref:
        err = float(np.abs(got[k] - ref[k]).max())
        assert err <= 1e-3, f"{k}: max abs error {err:.2e}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MODELS)
def test_fused_model_exports_to_onnxruntime(name, path, fused):
    graph, feed, ref = fused(name, path)
    assert {"Linear"} <= {n.op for n in graph.nodes}
    sess = ort.InferenceSession(to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})
    for arr, k in zip(got, graph.output_names()):
        err = float(np.abs(arr - ref[k]).max())
        assert err <= 1e-4, f"{k}: max abs error {err:.2e} in ONNX Runtime"
