"""How optc's graph work grows with model depth: import and the default pipeline, per node.

Two families, each at doubling sizes, in one run:

* ``chain``: an IR chain of ``MatMul -> Add -> Relu`` blocks sharing one weight (3k..48k
  nodes): the default pipeline fuses every block into a ``Linear`` — inserts, removals,
  membership checks and use-list edits at every node, and one value with thousands of uses.
* ``llama``: a Hugging Face Llama (random weights, hidden 64, GQA 4/2 heads) with 4..32 layers
  exported by the TorchScript ONNX exporter, as a user's model arrives: ONNX import, then the
  default pipeline (cleanup and the fusions: RMSNorm, attention, SiLU, linear).

Per size: nodes before/after, seconds, and microseconds per input node; the last column is the
per-node cost relative to the smallest size — flat means linear. (Before ``ir/node_list.py`` and
``ir/use_list.py`` the chain took 0.7 s / 4.2 s / 13.9 s at 3k / 6k / 12k nodes.)

    python bench/scaling.py [--chain 3000,6000,12000,24000,48000] [--layers 4,8,16,32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from optc.api import optimize
from optc.ir import DType, Graph, TensorType


def chain(nodes: int) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(DType.FLOAT32, (4, 64)))
    w = g.add_constant(np.ones((64, 64), np.float32))
    for i in range(nodes // 3):
        y = g.op("Add", g.op("MatMul", x, w), g.add_constant(np.full((64,), i, np.float32)))
        x = g.op("Relu", y)
    g.set_outputs([x])
    return g


def llama_onnx(layers: int, folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaModel

    from optc import zoo

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256, use_cache=False)
    model = LlamaModel(config).eval()
    inputs = {"input_ids": torch.randint(0, 1000, (1, 16)), "attention_mask": torch.ones(1, 16, dtype=torch.long)}
    return zoo.export_onnx(model, inputs, folder / f"llama{layers}.onnx", dynamo=False,
                           output_names=["last_hidden_state"])


def timed(setup, fn, repeat: int):
    """(median seconds of ``fn(setup())``, its last result) over ``repeat`` runs; only ``fn`` is
    timed. The cyclic garbage collector runs before each, not inside."""
    times, out = [], None
    for _ in range(repeat):
        arg = setup()
        gc.collect()
        t = time.perf_counter()
        out = fn(arg)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def optimized(g: Graph) -> Graph:
    optimize(g, "default")
    return g


def report(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(f"{'size':>8} {'nodes in':>9} {'nodes out':>9} {'import s':>9} {'optimize s':>10} {'us/node':>8} {'x first':>8}")
    base = None
    for size, n_in, n_out, t_imp, t_opt in rows:
        per = (t_imp + t_opt) / n_in * 1e6
        base = base or per
        imp = f"{t_imp:9.2f}" if t_imp else f"{'-':>9}"
        print(f"{size:>8} {n_in:>9} {n_out:>9} {imp} {t_opt:10.2f} {per:8.1f} {per / base:8.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain", default="3000,6000,12000,24000,48000")
    ap.add_argument("--layers", default="4,8,16,32")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    optimized(chain(300))  # imports and first-call costs out of the first row

    rows = []
    for n in (int(s) for s in a.chain.split(",") if s):
        t, g = timed(lambda n=n: chain(n), optimized, a.repeat)
        rows.append((n, n // 3 * 3, len(g.nodes), 0.0, t))
    report("IR chain (MatMul, Add, Relu blocks), default pipeline", rows)

    from optc.frontend.onnx_import import import_onnx

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (int(s) for s in a.layers.split(",") if s):
            path = llama_onnx(layers, Path(tmp))
            t_imp, g = timed(lambda: path, import_onnx, a.repeat)
            t_opt, opt = timed(lambda: import_onnx(path), optimized, a.repeat)
            rows.append((f"L{layers}", len(g.nodes), len(opt.nodes), t_imp, t_opt))
    report("Llama (GQA) ONNX export: import, then the default pipeline", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
