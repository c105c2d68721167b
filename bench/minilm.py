"""The main job on the bundled default model, all-MiniLM-L6-v2 (real weights).

Exports it three ways (torch.export .pt2, TorchScript ONNX, dynamo ONNX), imports each into the
IR, prints the `optc inspect` summary, runs the reference interpreter on tokenized sentences and
compares every output with PyTorch. Codegen (a later issue) adds compile and benchmark here.

    python bench/minilm.py [--out out/minilm] [--seq 128]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from optc import load_model, run_reference, zoo
from optc.ir.analysis import bind_dims, summarize

OUTPUTS = ["last_hidden_state", "pooler_output"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/minilm", help="folder for the exported models")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5, help="timed interpreter runs per model")
    args = ap.parse_args()
    torch.set_num_threads(2)
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
    print(f"\nall outputs within 1e-4 of PyTorch: {'yes' if ok else 'NO'} (worst {worst:.2e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
