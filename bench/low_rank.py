"""Low-rank substitution on all-MiniLM-L6-v2 (real weights): parameters removed vs held-out
fidelity for three ways of choosing the factors, and compiled latency factored vs not.

Calibration: news sentences from the ``calib`` articles; evaluation: sentences from the held-out
articles (``optc.datasets``). At each level (fraction of the eligible linear-layer parameters
kept) it compares

  (a) svd/uniform          plain SVD, every matrix keeps the same fraction of its parameters
  (b) whitened/uniform     activation-aware SVD, same ranks as (a)
  (c) whitened/allocated   activation-aware SVD, ranks allocated by measured sensitivity

by the held-out mean/worst cosine of the mean-pooled sentence embeddings. Then it compiles the
fused model uncompressed and factored (the allocated plan at one level, with ranks free and with
ranks in multiples of the dense kernel's panel width) and times them in the same run (batch 1,
seq 128, 2 threads, median of interleaved rounds).

    [OPTC_BENCH_THREADS=1] python bench/low_rank.py [--cpu-clock] [--calib 128] [--holdout 256] [--levels 0.95,0.9,0.8,0.7]
                             [--latency-keep 0.7] [--latency-quantum 64] [--quantum 1] [--no-compile] [--json FILE]
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

import optc  # noqa: E402
from optc import datasets, zoo  # noqa: E402
from optc.passes import PassContext, PassManager  # noqa: E402
from optc.passes.compression.fidelity import measure, reference_outputs  # noqa: E402
from optc.passes.compression.low_rank import LowRankModel, eligible_layers  # noqa: E402
from optc.passes.compression.projections import find_projections  # noqa: E402

MODEL = Path("out/minilm/minilm.pt2")


def input_sets(sentences: list[str], batch: int = 32, max_length: int = 128) -> list[dict[str, np.ndarray]]:
    """Tokenized batches (each padded to its longest sentence) as model input sets."""
    out = []
    for i in range(0, len(sentences), batch):
        enc = zoo.tokenize(sentences[i:i + batch], max_length=max_length, pad_to_max=False)
        out.append({k: v.numpy() for k, v in enc.items() if k in ("input_ids", "attention_mask")})
    return out


def methods_table(graph, calib, holdout, levels, quantum=1, log=print) -> tuple[list[dict], LowRankModel]:
    """Held-out fidelity of (a) svd/uniform, (b) whitened/uniform, (c) whitened/allocated at each
    level of kept eligible parameters (the allocation gets exactly the parameters the uniform
    ranks keep, which round down). Returns the rows and the whitened model (for reuse)."""
    layers, _ = eligible_layers(graph, exclude="pooler|classifier|lm_head", quantum=quantum)
    t = time.perf_counter()
    whitened = LowRankModel.build(graph, layers, calib, "whitened")
    plain = LowRankModel.build(graph, layers, calib, "svd")
    log(f"statistics and spectra of {len(layers)} matrices in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    whitened.measure_sensitivity(probe_sets=1, quantum=quantum)
    log(f"sensitivity probes in {time.perf_counter() - t:.1f} s")
    reference = reference_outputs(graph, holdout) if levels else []
    full = whitened.params({})
    all_linear = sum(p.weight.const.size for p in find_projections(graph))
    rows = []
    for keep in levels:
        same = whitened.uniform(keep, quantum)
        configs = {
            "svd/uniform": (plain, plain.uniform(keep, quantum)),
            "whitened/uniform": (whitened, same),
            "whitened/allocated": (whitened, whitened.allocated(whitened.params(same), quantum)),
        }
        for name, (model, ranks) in configs.items():
            fid = measure(graph, model.apply(ranks), holdout, reference=reference)
            removed = full - model.params(ranks)
            row = {"level": keep, "config": name, "kept": model.params(ranks) / full,
                   "removed_linear": removed / all_linear, "mean_cosine": fid.mean_cosine,
                   "worst_cosine": fid.worst_cosine, "relative_error": fid.relative_error,
                   "ranks": {k: v for k, v in ranks.items() if v}}
            rows.append(row)
            log(f"{keep:>5.2f} {name:<20} {row['kept']:>6.3f} {row['removed_linear']:>9.3f} "
                f"{fid.mean_cosine:>8.4f} {fid.worst_cosine:>8.4f} {fid.relative_error:>8.4f}")
    return rows, whitened


def latency(graph, model: LowRankModel, plans: dict[str, dict[str, int]], repeat: int, cpu_clock: bool = False) -> dict:
    """Compile the fused model (default pipeline) unfactored and with each plan's factors (the
    same factors the table measured), check the kernels all got optc's schedules, time all of
    them in one run (batch 1, seq 128, median)."""
    from optc.codegen.build import build
    from optc.passes.compression.low_rank_rewrite import apply_factors

    fused = graph.clone()
    PassManager.parse("default").run(fused, PassContext())
    feed = {k: v.numpy() for k, v in zoo.tokenize(zoo.SAMPLE_SENTENCES[:1], max_length=128).items()
            if k in ("input_ids", "attention_mask")}
    loaded, info = {}, {}
    for name, ranks in {"uncompressed": {}, **plans}.items():
        g = fused.clone()
        done = apply_factors(g, model.factors(ranks))
        t = time.perf_counter()
        cm = build(g, "x86")
        info[name] = {"factored": len(done), "kept": round(model.params(ranks) / model.params({}), 4),
                      "compile_s": round(time.perf_counter() - t, 1),
                      "fallback_scheduled": cm.fallback_funcs, "unscheduled": cm.unscheduled,
                      "dense_kernels": sum(1 for n in g.nodes if n.op in ("MatMul", "Linear", "Gemm")
                                           and n.input(1) is not None and n.input(1).is_constant)}
        loaded[name] = cm.load()
    ref = loaded["uncompressed"].run(feed)
    key = next(iter(ref))
    for name, m in loaded.items():
        got = m.run(feed)[key]
        w = feed["attention_mask"][0, :, None].astype(np.float64)
        a, b = (got[0] * w).sum(0), (ref[key][0] * w).sum(0)
        info[name]["pooled_cosine_vs_uncompressed"] = round(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), 6)
    timings = {name: [] for name in loaded}
    for _ in range(3):  # interleaved rounds: load changes on a shared machine hit every model alike
        for name, m in loaded.items():
            clock = time.process_time if cpu_clock else time.perf_counter
            timings[name] += bm.measure(name, (lambda m=m: m.run(feed)), max(repeat // 3, 1), clock=clock).runs_ms
    for name, runs in timings.items():
        info[name].update(bm.Timing(name, runs).to_json())
        info[name]["speedup"] = round(statistics.median(timings["uncompressed"]) / statistics.median(runs), 3)
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODEL), help="MiniLM export (.pt2 or .onnx; bench/minilm.py writes them)")
    ap.add_argument("--calib", type=int, default=128, help="calibration sentences")
    ap.add_argument("--holdout", type=int, default=256, help="held-out evaluation sentences")
    ap.add_argument("--levels", default="0.95,0.9,0.8,0.7", help="fractions of eligible linear-layer parameters kept")
    ap.add_argument("--quantum", type=int, default=1, help="rank multiple")
    ap.add_argument("--latency-keep", type=float, default=0.7, help="the factored configuration that is compiled and timed")
    ap.add_argument("--latency-quantum", type=int, default=64, help="also time the allocation with ranks in multiples of this")
    ap.add_argument("--repeat", type=int, default=50, help="timed runs per compiled model")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--cpu-clock", action="store_true",
                    help="time by process CPU time (use with OPTC_BENCH_THREADS=1 on a busy machine)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    model_file = Path(args.model)
    if not model_file.exists():
        print(f"{model_file} is missing: run python bench/minilm.py --no-compile first", file=sys.stderr)
        return 2
    graph = optc.load_model(model_file)
    calib = input_sets(datasets.news_sentences("calib", args.calib, seed=0))
    holdout = input_sets(datasets.news_sentences("holdout", args.holdout, seed=1))
    print(f"MiniLM ({model_file}): calibration {args.calib} news sentences, held-out {args.holdout} from other articles")
    print(f"\n{'keep':>5} {'config':<20} {'kept':>6} {'removed':>9} {'mean cos':>8} {'worst':>8} {'rel.err':>8}")
    print(f"{'':>5} {'':<20} {'(elig.)':>6} {'(all lin.)':>9}")
    levels = [float(x) for x in args.levels.split(",") if x.strip()]
    rows, whitened = methods_table(graph, calib, holdout, levels, args.quantum)
    result = {"model": str(model_file), "calibration_sentences": args.calib, "holdout_sentences": args.holdout,
              "table": rows}
    best = {lvl: next(x["mean_cosine"] for x in rows if x["level"] == lvl and x["config"] == "whitened/allocated")
            for lvl in levels}
    dominated = [lvl for lvl in levels if any(r["mean_cosine"] > best[lvl] for r in rows if r["level"] == lvl)]
    print(f"\nallocated dominates both baselines at every level: {'yes' if not dominated else 'NO (levels ' + str(dominated) + ')'}")
    if not args.no_compile:
        keep = args.latency_keep
        base = whitened.params(whitened.uniform(keep, args.quantum))
        plans = {f"allocated q={args.quantum}": whitened.allocated(base, args.quantum)}
        if args.latency_quantum > 1:
            q = args.latency_quantum
            plans[f"allocated q={q}"] = whitened.allocated(base, q)
            reference = reference_outputs(graph, holdout)
            fid = measure(graph, whitened.apply(plans[f"allocated q={q}"]), holdout, reference=reference)
            result["quantum_holdout"] = {"quantum": q, "mean_cosine": fid.mean_cosine, "worst_cosine": fid.worst_cosine}
            print(f"allocated at keep {keep} with ranks in multiples of {q}: held-out mean cosine {fid.mean_cosine:.4f} "
                  f"(worst {fid.worst_cosine:.4f})")
        clock = "process CPU time per run" if args.cpu_clock else "wall time"
        print(f"\ncompiled latency ({clock}), batch 1, seq 128, {THREADS} threads, fused (default pipeline), same run:")
        lat = latency(graph, whitened, plans, args.repeat, args.cpu_clock)
        result["latency"] = lat
        for name, d in lat.items():
            print(f"  {name:<16} kept {d['kept']:.3f}  {d['median_ms']:>8.2f} ms median (p90 {d['p90_ms']:.2f})  "
                  f"speedup {d['speedup']:.2f}x  factored {d['factored']}  fallback {d['fallback_scheduled'] or 'none'}"
                  f"  cosine vs uncompressed {d['pooled_cosine_vs_uncompressed']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0 if not dominated else 1


if __name__ == "__main__":
    sys.exit(main())
