"""The main job on the bundled default model, all-MiniLM-L6-v2 (real weights).

1. Exports it three ways (torch.export .pt2, TorchScript ONNX, dynamo ONNX), imports each into
   the IR, prints the `optc inspect` summary, runs the reference interpreter on tokenized
   sentences and compares every output with PyTorch.
2. Compiles the ONNX export for the host (`optc compile`, symbolic batch and seq) with the
   default pipeline and with fusion left out, checks both artifacts against PyTorch at two
   sequence lengths, and measures latency at batch 1, seq 128 and seq 32 with 2 threads: optc
   (fused and unfused) vs ONNX Runtime (all graph optimizations) vs PyTorch eager, in one run,
   medians and ratios.

    python bench/minilm.py [--out out/minilm] [--seq 128] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from optc import benchmark as bm

THREADS = 2
bm.pin_threads(THREADS)  # before torch, TVM or ONNX Runtime start their thread pools

import torch  # noqa: E402

import optc  # noqa: E402
from optc import load_model, run_reference, zoo  # noqa: E402
from optc.ir.analysis import bind_dims, summarize  # noqa: E402

OUTPUTS = ["last_hidden_state", "pooler_output"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/minilm", help="folder for the exported models")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5, help="timed interpreter runs per model")
    ap.add_argument("--bench-repeat", type=int, default=50, help="timed runs per runtime in the latency benchmark")
    ap.add_argument("--no-compile", action="store_true", help="stop after the reference checks")
    args = ap.parse_args()
    out = Path(args.out)

    model = zoo.load_minilm()
    inputs = zoo.tokenize(zoo.SAMPLE_SENTENCES[:2], max_length=args.seq)
    with torch.no_grad():
        ref = model(**inputs)
    expected = {k: ref[k].numpy() for k in OUTPUTS}

    t = time.perf_counter()
    files = {
        "torch.export": zoo.export_pt2(model, inputs, out / "minilm.pt2"),
        "onnx (torchscript)": zoo.export_onnx(model, inputs, out / "minilm.onnx", dynamo=False, output_names=OUTPUTS),
        "onnx (dynamo)": zoo.export_onnx(model, inputs, out / "minilm.dynamo.onnx", dynamo=True, output_names=OUTPUTS),
    }
    print(f"exported 3 ways into {out}/ in {time.perf_counter() - t:.1f} s")

    feed = {k: v.numpy() for k, v in inputs.items()}
    print(f"\n{'import path':<20} {'import s':>9} {'nodes':>6} {'params':>11} {'GFLOPs':>7} {'run ms':>8} {'max |err|':>10}")
    worst = 0.0
    for label, path in files.items():
        t = time.perf_counter()
        graph = load_model(path)
        t_import = time.perf_counter() - t
        info = summarize(graph).to_json(bind_dims(graph, {k: v.shape for k, v in feed.items()}))
        times, got = [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            got = run_reference(graph, feed)
            times.append(time.perf_counter() - t)
        names = graph.output_names()
        err = max(float(np.abs(got[n] - expected[k]).max()) for n, k in zip(names, OUTPUTS))
        worst = max(worst, err)
        print(f"{label:<20} {t_import:>9.2f} {info['nodes']:>6} {info['params']:>11,} {info['flops'] / 1e9:>7.2f} "
              f"{statistics.median(times) * 1e3:>8.1f} {err:>10.2e}")

    print("\n$ optc inspect", files["onnx (torchscript)"])
    subprocess.run([sys.executable, "-m", "optc.cli", "inspect", str(files["onnx (torchscript)"]),
                    "--dim", "batch=2", "--dim", f"seq={args.seq}"], check=True)
    ok = worst <= 1e-4
    print(f"\nreference interpreter within 1e-4 of PyTorch: {'yes' if ok else 'NO'} (worst {worst:.2e})")
    if not args.no_compile:
        ok &= compile_and_benchmark(model, files["onnx (torchscript)"], out / "minilm.optc", args.bench_repeat)
    return 0 if ok else 1


def compile_and_benchmark(model, onnx_file: Path, artifact: Path, repeat: int) -> bool:
    """Compile with the default pipeline (fusion on) and without fusion; check both against
    PyTorch; time both, ONNX Runtime and PyTorch eager in one run."""
    from optc.passes import CLEANUP_PIPELINE

    variants = {"optc": "default", "optc-nofuse": CLEANUP_PIPELINE}
    compiled = {}
    for name, passes in variants.items():
        folder = artifact.with_name(artifact.name + ("" if name == "optc" else "-nofuse"))
        t = time.perf_counter()
        optc.compile(onnx_file, folder, target="x86", passes=passes, progress=True)
        print(f"compiled {onnx_file.name} for x86 ({name}: --passes {passes}) in {time.perf_counter() - t:.1f} s -> {folder}/")
        compiled[name] = optc.load(folder)
    ok = True
    print(f"\n{'seq':>4} {'max |err| vs torch':>19} {'optc ms':>9} {'no-fuse ms':>11} {'ORT ms':>8} {'torch ms':>9}"
          f" {'optc/ORT':>9} {'no-fuse/ORT':>12} {'optc/torch':>11}")
    for seq in (128, 32):
        inputs = zoo.tokenize(zoo.SAMPLE_SENTENCES[:1], max_length=seq)
        feed = {k: v.numpy() for k, v in inputs.items()}
        with torch.inference_mode():
            ref = model(**inputs)
        err = max(float(np.abs(c.run(feed)[k] - ref[k].numpy()).max()) for c in compiled.values() for k in OUTPUTS)
        ok &= err <= 1e-3
        ort_run = bm.onnxruntime_runner(onnx_file, feed, THREADS)

        def torch_run():
            with torch.inference_mode():
                return model(**inputs)

        runners = [(name, (lambda c=c: c.run(feed))) for name, c in compiled.items()]
        runners += [("onnxruntime", ort_run), ("torch", torch_run)]
        ms = {name: bm.measure(name, fn, repeat).median for name, fn in runners}
        o, n, r, p = ms["optc"], ms["optc-nofuse"], ms["onnxruntime"], ms["torch"]
        print(f"{seq:>4} {err:>19.2e} {o:>9.2f} {n:>11.2f} {r:>8.2f} {p:>9.2f} {o / r:>8.2f}x {n / r:>11.2f}x {o / p:>10.2f}x")
    return ok


if __name__ == "__main__":
    sys.exit(main())
