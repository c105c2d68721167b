"""What the compiled run-time checks cost: all-MiniLM-L6-v2 (real weights, the default pipeline)
built with ``checked=True`` and ``checked=False``, timed at batch 1, seq 128, 2 threads,
interleaved call by call (the order alternates) so a shared machine's load hits both alike;
prints the medians, 10th percentiles and the median of the paired ratios, by wall clock and by
process CPU time (steadier when other processes compete for the cores);
then what a check costs alone, on MiniLM's embedding lookup (microseconds, where the model's own
noise does not drown it).

    python bench/runtime_checks.py [--out out/minilm] [--seq 128] [--rounds 15] [--repeat 20]
                                  (rounds x repeat runs of each build)
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

from optc import benchmark as bm

THREADS = 2
bm.pin_threads(THREADS)  # before torch or TVM start their thread pools

import numpy as np  # noqa: E402

from optc import load_model, zoo  # noqa: E402
from optc.api import optimize  # noqa: E402
from optc.codegen.build import build  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/minilm", help="folder for the exported ONNX model")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per variant and round")
    args = ap.parse_args()

    onnx_file = Path(args.out) / "minilm.onnx"
    inputs = zoo.tokenize(zoo.SAMPLE_SENTENCES[:1], max_length=args.seq)
    if not onnx_file.is_file():
        zoo.export_onnx(zoo.load_minilm(), inputs, onnx_file, dynamo=False,
                        output_names=["last_hidden_state", "pooler_output"])
    graph = load_model(onnx_file)
    optimize(graph, "default", target="x86")
    feed = {k: v.numpy() for k, v in inputs.items()}
    models, kernels = {}, {}
    for checked in (True, False):
        cm = build(graph, "x86", checked=checked)
        name = "checked" if checked else "unchecked"
        models[name] = cm.load()
        kernels[name] = {k for k in re.findall(r"call\s+(\S+)", cm.executable.as_text())
                         if not k.startswith(("check_", "vm.builtin."))}
        if checked:
            print(f"{len(cm.checks)} run-time checks compiled in:")
            for c in cm.checks:
                print("   ", c)
    same = kernels["checked"] == kernels["unchecked"]
    print(f"the other kernels (fusion) are {'the same' if same else 'DIFFERENT'} in both modules "
          f"({len(kernels['checked'])} callees)")
    a, b = (models[k].run(feed) for k in ("checked", "unchecked"))
    assert all(np.array_equal(a[k], b[k]) for k in a), "checked and unchecked modules differ"

    # Interleaved call by call (the order alternates), so a shared machine's load hits both alike.
    runs = args.rounds * args.repeat
    times = {(c, k): [] for c in ("wall", "cpu") for k in models}
    for m in models.values():
        for _ in range(3):
            m.run(feed)
    for i in range(runs):
        for name in (list(models) if i % 2 == 0 else list(reversed(models))):
            w, c = time.perf_counter(), time.process_time()
            models[name].run(feed)
            times[("cpu", name)].append((time.process_time() - c) * 1e3)
            times[("wall", name)].append((time.perf_counter() - w) * 1e3)
    print(f"MiniLM batch 1, seq {args.seq}, {THREADS} threads, {runs} runs each, interleaved call by call "
          f"(wall clock, and process CPU time: the machine may be shared)")
    for clock in ("wall", "cpu"):
        ct, ut = times[(clock, "checked")], times[(clock, "unchecked")]
        c, u = statistics.median(ct), statistics.median(ut)
        c10, u10 = np.percentile(ct, 10), np.percentile(ut, 10)
        ratios = [a / b for a, b in zip(ct, ut)]
        print(f"  {clock:>4}: checked {c:.3f} ms, unchecked {u:.3f} ms (medians; 10th percentiles {c10:.3f} / {u10:.3f}"
              f" ms, ratio {c10 / u10:.4f}); checked/unchecked {c / u:.4f}, median of paired ratios "
              f"{statistics.median(ratios):.4f}")
    check_cost(20000, feed)
    return 0


def check_cost(calls: int, feed: dict) -> None:
    """The checks alone, where the model's own time does not drown them: MiniLM's word-embedding
    lookup (the real table, the same ids) built checked (2 checks: zero-size dims, token ids)
    and unchecked, called directly on the VM (no Python-side input checks or copies), the two
    alternating call by call; the difference of the low percentiles is what the checks cost."""
    from optc.ir import DType, Graph, TensorType

    table = zoo.load_minilm().embeddings.word_embeddings.weight.detach().numpy()
    g = Graph("embedding")
    ids = g.add_input("input_ids", TensorType(DType.INT64, ("batch", "seq")))
    g.set_outputs([g.op("Gather", g.add_constant(table), ids, axis=0)])
    models = {name: build(g, "x86", checked=name == "checked").load() for name in ("checked", "unchecked")}
    args = {name: [m._tensor(np.ascontiguousarray(feed["input_ids"]))] for name, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for name, m in models.items():
        for _ in range(200):
            m._main(*args[name])
    for i in range(calls):
        for name in (("checked", "unchecked") if i % 2 else ("unchecked", "checked")):
            t = time.perf_counter()
            models[name]._main(*args[name])
            times[name].append((time.perf_counter() - t) * 1e6)
    c10, c50 = np.percentile(times["checked"], [10, 50])
    u10, u50 = np.percentile(times["unchecked"], [10, 50])
    print(f"embedding lookup alone ({calls} alternating calls each): checked {c10:.2f} / {c50:.2f} us, unchecked "
          f"{u10:.2f} / {u50:.2f} us (10th percentile / median): the 2 checks cost {c10 - u10:.2f} / {c50 - u50:.2f} us")


if __name__ == "__main__":
    sys.exit(main())
