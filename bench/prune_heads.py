"""Attention-head pruning on all-MiniLM-L6-v2 with its real weights: a table of pruning ratio x
method -> held-out fidelity, Lee benchmark Pearson, parameters and FLOPs; and the compiled
latency of the 40%-pruned model against the unpruned one, measured in the same run.

Calibration: ``--calib-count`` news sentences and ``--calib-passages`` article leads (up to
~110 words: the long inputs document embeddings see) from the calibration articles; evaluation:
``--holdout-count`` sentences from the held-out articles (mean / worst cosine of the
mask-mean-pooled embeddings against the unpruned model) and the Lee benchmark (50 documents,
max length 128). Methods:

- ``magnitude``: weight-norm ranking, one shot, no re-fit;
- ``ablation``: single-head ablation measured on calibration data (the first
  ``--ablation-count`` sentences: it costs one forward pass per head), one shot, no re-fit;
- ``fisher+refit``: the pass's default (Gauss-Newton importance re-scored over 4 removal
  rounds, each round's best candidates re-ranked by their measured effect, ridge re-fit of the
  output projections, and a final in-order re-fit of the output and FFN down projections that
  restores the unpruned block outputs).

Latency: both graphs compiled for the host (``codegen.build``), batch 1, seq 128, 2 pinned
threads, median of ``--repeat`` runs.

    python bench/prune_heads.py [--ratios 0,0.25,0.4] [--methods magnitude,ablation,fisher+refit]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from optc import benchmark as bm
from optc import datasets, load_model
from optc.calibration import from_sentences, news_calibration
from optc.evaluate import sentence_embeddings, similarity_pearson
from optc.ir.analysis import bind_dims, summarize
from optc.passes import PassContext, PassManager
from optc.passes.compression.fidelity import measure

METHODS = {
    "magnitude": "prune-heads{{ratio={r},importance=magnitude,refit=false}}",
    "ablation": "prune-heads{{ratio={r},importance=ablation,refit=false,steps=1}}",
    "fisher+refit": "prune-heads{{ratio={r}}}",
}
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "out" / "minilm" / "minilm.onnx"))
    ap.add_argument("--ratios", default="0,0.25,0.4")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--calib-count", type=int, default=256)
    ap.add_argument("--calib-passages", type=int, default=128)
    ap.add_argument("--holdout-count", type=int, default=256)
    ap.add_argument("--ablation-count", type=int, default=64,
                    help="calibration sentences the ablation baseline measures on (72 forward passes each)")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    base = load_model(args.model)
    PassManager.parse("default").run(base, PassContext())
    calib = news_calibration(base, args.calib_count, args.calib_passages)
    hold = from_sentences(datasets.news_sentences("holdout", args.holdout_count), base, max_length=128, batch=32)
    docs, human = datasets.lee_documents(), datasets.lee_similarities()

    def lee(g):
        return similarity_pearson(sentence_embeddings(g, docs, max_length=128), human)

    def sizes(g):
        s = summarize(g)
        return s.params, s.flops.evaluate(bind_dims(g, {v.name: (1, 128) for v in g.inputs}))

    lee0 = lee(base)
    p0, f0 = sizes(base)
    rows = [{"ratio": 0.0, "method": "-", "heads": 72, "mean_cosine": 1.0, "worst_cosine": 1.0, "lee": lee0,
             "params": p0, "gflops": f0 / 1e9, "seconds": 0.0}]
    pruned40 = None
    for r in [float(x) for x in args.ratios.split(",") if float(x) > 0]:
        for method in args.methods.split(","):
            g = base.clone()
            t = time.perf_counter()
            data = calib[:max(1, args.ablation_count // 32)] if method == "ablation" else calib
            rep = PassManager.parse(METHODS[method].format(r=r)).run(g, PassContext(calibration=data)).reports[-1]
            secs = time.perf_counter() - t
            f = measure(base, g, hold)
            p, fl = sizes(g)
            rows.append({"ratio": r, "method": method, "heads": rep["heads_after"], "mean_cosine": f.mean_cosine,
                         "worst_cosine": f.worst_cosine, "lee": lee(g), "params": p, "gflops": fl / 1e9, "seconds": secs})
            print(_row(rows[-1], lee0), flush=True)
            if abs(r - 0.4) < 1e-9 and method == "fisher+refit":
                pruned40 = g
    print()
    print(f"{'ratio':>5} {'method':>13} {'heads':>5} {'held-out mean':>13} {'worst':>7} {'Lee':>7} {'dLee':>7} "
          f"{'params':>10} {'GFLOPs@1x128':>12} {'pass s':>7}")
    for row in rows:
        print(_row(row, lee0))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if pruned40 is not None and not args.no_compile:
        compiled_latency(base, pruned40, args.repeat)
    return 0


def _row(row: dict, lee0: float) -> str:
    return (f"{row['ratio']:>5.2f} {row['method']:>13} {row['heads']:>5} {row['mean_cosine']:>13.4f} "
            f"{row['worst_cosine']:>7.4f} {row['lee']:>7.4f} {row['lee'] - lee0:>+7.4f} {row['params']:>10,} "
            f"{row['gflops']:>12.3f} {row['seconds']:>7.1f}")


def compiled_latency(base, pruned, repeat: int) -> None:
    """Compile both graphs for the host and time them in the same run (batch 1, seq 128)."""
    from optc import zoo
    from optc.codegen.build import build
    from optc.ir.interpreter import Interpreter
    from optc.targets import get_target

    bm.pin_threads(2)
    feed = {k: v.numpy() for k, v in zoo.tokenize(zoo.SAMPLE_SENTENCES[:1], max_length=128).items()}
    feed = {k: feed[k] for k in base.input_names()}
    mods = {}
    for name, g in (("unpruned", base), ("pruned 40%", pruned)):
        t = time.perf_counter()
        mods[name] = build(g, get_target("x86")).load()
        ref = Interpreter(g).run(feed)
        out = mods[name].run(feed)
        err = max(float(np.abs(out[k] - ref[k]).max()) for k in ref)
        print(f"compiled {name} in {time.perf_counter() - t:.1f} s; max |compiled - reference| = {err:.2e}")
    ms = {name: bm.measure(name, (lambda m=m: m.run(feed)), repeat).median for name, m in mods.items()}
    a, b = ms["unpruned"], ms["pruned 40%"]
    print(f"latency batch 1 x seq 128, 2 threads, median of {repeat}: unpruned {a:.2f} ms, "
          f"pruned 40% {b:.2f} ms, speedup {a / b:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
