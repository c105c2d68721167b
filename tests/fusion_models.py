"""Shared helpers for the per-pattern fusion tests (tests/test_fusion_*.py): check a rewrite on a
hand-built graph (count, verifier, outputs equal in the reference interpreter), and the test
models imported through the three export paths (cached per process: an export costs seconds)."""

from __future__ import annotations

import collections
import functools

import numpy as np
import torch

from optc.ir.graph import Graph
from optc.ir.interpreter import run
from optc.ir.verifier import verify

PATHS = ["torch.export", "onnx-torchscript", "onnx-dynamo"]
RNG = np.random.default_rng(0)


def ops(g: Graph) -> collections.Counter:
    return collections.Counter(n.op for n in g.nodes)


def check(g: Graph, fn, expected: int, feed: dict | None = None, tol: float = 1e-5) -> Graph:
    """Run ``fn`` on ``g``; expect ``expected`` matches, a verifying graph and equal outputs."""
    feed = feed or {v.name: RNG.standard_normal(list(v.shape)).astype(v.dtype.numpy) for v in g.inputs}
    ref = run(g, feed)
    n = fn(g)
    assert n == expected
    verify(g)
    got = run(g, feed)
    assert list(got) == list(ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=tol, rtol=tol)
    return g


class CNN(torch.nn.Module):
    """Conv+BN+ReLU, Conv(no bias)+BN+ReLU, Conv+ReLU: what a small CNN backbone spells."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1, self.b1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.c2, self.b2 = torch.nn.Conv2d(8, 8, 3, bias=False), torch.nn.BatchNorm2d(8)
        self.c3 = torch.nn.Conv2d(8, 4, 1)
        with torch.no_grad():  # every parameter from the seeded generator: CNN() is reproducible
            for conv in (self.c1, self.c2, self.c3):
                conv.weight.normal_(0, 0.3, generator=g)
                if conv.bias is not None:
                    conv.bias.uniform_(-0.5, 0.5, generator=g)
            for bn in (self.b1, self.b2):  # non-trivial statistics, so a wrong fold shows
                bn.running_mean.uniform_(-1, 1, generator=g)
                bn.running_var.uniform_(0.5, 2, generator=g)
                bn.weight.uniform_(0.5, 1.5, generator=g)
                bn.bias.uniform_(-1, 1, generator=g)
        self.eval()

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(self.b2(self.c2(h)))
        return {"y": torch.relu(self.c3(h))}


def _build(name: str):
    import models

    if name == "cnn":
        return CNN(), {"x": torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))}, ["y"]
    build = {"minilm": models.minilm, "gpt2": models.gpt2_small, "llama_gqa": models.llama_gqa_small}[name]
    outs = ["last_hidden_state", "pooler_output"] if name == "minilm" else ["last_hidden_state"]
    model, inputs = build(batch=2, seq=16) if name == "minilm" else build()
    return model, inputs, outs


@functools.lru_cache(maxsize=None)
def _imported(name: str, path: str, folder: str) -> tuple[Graph, dict]:
    from optc import zoo
    from optc.frontend.onnx_import import import_onnx
    from optc.frontend.pytorch import export_module

    model, inputs, outs = _build(name)
    if path == "torch.export":
        graph = export_module(model, (), dict(inputs), dynamic_shapes=zoo.dynamic_dims(inputs))
    else:
        f = zoo.export_onnx(model, inputs, f"{folder}/{name}_{path}.onnx", dynamo=path == "onnx-dynamo",
                            output_names=outs)
        graph = import_onnx(f)
    feed = {k: v.numpy() for k, v in inputs.items()}
    return graph, {k: feed[k] for k in graph.input_names()}


def imported(name: str, path: str, tmp_path_factory) -> tuple[Graph, dict]:
    """A fresh copy of model ``name`` imported through ``path``, and its inputs."""
    folder = str(tmp_path_factory.getbasetemp() / "fusion_models")
    import os

    os.makedirs(folder, exist_ok=True)
    graph, feed = _imported(name, path, folder)
    return graph.clone(), feed


def fused_models(tmp_path_factory):
    """A cached getter ``(name, path) -> (graph after the default pipeline, inputs, reference
    outputs of the unfused graph)`` for a module-scoped fixture."""
    from optc.passes.manager import run_pipeline

    cache = {}

    def get(name, path):
        if (name, path) not in cache:
            graph, feed = imported(name, path, tmp_path_factory)
            ref = run(graph, feed)
            run_pipeline(graph, "default")
            cache[name, path] = (graph, feed, ref)
        return cache[name, path]

    return get


def cleaned(name: str, path: str, tmp_path_factory, upto: str) -> tuple[Graph, dict, dict]:
    """The imported model after the cleanup pipeline and every fusion before ``upto``
    (``fuse_<upto>`` not run yet), its inputs and its reference outputs."""
    from optc.passes.fusion import ALL_FUSIONS
    from optc.passes.manager import run_pipeline
    from optc.passes.pipeline import CLEANUP_PIPELINE

    graph, feed = imported(name, path, tmp_path_factory)
    ref = run(graph, feed)
    run_pipeline(graph, CLEANUP_PIPELINE)
    for fn in ALL_FUSIONS:
        if fn.__name__ == f"fuse_{upto}":
            break
        fn(graph)
    return graph, feed, ref


def assert_outputs_close(graph: Graph, feed: dict, ref: dict, tol: float = 1e-4) -> None:
    got = run(graph, feed)
    assert list(got) == list(ref)
    for k in ref:
        err = float(np.abs(got[k] - ref[k]).max())
        assert err <= tol, f"{k}: max abs error {err:.2e}"
