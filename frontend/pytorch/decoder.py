"""Export a Hugging Face causal language model with its KV cache as an explicit input/output.

``torch.export`` of the model as it is traces one forward without a cache. Generation needs the
step that takes the cache of the tokens so far and returns it grown, so the model is wrapped in a
module whose inputs are ``input_ids`` and the flat list of past keys and values (a
``DynamicCache`` is filled from them inside the traced forward) and whose outputs are the logits
and the updated keys and values. The past length is a symbolic dim ``past`` that may be 0, the new
tokens' count ``seq``: the imported graph's cache outputs are ``past+seq`` long, and
``ir/decoder.py`` derives the prefill (``past`` = 0) and decode (``seq`` = 1) steps from it.
Values are renamed to the convention of Hugging Face's ONNX exports
(``past_key_values.{i}.key``, ``present.{i}.key``, ``logits``).
"""

from __future__ import annotations

import inspect

import torch

from ...ir import Graph, UnsupportedOpError
from ...ir.decoder import INPUT_IDS, LOGITS, MASK, POSITIONS, find_kv_cache, tie_mask_length
from .api import export_module

_EXAMPLE = {"batch": 2, "seq": 3, "past": 5}  # >= 2 each: torch.export specializes sizes 0 and 1
_MIN_TRACED = 2  # the smallest size torch.export assumes of a dynamic dim


class _CacheStep(torch.nn.Module):
    """``(input_ids, past) -> (logits, *present)`` around a causal LM; ``past`` is a list of
    tensors, keys then values, layer by layer."""

    def __init__(self, model: torch.nn.Module, layers: int):
        super().__init__()
        self.model = model
        self.layers = layers
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids, past):
        return self.step(input_ids, past)

    def step(self, input_ids, past, **extra):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, use_cache=True, **{self.cache_arg: cache}, **extra)
        grown = out.past_key_values
        flat = []
        for i in range(self.layers):
            layer = grown.layers[i]
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


class _MaskedCacheStep(_CacheStep):
    """``(input_ids, attention_mask, position_ids, past) -> (logits, *present)``: the step of
    optimum's exports, which batched generation with padded prompts needs."""

    def forward(self, input_ids, attention_mask, position_ids, past):
        return self.step(input_ids, past, attention_mask=attention_mask, position_ids=position_ids)


def cache_geometry(config) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a Hugging Face decoder config."""
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers, kv_heads, head_dim


def export_decoder(model: torch.nn.Module, *, max_length: int | None = None, attention_mask: bool = False) -> Graph:
    """Import a Hugging Face causal LM (Llama-architecture and alike) with its KV cache: a graph
    ``(input_ids [batch, seq], past_key_values.{i}.key|value [batch, kv_heads, past, head_dim])
    -> (logits [batch, seq, vocab], present.{i}.key|value [batch, kv_heads, past+seq, head_dim])``.

    ``max_length`` bounds ``past`` and ``seq`` (default: the config's
    ``max_position_embeddings``). ``attention_mask``: the step also takes ``attention_mask
    [batch, past+seq]`` and ``position_ids [batch, seq]`` (after ``input_ids``), as optimum's
    exports do: rows of different lengths, padded, in one batch."""
    step, args, dynamic, (names, outs) = _traceable_step(model, max_length, "export_decoder", attention_mask)
    graph = export_module(step, args, dynamic_shapes=dynamic)
    graph.name = type(model).__name__
    for v, name in zip(list(graph.inputs), names):
        graph.rename_value(v, name)
    for v, name in zip(list(graph.outputs), outs):
        graph.rename_value(v, name)
    # the convention holds (raises naming what does not); a mask is past+seq long
    return tie_mask_length(graph, find_kv_cache(graph))


def export_decoder_onnx(model: torch.nn.Module, path, *, max_length: int | None = None,
                        attention_mask: bool = False) -> None:
    """Write the same step as an ONNX file (``torch.onnx.export``, dynamo): the inputs and
    outputs ``export_decoder`` names, with symbolic batch / seq / past — what ONNX Runtime runs
    a cached generation loop on, and what ``optc.load_model`` imports as a decoder. Written to a
    temp file and renamed."""
    from ...fileio import atomic_path

    step, args, dynamic, (names, outs) = _traceable_step(model, max_length, "export_decoder_onnx", attention_mask)
    with atomic_path(path) as tmp:
        torch.onnx.export(step, args, str(tmp), dynamo=True, input_names=names, output_names=outs,
                          dynamic_shapes=dynamic, external_data=False)


def _traceable_step(model: torch.nn.Module, max_length: int | None, caller: str, attention_mask: bool = False):
    """The wrapped step, example arguments, dynamic shapes and the (input, output) names."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        raise UnsupportedOpError(f"{caller}: {type(model).__name__} is not a Hugging Face causal LM "
                                 "(no config with num_hidden_layers)")
    layers, kv_heads, head_dim = cache_geometry(config)
    limit = int(max_length or getattr(config, "max_position_embeddings", 4096))
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=limit)
    past = torch.export.Dim("past", min=0, max=limit)
    ids = torch.zeros((_EXAMPLE["batch"], _EXAMPLE["seq"]), dtype=torch.long)
    dtype = next(model.parameters()).dtype
    cache = [torch.zeros((_EXAMPLE["batch"], kv_heads, _EXAMPLE["past"], head_dim), dtype=dtype)
             for _ in range(2 * layers)]
    dynamic = {"input_ids": {0: batch, 1: seq}, "past": [{0: batch, 2: past} for _ in cache]}
    kinds = [f"{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    names = [INPUT_IDS] + [f"past_key_values.{k}" for k in kinds]
    outs = [LOGITS] + [f"present.{k}" for k in kinds]
    if not attention_mask:
        return _CacheStep(model, layers), (ids, cache), dynamic, (names, outs)
    # The mask's length is past+seq, which torch.export cannot derive from two dims: it gets a
    # dim of its own, which the traced model guards to equal past+seq (two inequalities torch does
    # not solve into a replacement; its lower bound is the two traced minimums of 2), and
    # ir/decoder.py ties it to past+seq after import.
    total = torch.export.Dim("total", min=2 * _MIN_TRACED, max=2 * limit)
    length = _EXAMPLE["past"] + _EXAMPLE["seq"]
    mask = torch.ones((_EXAMPLE["batch"], length), dtype=torch.long)
    positions = torch.arange(_EXAMPLE["past"], length).expand(_EXAMPLE["batch"], -1).contiguous()
    dynamic = {"input_ids": dynamic["input_ids"], "attention_mask": {0: batch, 1: total},
               "position_ids": {0: batch, 1: seq}, "past": dynamic["past"]}
    names = [INPUT_IDS, MASK, POSITIONS] + names[1:]
    return _MaskedCacheStep(model, layers), (ids, mask, positions, cache), dynamic, (names, outs)
