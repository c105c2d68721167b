"""Distillation on all-MiniLM-L6-v2 (real weights): each compression with and without ``distill``
after it, in one run — held-out fidelity, Lee Pearson, and compiled latency.

Calibration is ``--calib`` single news sentences (no documents: the issue's hard case, where the
re-fit over-fits sentence-shaped inputs); fidelity is measured on ``--holdout`` sentences from
other articles (mean/worst cosine of the mean-pooled embeddings against the dense model), and the
Lee document similarities (Pearson with human ratings, and its change from the dense model) on
inputs shaped differently from the calibration. Latency: batch 1, seq 128, interleaved rounds,
medians; a distilled model has the structure of its compressed one, so one artifact per
structure is timed. Each distilled graph is also compiled and run on a held-out batch against
the reference interpreter (``comp.err``: largest difference relative to the largest output).

    [OPTC_BENCH_THREADS=2] python bench/distill.py [--variants heads25,heads40,heads50,heads50-ffn30,ffn30,lowrank70]
        [--distill distill] [--calib 256] [--holdout 256] [--rounds 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from optc import benchmark as bm

THREADS = int(os.environ.get("OPTC_BENCH_THREADS", "2"))
bm.pin_threads(THREADS)  # before torch or TVM start their thread pools

from optc import datasets, load_model, zoo  # noqa: E402
from optc.api import optimize, run_reference  # noqa: E402
from optc.calibration import from_sentences  # noqa: E402
from optc.codegen.build import build  # noqa: E402
from optc.evaluate import sentence_embeddings, similarity_pearson  # noqa: E402
from optc.passes import PassContext, PassManager  # noqa: E402
from optc.passes.compression.fidelity import measure  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from precision import minilm_onnx  # noqa: E402

TARGET = "x86"
VARIANTS = {
    "heads25": "prune-heads{ratio=0.25}",
    "heads40": "prune-heads{ratio=0.4}",
    "heads50": "prune-heads{ratio=0.5}",
    "heads50-ffn30": "prune-heads{ratio=0.5},prune-ffn{ratio=0.3}",
    "ffn30": "prune-ffn{ratio=0.3}",
    "lowrank70": "low-rank{keep=0.7}",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/minilm", help="folder for the exported model")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--distill", default="distill", help="the distillation pass text appended to each variant")
    ap.add_argument("--calib", type=int, default=256, help="calibration news sentences")
    ap.add_argument("--holdout", type=int, default=256, help="held-out news sentences")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=10, help="timed runs per model per round")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)

    dense = load_model(minilm_onnx(folder))
    optimize(dense, "default", target=TARGET)
    calib = from_sentences(datasets.news_sentences("calib", args.calib), dense, max_length=128, batch=32)
    holdout = from_sentences(datasets.news_sentences("holdout", args.holdout, seed=1), dense, max_length=128, batch=32)
    docs, human = datasets.lee_documents(), datasets.lee_similarities()
    feed = {k: v.numpy() for k, v in zoo.tokenize(zoo.SAMPLE_SENTENCES[:1], max_length=128).items()
            if k in dense.input_names()}

    def lee(graph) -> float:
        return similarity_pearson(sentence_embeddings(graph, docs, max_length=128), human)

    lee0 = lee(dense)
    rows, modules = {"dense": {"pipeline": "(default)", "mean_cosine": 1.0, "worst_cosine": 1.0, "lee_delta": 0.0}}, {}
    modules["dense"] = build(dense, TARGET).load()
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        g = dense.clone()
        ctx = PassContext(calibration=calib, teacher=dense)
        t = time.perf_counter()
        PassManager.parse(VARIANTS[name]).run(g, ctx)
        t_compress = time.perf_counter() - t
        modules[name] = build(g, TARGET).load()
        for label, graph, extra in [(name, g, {"pass_s": round(t_compress, 1)})] + _distilled(name, g, args, calib, dense):
            if label != name:  # the distilled artifact against its own graph in the interpreter
                extra["compiled_vs_reference"] = compiled_error(graph, holdout[0])
            f = measure(dense, graph, holdout)
            rows[label] = {"pipeline": VARIANTS[name] + ("," + args.distill if label != name else ""),
                           "mean_cosine": round(f.mean_cosine, 5), "worst_cosine": round(f.worst_cosine, 4),
                           "lee_delta": round(lee(graph) - lee0, 4), "params": graph.parameter_count(), **extra}
            print(f"{label}: {rows[label]}", flush=True)

    times = {k: [] for k in modules}
    for m in modules.values():
        for _ in range(3):
            m.run(feed)
    for rnd in range(args.rounds):
        for name in (list(modules) if rnd % 2 == 0 else list(reversed(modules))):
            for _ in range(args.repeat):
                t = time.perf_counter()
                modules[name].run(feed)
                times[name].append((time.perf_counter() - t) * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nall-MiniLM-L6-v2, calibration {args.calib} news sentences, held-out {args.holdout} other sentences + "
          f"Lee documents; latency batch 1, seq 128, {THREADS} threads ({args.rounds}x{args.repeat} interleaved runs)")
    print(f"{'model':<24} {'mean cos':>9} {'worst':>7} {'ΔLee':>8} {'params':>11} {'ms':>7} {'dense/x':>8} {'comp.err':>9}")
    for label, r in rows.items():
        base = label.split("+")[0]
        r["latency_ms"] = round(ms[base], 3)
        err = f"{r['compiled_vs_reference']:>9.1e}" if "compiled_vs_reference" in r else f"{'':>9}"
        print(f"{label:<24} {r['mean_cosine']:>9.5f} {r['worst_cosine']:>7.4f} {r['lee_delta']:>+8.4f} "
              f"{r.get('params', dense.parameter_count()):>11,} {ms[base]:>7.2f} {ms['dense'] / ms[base]:>8.2f} {err}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def compiled_error(graph, feed) -> float:
    """Largest |compiled - interpreter| of the first output over one batch, relative to the
    interpreter output's largest magnitude."""
    want = run_reference(graph, feed)
    got = build(graph, TARGET).load().run(feed)
    name = graph.output_names()[0]
    return float(np.abs(got[name] - want[name]).max() / max(float(np.abs(want[name]).max()), 1e-30))


def _distilled(name, compressed, args, calib, dense) -> list:
    """(label, graph, report extras) of the compressed graph after ``args.distill``."""
    if not args.distill:
        return []
    g = compressed.clone()
    t = time.perf_counter()
    rep = PassManager.parse(args.distill).run(g, PassContext(calibration=calib, teacher=dense)).reports[-1]
    return [(f"{name}+distill", g, {"distill_s": round(time.perf_counter() - t, 1), "steps": rep["steps"],
                                    "stopped": rep["stopped"],
                                    "calib_holdout_cosine": rep["fidelity"]["mean_cosine"]})]


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
