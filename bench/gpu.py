"""MiniLM on an NVIDIA GPU: optc (CUDA target) vs PyTorch eager, torch.compile and ONNX Runtime's
CUDA execution provider, in one run.

all-MiniLM-L6-v2 (real weights) at seq 128, batch 1 and 32. Every runtime gets its inputs already
on the GPU and is timed to the end of its work (a device synchronization inside the timed
call): median of ``--repeat`` runs after warm-up, ratios against optc. optc's outputs are checked
against PyTorch on the CPU first (max abs error printed; > 1e-3 fails the run).

A baseline that cannot run here says why in one line and is left out of the table: PyTorch
without CUDA (the CPU wheel), torch.compile without Triton, ONNX Runtime without the CUDA
provider (``onnxruntime-gpu`` is a separate package from ``onnxruntime``).

    python bench/gpu.py [--target cuda] [--batches 1 32] [--seq 128] [--repeat 50] [--out out/gpu]

Exits with status 2 and one line when this machine has no NVIDIA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

OUTPUTS = ["last_hidden_state", "pooler_output"]
TOL = 1e-3


def _gpu_or_exit() -> str:
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            return f"{dev.device_name} (sm_{str(dev.compute_version).replace('.', '')})"
    except Exception:  # noqa: BLE001  (TVM's CUDA runtime missing: no driver)
        pass
    print("bench/gpu.py: this machine has no NVIDIA GPU (or no CUDA driver); it measures GPU latency and "
          "needs one", file=sys.stderr)
    sys.exit(2)


def _median_ms(fn, sync, repeat: int, warmup: int = 5) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    sync()
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        runs.append((time.perf_counter() - t) * 1e3)
    return statistics.median(runs), float(np.percentile(runs, 90))


def _optc_runner(artifact, feed: dict):
    """The artifact's VM called on device-resident inputs (no host copies in the timed call)."""
    import tvm

    model = artifact.model
    dev = model.device
    args = [tvm.runtime.tensor(np.ascontiguousarray(feed[s.name]), dev) for s in model.inputs]
    main = model.vm["main"]
    return (lambda: main(*args)), dev.sync


def _torch_runners(model, feed: dict, batch: int):
    """``{name: (fn, sync) or reason}`` for PyTorch eager and torch.compile on the GPU."""
    import torch

    if not torch.cuda.is_available():
        why = f"PyTorch {torch.__version__} has no CUDA (a CPU-only wheel, or no driver it can use)"
        return {"torch eager": why, "torch.compile": why}
    gpu_model = model.to("cuda").eval()
    inputs = {k: torch.from_numpy(v).to("cuda") for k, v in feed.items()}
    out = {}

    def eager():
        with torch.inference_mode():
            return gpu_model(**inputs)

    out["torch eager"] = (eager, torch.cuda.synchronize)
    try:
        compiled = torch.compile(gpu_model)

        def comp():
            with torch.inference_mode():
                return compiled(**inputs)

        comp()  # compile now, outside the timing (and fail here if Triton is missing)
        out["torch.compile"] = (comp, torch.cuda.synchronize)
    except Exception as e:  # noqa: BLE001
        out["torch.compile"] = f"torch.compile failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
    return out


def _ort_runner(onnx_path: Path, feed: dict):
    """ONNX Runtime with the CUDA provider and IO binding (inputs and outputs on the GPU)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"ONNX Runtime {ort.__version__} has no CUDA provider (pip install onnxruntime-gpu; the "
                "onnxruntime package is CPU only)")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CUDAExecutionProvider"])
    if "CUDAExecutionProvider" not in sess.get_providers():
        return "ONNX Runtime could not create its CUDA provider (CUDA/cuDNN libraries it needs are missing)"
    binding = sess.io_binding()
    for i in sess.get_inputs():
        binding.bind_ortvalue_input(i.name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feed[i.name]), "cuda", 0))
    for o in sess.get_outputs():
        binding.bind_output(o.name, "cuda", 0)
    return (lambda: sess.run_with_iobinding(binding)), binding.synchronize_outputs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cuda", help="optc target (default: this machine's GPU)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--out", default="out/gpu", help="folder for the ONNX export and the optc artifact")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    device = _gpu_or_exit()

    import torch

    import optc
    from optc import zoo

    out = Path(args.out)
    model = zoo.load_minilm().eval()
    sentences = (zoo.SAMPLE_SENTENCES * 64)[:max(args.batches)]
    onnx_path = zoo.export_onnx(model, zoo.tokenize(sentences[:2], max_length=args.seq), out / "minilm.onnx",
                                dynamo=False, output_names=OUTPUTS)
    t = time.perf_counter()
    artifact = optc.load(optc.compile(onnx_path, out / f"minilm.{args.target}", target=args.target))
    print(f"GPU: {device}; optc target {args.target}: compiled in {time.perf_counter() - t:.1f} s")

    results = {"device": device, "target": args.target, "seq": args.seq, "runs": {}}
    for batch in args.batches:
        inputs = zoo.tokenize(sentences[:batch], max_length=args.seq)
        feed = {k: v.numpy() for k, v in inputs.items()}
        with torch.no_grad():
            ref = model(**inputs)
        got = artifact.run(feed)
        errs = {k: float(np.abs(got[k] - ref[k].numpy()).max()) for k in OUTPUTS}
        print(f"\nbatch {batch}, seq {args.seq}: optc vs PyTorch (CPU) max abs error "
              + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
        if max(errs.values()) > TOL:
            print(f"bench/gpu.py: optc's outputs differ from PyTorch by more than {TOL}", file=sys.stderr)
            return 1
        runners = {"optc": _optc_runner(artifact, feed)}
        runners.update(_torch_runners(model, feed, batch))
        runners["onnxruntime cuda"] = _ort_runner(onnx_path, feed)
        timings = {}
        for name, r in runners.items():
            if isinstance(r, str):
                print(f"  {name:<18} not measured: {r}")
                continue
            med, p90 = _median_ms(*r, repeat=args.repeat)
            timings[name] = {"median_ms": round(med, 4), "p90_ms": round(p90, 4)}
        base = timings["optc"]["median_ms"]
        for name, tm in timings.items():
            print(f"  {name:<18} {tm['median_ms']:8.3f} ms median  (p90 {tm['p90_ms']:.3f})  "
                  f"{tm['median_ms'] / base:5.2f}x optc")
        results["runs"][str(batch)] = {"max_abs_err": errs, "timings": timings}
        model.to("cpu")  # the next batch's reference runs on the CPU
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
