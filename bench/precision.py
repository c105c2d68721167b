"""Precision on all-MiniLM-L6-v2 (real weights), optc against ONNX Runtime, in one run: fp32,
bf16, int8, a mixed assignment, int4 (GPTQ and round-to-nearest) compiled by optc, and ONNX
Runtime's fp32 and ``quantize_dynamic`` QInt8 / QUInt8 models.

For each model: held-out fidelity (mean/worst cosine of the mean-pooled embeddings of news
sentences from the held-out articles against the fp32 model's), the Lee document-similarity
Pearson (and its change from fp32), size (optc: the weights in the library, packed; ORT: the
.onnx file) and latency at batch 1, seq 128, 2 threads: medians over interleaved rounds, so a
shared machine's load hits every model alike. optc's outputs are the compiled modules', not the
interpreter's.

    [OPTC_BENCH_THREADS=2] python bench/precision.py [--calib 128] [--passages 32] [--holdout 256]
        [--variants fp32,bf16,int8,int8-plain,mixed,mixed-latency,mixed-size30,int4,int4-rtn]
        [--rounds 20] [--repeat 10]
        [--mixed-budget 0.995] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
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

from optc import datasets, load_model, zoo  # noqa: E402
from optc.api import optimize  # noqa: E402
from optc.calibration import from_sentences, news_calibration  # noqa: E402
from optc.codegen.build import build  # noqa: E402
from optc.evaluate import mean_pool, similarity_pearson  # noqa: E402
from optc.passes import PassContext, PassManager  # noqa: E402
from optc.passes.compression.fidelity import compare  # noqa: E402
from optc.passes.compression.quant_model import model_bytes  # noqa: E402

TARGET = "x86"
VARIANTS = {
    "fp32": "",
    "bf16": "quantize{precision=bf16}",
    "int8": "quantize{precision=int8}",
    "int8-plain": "quantize{precision=int8,smooth=0}",
    "mixed": "assign-precision{min_cosine=%s}",
    "mixed-latency": "assign-precision{min_cosine=%s,objective=latency}",
    "mixed-size30": "assign-precision{size=0.3}",
    "int4": "quantize{precision=int4}",
    "int4-rtn": "quantize{precision=int4,method=rtn}",
}


def minilm_onnx(folder: Path) -> Path:
    path = folder / "minilm.onnx"
    if not path.is_file():
        print(f"exporting MiniLM to {path} ...", file=sys.stderr)
        zoo.export_onnx(zoo.load_minilm(), zoo.tokenize(zoo.SAMPLE_SENTENCES[:2], max_length=32), path, dynamo=False,
                        output_names=["last_hidden_state", "pooler_output"])
    return path


def ort_quantized(onnx_file: Path, folder: Path) -> dict[str, Path]:
    """ONNX Runtime's dynamic int8 models (its own tool, default settings: per-tensor weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = {}
    for name, qt in (("ort-qint8", QuantType.QInt8), ("ort-quint8", QuantType.QUInt8)):
        path = folder / f"minilm.{name}.onnx"
        quantize_dynamic(str(onnx_file), str(path), weight_type=qt)
        out[name] = path
    return out


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda feed: sess.run(None, {k: feed[k] for k in names})[0]


def optc_runner(module, output: str):
    return lambda feed: module.run(feed)[output]


def embeddings(run, sets) -> tuple[list[np.ndarray], np.ndarray]:
    hidden = [np.asarray(run(feed), np.float32) for feed in sets]
    pooled = np.concatenate([mean_pool(h, feed["attention_mask"]) for h, feed in zip(hidden, sets)])
    return hidden, pooled


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/minilm", help="folder for the exported and ORT-quantized models")
    ap.add_argument("--calib", type=int, default=128, help="calibration news sentences")
    ap.add_argument("--passages", type=int, default=32, help="calibration article leads (long inputs)")
    ap.add_argument("--holdout", type=int, default=256, help="held-out news sentences")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--mixed-budget", default="0.995", help="min_cosine of the mixed assignment")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=10, help="timed runs per model per round")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_file = minilm_onnx(folder)

    graph = load_model(onnx_file)
    optimize(graph, "default", target=TARGET)
    output = graph.output_names()[0]
    calib = news_calibration(graph, args.calib, args.passages)
    holdout = from_sentences(datasets.news_sentences("holdout", args.holdout, seed=1), graph, batch=32)
    lee = from_sentences(datasets.lee_documents(), graph, batch=10, max_length=128)
    human = datasets.lee_similarities()
    latency_feed = {k: v.numpy() for k, v in zoo.tokenize(zoo.SAMPLE_SENTENCES[:1], max_length=128).items()
                    if k in graph.input_names()}

    runners, rows = {}, {}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        spec = VARIANTS[name] % args.mixed_budget if "%s" in VARIANTS[name] else VARIANTS[name]
        g = graph.clone()
        t = time.perf_counter()
        report = {}
        if spec:
            report = PassManager.parse(spec).run(g, PassContext(calibration=calib, target=TARGET)).reports[-1]
        t_pass = time.perf_counter() - t
        t = time.perf_counter()
        module = build(g, TARGET).load()
        t_build = time.perf_counter() - t
        runners[name] = optc_runner(module, output)
        rows[name] = {"pipeline": spec or "(default)", "bytes": model_bytes(g), "pass_s": round(t_pass, 1),
                      "build_s": round(t_build, 1)}
        if report.get("precisions"):
            rows[name]["precisions"] = report["precisions"]
        print(f"{name}: pass {t_pass:.1f} s, build {t_build:.1f} s", flush=True)
    if not args.no_ort:
        runners["ort-fp32"] = ort_session(onnx_file)
        rows["ort-fp32"] = {"bytes": onnx_file.stat().st_size + _data_size(onnx_file)}
        for name, path in ort_quantized(onnx_file, folder).items():
            runners[name] = ort_session(path)
            rows[name] = {"bytes": path.stat().st_size}

    # fidelity and Lee, against optc's fp32 (compiled) where present, else ORT's fp32
    base = "fp32" if "fp32" in runners else "ort-fp32"
    ref_hidden, _ = embeddings(runners[base], holdout)
    ref = [{output: h} for h in ref_hidden]
    lee_base = None
    for name, run in runners.items():
        hidden, _ = embeddings(run, holdout)
        fid = compare(ref, [{output: h} for h in hidden], holdout, output)
        _, lee_emb = embeddings(run, lee)
        pearson = similarity_pearson(lee_emb, human)
        if name == base:
            lee_base = pearson
        rows[name].update({"mean_cosine": round(fid.mean_cosine, 5), "worst_cosine": round(fid.worst_cosine, 5),
                           "lee_pearson": round(pearson, 4)})
    for r in rows.values():
        r["lee_delta"] = round(r["lee_pearson"] - lee_base, 4)

    # latency: interleaved rounds, medians
    for run in runners.values():
        for _ in range(3):
            run(latency_feed)
    times = {k: [] for k in runners}
    for rnd in range(args.rounds):
        order = list(runners) if rnd % 2 == 0 else list(reversed(runners))
        for name in order:
            for _ in range(args.repeat):
                t = time.perf_counter()
                runners[name](latency_feed)
                times[name].append((time.perf_counter() - t) * 1e3)
    for name in runners:
        rows[name]["latency_ms"] = round(statistics.median(times[name]), 3)

    fp32_ms = rows.get("fp32", {}).get("latency_ms")
    ort_int8 = min((rows[k]["latency_ms"] for k in ("ort-qint8", "ort-quint8") if k in rows), default=None)
    print(f"\nall-MiniLM-L6-v2, batch 1, seq 128, {THREADS} threads ({args.rounds}x{args.repeat} interleaved runs); "
          f"held-out: {args.holdout} news sentences; calibration: {args.calib} sentences + {args.passages} passages")
    print(f"{'model':<13} {'mean cos':>9} {'worst':>8} {'Lee':>7} {'ΔLee':>7} {'MB':>7} {'ms':>8} {'/fp32':>6} {'/ORT-i8':>8}")
    for name, r in rows.items():
        rel = f"{r['latency_ms'] / fp32_ms:>6.2f}" if fp32_ms else f"{'':>6}"
        rel8 = f"{r['latency_ms'] / ort_int8:>8.2f}" if ort_int8 else f"{'':>8}"
        print(f"{name:<13} {r['mean_cosine']:>9.5f} {r['worst_cosine']:>8.4f} {r['lee_pearson']:>7.4f} "
              f"{r['lee_delta']:>+7.4f} {r['bytes'] / 1e6:>7.1f} {r['latency_ms']:>8.2f} {rel} {rel8}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _data_size(onnx_file: Path) -> int:
    data = onnx_file.with_name(onnx_file.name + ".data")
    return data.stat().st_size if data.is_file() else 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        sys.exit(main())
