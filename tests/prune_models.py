"""Tiny random-weight transformers (BERT, GPT-2, Llama with GQA) imported the three ways optc
imports models, cached per session, for the head/FFN analysis and pruning tests."""

from __future__ import annotations

import copy
import functools
import os
import tempfile

import numpy as np
import torch

import models

PATHS = ["torch.export", "onnx-torchscript", "onnx-dynamo"]
_TMP = tempfile.mkdtemp(prefix="optc-prune-")


def bert_small(batch: int = 2, seq: int = 16, seed: int = 0, pad: int = 0):
    """A 2-layer BERT (hidden 64, 4 heads, intermediate 128, vocab 1000), random weights."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        vocab_size=1000, max_position_embeddings=512)
    model = BertModel(config, add_pooling_layer=False).eval()
    return model, models._token_inputs(batch, seq, config.vocab_size, seed, pad_last=pad)


BUILDERS = {"bert": bert_small, "gpt2": models.gpt2_small, "llama": models.llama_gqa_small}
# (query heads, kv heads, head dim, layers)
SHAPES = {"bert": (4, 4, 16, 2), "gpt2": (4, 4, 16, 2), "llama": (4, 2, 16, 2)}


@functools.lru_cache(maxsize=None)
def _model(name: str):
    return BUILDERS[name](pad=3)


@functools.lru_cache(maxsize=None)
def _imported(name: str, path: str):
    from optc import zoo
    from optc.frontend.onnx_import import import_onnx
    from optc.frontend.pytorch import export_module

    model, inputs = _model(name)
    if path == "torch.export":
        return export_module(model, (), dict(inputs), dynamic_shapes=zoo.dynamic_dims(inputs))
    f = zoo.export_onnx(model, inputs, os.path.join(_TMP, f"{name}-{path}.onnx"), dynamo=path == "onnx-dynamo",
                        output_names=["last_hidden_state"])
    return import_onnx(f)


def graph(name: str, path: str = "torch.export", pipeline: str = "default"):
    """A fresh copy of the imported graph after ``pipeline`` (``default``: fused, or ``cleanup``)."""
    from optc.passes import CLEANUP_PIPELINE, PassContext, PassManager

    g = _imported(name, path).clone()
    PassManager.parse("default" if pipeline == "default" else CLEANUP_PIPELINE).run(g, PassContext())
    return g


def model(name: str):
    """A deep copy of the torch model (tests may edit its weights)."""
    return copy.deepcopy(_model(name)[0])


def feed(name: str) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in _model(name)[1].items()}


def calibration(name: str, sets: int = 3, batch: int = 4, seq: int = 12) -> list[dict[str, np.ndarray]]:
    out = []
    for s in range(sets):
        _, inp = BUILDERS[name](batch=batch, seq=seq, seed=100 + s, pad=3)
        out.append({k: v.numpy() for k, v in inp.items()})
    return out


def torch_output(m, feed: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return m(**{k: torch.as_tensor(v) for k, v in feed.items()}).last_hidden_state.numpy()


def attention_modules(name: str, m):
    """Per layer: (q, k, v, o) torch Linear/Conv1D modules; GPT-2's combined c_attn is q=k=v."""
    if name == "bert":
        return [(l.attention.self.query, l.attention.self.key, l.attention.self.value, l.attention.output.dense)
                for l in m.encoder.layer]
    if name == "gpt2":
        return [(b.attn.c_attn,) * 3 + (b.attn.c_proj,) for b in m.h]
    return [(l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj, l.self_attn.o_proj) for l in m.layers]


def ffn_modules(name: str, m):
    """Per layer: (ups, down)."""
    if name == "bert":
        return [([l.intermediate.dense], l.output.dense) for l in m.encoder.layer]
    if name == "gpt2":
        return [([b.mlp.c_fc], b.mlp.c_proj) for b in m.h]
    return [([l.mlp.gate_proj, l.mlp.up_proj], l.mlp.down_proj) for l in m.layers]


def in_out(module) -> np.ndarray:
    """A torch Linear's / GPT-2 Conv1D's weight as ``[in, out]``."""
    w = module.weight.detach().numpy()
    return w if type(module).__name__ == "Conv1D" else w.T


def zero_inputs(module, rows: list[int]) -> None:
    """Zero the given input features of a Linear / Conv1D (the rows of its ``[in, out]`` weight)."""
    with torch.no_grad():
        if type(module).__name__ == "Conv1D":
            module.weight[rows, :] = 0
        else:
            module.weight[:, rows] = 0
