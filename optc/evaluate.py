"""``optc eval``: how close a compressed model is to its original on held-out inputs, and what
it saved — output fidelity (``passes.compression.fidelity``, the same measure the lossy passes
budget against) plus parameters and FLOPs of each side.

Either side may be a model file (.onnx, .pt2, .optc-ir; run by the reference interpreter) or a
compiled artifact folder (run by its compiled module). Also the sentence-embedding helpers the
Lee benchmark (``bench/lee.py``) uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .calibration import InputSets, InputsFile, check_input_sets, from_sentences
from .ir.errors import OptcError
from .ir.graph import Graph
from .passes.compression.fidelity import Fidelity, compare


@dataclass
class Side:
    """One model under evaluation: where it came from, how to run it, its declared inputs and
    outputs, and (model files only) its graph."""

    path: str
    kind: str  # "model" or "artifact"
    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
    inputs: list
    output_names: list[str]
    graph: Graph | None = None
    manifest: dict | None = None
    decoder: bool = False  # a decoder with a KV cache, run (and fed) as its prefill step


def open_side(path: str | os.PathLike) -> Side:
    """A model file (reference interpreter) or an artifact folder (compiled module). A decoder
    with a KV cache runs its prefill step on either side (an artifact's ``main``): the text in
    windows, no cache passed in."""
    path = Path(path)
    if path.is_dir():
        from .api import load

        art = load(path)
        decoder = getattr(getattr(art, "signature", None), "kv_cache", None) is not None
        return Side(str(path), "artifact", art.run, list(art.inputs), art.output_names(), manifest=art.manifest,
                    decoder=decoder)
    from .api import load_model
    from .ir.decoder import find_kv_cache, prefill_graph
    from .ir.interpreter import Interpreter

    graph = load_model(path)
    cache = find_kv_cache(graph)
    runs = prefill_graph(graph, cache) if cache is not None else graph
    return Side(str(path), "model", Interpreter(runs).run, list(runs.inputs), runs.output_names(), graph=graph,
                decoder=cache is not None)


@dataclass
class EvalResult:
    original: str
    compressed: str
    output: str
    input_sets: int
    fidelity: Fidelity
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)  # "original"/"compressed" -> params, flops
    flops_dims: dict[str, int] = field(default_factory=dict)
    pipeline: str | None = None  # the compressed artifact's pipeline, when it is one

    def to_json(self) -> dict:
        out = {"original": self.original, "compressed": self.compressed, "output": self.output,
               "input_sets": self.input_sets, "fidelity": self.fidelity.as_dict()}
        if self.sizes:
            out["sizes"] = self.sizes
            out["flops_dims"] = self.flops_dims
        if self.pipeline is not None:
            out["pipeline"] = self.pipeline
        return out

    def lines(self) -> list[str]:
        f = self.fidelity
        out = [f"original:   {self.original}", f"compressed: {self.compressed}"]
        if self.pipeline:
            out.append(f"pipeline:   {self.pipeline}")
        out += [f"output {self.output!r} on {self.input_sets} input set(s), {f.vectors} vectors:",
                f"  mean cosine     {f.mean_cosine:.6f}",
                f"  worst cosine    {f.worst_cosine:.6f}",
                f"  relative error  {f.relative_error:.4g}"]
        if f.top1 is not None:
            out.append(f"  top-1 agreement {f.top1:.4f}")
        if f.perplexity is not None:
            out.append(f"  perplexity      {f.perplexity_reference:.4f} -> {f.perplexity:.4f} "
                       f"({f.perplexity_change:+.2%}, next token of the inputs)")
        if self.sizes:
            o, c = self.sizes["original"], self.sizes["compressed"]
            bound = ", ".join(f"{k}={v}" for k, v in self.flops_dims.items())
            out.append(f"  parameters      {o['params']:,} -> {c['params']:,} ({_pct(o['params'], c['params'])})")
            out.append(f"  FLOPs           {o['flops']:,} -> {c['flops']:,} ({_pct(o['flops'], c['flops'])})"
                       + (f" at {bound} (first input set)" if bound else ""))
        return out


def _pct(before: float, after: float) -> str:
    if not before:
        return "n/a"
    return f"{(after - before) / before * 100:+.1f}%"


def _sizes(graph: Graph, dims: Mapping[str, int]) -> dict[str, Any]:
    from .ir.analysis import summarize

    info = summarize(graph).to_json(dict(dims))
    return {"params": info["params"], "param_bytes": info["param_bytes"], "flops": info["flops"]}


def evaluate(original: str | os.PathLike, compressed: str | os.PathLike, inputs: InputsFile | InputSets,
             output: str | None = None) -> EvalResult:
    """Run both models on ``inputs`` (input sets, or a file read against the original's inputs)
    and compare output ``output`` (default: the original's first). Parameters and FLOPs are
    reported when both sides are model files."""
    orig, comp = open_side(original), open_side(compressed)
    sets = (inputs.load(orig.inputs, windows=orig.decoder) if isinstance(inputs, InputsFile)
            else check_input_sets(list(inputs), orig.inputs, "inputs"))
    o_names = sorted(v.name for v in orig.inputs)
    c_names = sorted(v.name for v in comp.inputs)
    if o_names != c_names:
        raise OptcError(f"the models take different inputs: {orig.path} takes {', '.join(o_names)}; "
                        f"{comp.path} takes {', '.join(c_names)}")
    name = output or orig.output_names[0]
    for side in (orig, comp):
        if name not in side.output_names:
            raise OptcError(f"{side.path} has no output {name!r} (outputs: {', '.join(side.output_names)})")
    ref = [orig.run(feed) for feed in sets]
    new = [comp.run(feed) for feed in sets]
    try:
        fid = compare(ref, new, sets, name)
    except ValueError as e:
        raise OptcError(f"output {name!r}: {e}") from None
    result = EvalResult(str(original), str(compressed), name, len(sets), fid)
    if orig.graph is not None and comp.graph is not None:
        from .ir.analysis import bind_dims

        shapes = {k: np.shape(v) for k, v in sets[0].items()}
        result.flops_dims = bind_dims(orig.graph, shapes)  # each side binds its own dim names
        result.sizes = {"original": _sizes(orig.graph, result.flops_dims),
                        "compressed": _sizes(comp.graph, bind_dims(comp.graph, shapes))}
    if comp.manifest is not None:
        result.pipeline = comp.manifest.get("pipeline")
    return result


# -- sentence embeddings ---------------------------------------------------------------------------

def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mask-weighted mean over the sequence axis: ``[batch, seq, d] -> [batch, d]`` (float64)."""
    w = np.asarray(mask, dtype=np.float64)[:, :, None]
    return (np.asarray(hidden, dtype=np.float64) * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)


def sentence_embeddings(graph: Graph, sentences: Sequence[str], *, tokenizer_dir: str | os.PathLike | None = None,
                        max_length: int = 128, batch: int = 10, output: str | None = None) -> np.ndarray:
    """L2-normalized mean-pooled embeddings ``[n, d]`` of ``sentences`` from an encoder graph
    (its output ``output``, default the first: the last hidden state), run by the interpreter."""
    from .ir.interpreter import Interpreter

    run = Interpreter(graph)
    name = output or graph.output_names()[0]
    out = []
    for feed in from_sentences(sentences, graph, tokenizer_dir=tokenizer_dir, max_length=max_length, batch=batch):
        mask = feed.get("attention_mask")
        hidden = run(feed)[name]
        out.append(mean_pool(hidden, mask if mask is not None else np.ones(hidden.shape[:2])))
    emb = np.concatenate(out)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def similarity_pearson(embeddings: np.ndarray, human: np.ndarray) -> float:
    """Pearson correlation between the embeddings' cosine-similarity matrix and ``human``
    ratings over the upper triangle (pairs i < j)."""
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    sim = e @ e.T
    if human.shape != sim.shape:
        raise ValueError(f"{human.shape} ratings for {sim.shape[0]} embeddings")
    iu = np.triu_indices(sim.shape[0], k=1)
    return float(np.corrcoef(sim[iu], human[iu])[0, 1])
