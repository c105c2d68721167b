"""Batched generation throughput: SmolLM2-135M-Instruct (exported with its attention mask) in
optc fp32 against PyTorch eager's batched cache loop, in one run, 2 threads.

For each batch size B: B held-out news sentences of different lengths as prompts, left-padded
in one batch, then 64 greedy tokens for every row (no stop token, so every row runs to the
end). Reported: decode tokens/s over all rows (median of interleaved rounds), optc / PyTorch,
and each side's scaling over its own batch 1. Before timing, optc's tokens are checked against
PyTorch's (Hugging Face's batched ``generate``, the same padding) row by row.

PyTorch decodes with the cache loop a server would run (``model(tokens [B, 1], attention_mask,
position_ids, past_key_values)`` per step); optc with ``Generator.generate_batch`` (the
``decode_batch`` function, the one-row ``decode`` for batch 1).

    [OPTC_BENCH_THREADS=2] python bench/decoder_batch.py [--batches 1,2,4,8] [--new-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
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
from optc.codegen.build import build  # noqa: E402
from optc.codegen.generate import Generator  # noqa: E402
from optc.frontend.pytorch import export_decoder  # noqa: E402


def padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and their mask, as Hugging Face pads for generation."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def torch_decode_rate(model, prompts: list[list[int]], pad: int, new_tokens: int) -> float:
    """PyTorch eager's batched cache loop: decode tokens/s over all rows (greedy)."""
    import inspect

    from transformers import DynamicCache

    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # transformers 5.24+
    ids, mask = padded(prompts, pad)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                    **{arg: DynamicCache(config=model.config)}, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        cache, lengths = out.past_key_values, mask.sum(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(new_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = model(input_ids=token, attention_mask=mask, position_ids=lengths, **{arg: cache}, use_cache=True)
            cache, lengths = out.past_key_values, lengths + 1
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        return len(prompts) * (new_tokens - 1) / (time.perf_counter() - t0)


def optc_decode_rate(gen: Generator, prompts: list[list[int]], pad: int, new_tokens: int) -> float:
    rows = gen.generate_batch(prompts, new_tokens, pad_token=pad) if len(prompts) > 1 else [gen.generate(prompts[0], new_tokens)]
    return sum(len(r.tokens) - 1 for r in rows) / rows[0].decode_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,2,4,8", help="comma list of batch sizes (default 1,2,4,8)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    work = Path(tempfile.mkdtemp(prefix="optc-bench-batch-"))
    model, tok = zoo.load_smollm2(work / "tokenizer")
    model.eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    sentences = datasets.news_sentences("holdout", max(batches), seed=1)
    prompts = [tok(s)["input_ids"] for s in sentences]
    print(f"SmolLM2-135M, {THREADS} threads; prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
          f"{args.new_tokens} new tokens a row", flush=True)
    t0 = time.perf_counter()
    graph = export_decoder(model, attention_mask=True)
    optimize(graph, "default")
    gen = Generator(build(graph, "x86").load())
    print(f"optc: export + compile (main, decode, decode_batch) {time.perf_counter() - t0:.0f} s", flush=True)

    check = prompts[:max(batches)]
    ids, mask = padded(check, pad)
    with torch.no_grad():
        want = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=None,
                              pad_token_id=pad)[:, ids.shape[1]:].tolist()
    same = [r.tokens == w for r, w in zip(gen.generate_batch(check, 16, pad_token=pad), want)]
    print(f"optc batch of {len(check)} == PyTorch's batched generate, row by row (16 tokens): {sum(same)}/{len(same)}")
    if not all(same):
        print("optc's batched tokens differ from PyTorch's: not timing a wrong result", file=sys.stderr)
        return 1

    rates = {(side, b): [] for side in ("optc", "torch") for b in batches}
    for _ in range(args.rounds):
        for b in batches:
            rates["optc", b].append(optc_decode_rate(gen, prompts[:b], pad, args.new_tokens))
            rates["torch", b].append(torch_decode_rate(model, prompts[:b], pad, args.new_tokens))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{'batch':>5}  {'optc tok/s':>10}  {'torch tok/s':>11}  {'optc/torch':>10}  {'optc xB1':>8}  {'torch xB1':>9}")
    for b in batches:
        o, t = med["optc", b], med["torch", b]
        print(f"{b:>5}  {o:>10.1f}  {t:>11.1f}  {o / t:>9.2f}x  {o / med['optc', batches[0]]:>7.2f}x  "
              f"{t / med['torch', batches[0]]:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
