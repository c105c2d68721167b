"""optc's default CPU kernels on the all-MiniLM-L6-v2 shapes vs ONNX Runtime and PyTorch.

Each kernel is compiled through optc's schedules (``codegen.schedules.testing.build``: the same
passes and rules the build pipeline runs, symbolic sequence length), and compared with a one-node
ONNX model in ONNX Runtime (all graph optimizations) and with torch eager, all on the same
threads, measured interleaved in rounds so that load from other processes hits all three alike.

    TVM_NUM_THREADS=2 python bench/kernels.py [--threads 2] [--rounds 7] [--only dense]

``--only attention`` (or a full run) also compares optc's fused attention kernel with the
matmul/softmax/matmul decomposition it replaced, both built from one IR ``Attention`` node
(symbolic seq, float mask [1, 1, seq, seq] as in the fused MiniLM), beside ONNX Runtime on the
same four-op decomposition and torch's ``scaled_dot_product_attention``.

``--int8`` times optc's int8 dense (``codegen/schedules/qdense.py``: the layer's weight quantized
per column to int8, activations per row to the target's code range) against optc's fp32 dense on
the three MiniLM dense layers with their epilogues: the int8 GEMM alone (codes given) and with the
per-row quantization of its float input, interleaved with the fp32 kernel.

    TVM_NUM_THREADS=2 python bench/kernels.py --int8 [--rounds 15]
    TVM_NUM_THREADS=1 python bench/kernels.py --int8 --threads 1 --cpu-time   # on a loaded machine
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

SEQ, HID, HEADS, DH, FFN = 128, 384, 12, 32, 1536


def kernels():
    """(name, kind, shapes, flops) for the MiniLM layer at batch 1, seq 128."""
    m = SEQ
    return [
        ("dense qkv/out [128,384]x[384,384]+b", "dense", (m, HID, HID), 2 * m * HID * HID),
        ("dense ffn1 [128,384]x[384,1536]+b,gelu", "dense_gelu", (m, HID, FFN), 2 * m * HID * FFN),
        ("dense ffn2 [128,1536]x[1536,384]+b+res", "dense_res", (m, FFN, HID), 2 * m * FFN * HID),
        ("bmm scores [12,128,32]x[12,32,128]", "bmm", (HEADS, m, DH, m), 2 * HEADS * m * DH * m),
        ("bmm context [12,128,128]x[12,128,32]", "bmm", (HEADS, m, m, DH), 2 * HEADS * m * m * DH),
        ("softmax [12,128,128]", "softmax", (HEADS, m, m), 5 * HEADS * m * m),
        ("layernorm [128,384]", "layernorm", (m, HID), 8 * m * HID),
    ]


# ----------------------------------------------------------------------------- optc (TVM)
def build_optc(kind, shape, rng, target):
    import tvm
    from tvm import relax, tirx

    from optc.codegen.schedules import testing

    bb = relax.BlockBuilder()
    s = tirx.Var("s", "int64")
    consts, feeds = {}, []
    if kind.startswith("dense"):
        m, k, n = shape
        w = (rng.standard_normal((k, n)) * 0.05).astype("float32")
        b = rng.standard_normal(n).astype("float32")
        x = relax.Var("x", relax.TensorType([1, s, k], "float32"))
        params = [x]
        feeds = [rng.standard_normal((1, m, k)).astype("float32")]
        if kind == "dense_res":
            r = relax.Var("r", relax.TensorType([1, s, n], "float32"))
            params.append(r)
            feeds.append(rng.standard_normal((1, m, n)).astype("float32"))
        with bb.function("main", params):
            with bb.dataflow():
                y = bb.emit(relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b)))
                if kind == "dense_gelu":
                    y = bb.emit(relax.op.nn.gelu(y))
                if kind == "dense_res":
                    y = bb.emit(relax.op.add(y, r))
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        consts = {"w": w, "b": b}
    elif kind == "bmm":
        h, m, k, n = shape
        sa = [1, h, s, k] if m == SEQ else [1, h, m, k]
        sb = [1, h, k, s] if n == SEQ else [1, h, s, n]
        a = relax.Var("a", relax.TensorType(sa, "float32"))
        bvar = relax.Var("b", relax.TensorType(sb, "float32"))
        with bb.function("main", [a, bvar]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.matmul(a, bvar))
            bb.emit_func_output(out)
        feeds = [rng.standard_normal((1, h, m, k)).astype("float32"), rng.standard_normal((1, h, k, n)).astype("float32")]
    elif kind == "softmax":
        h, m, n = shape
        a = relax.Var("a", relax.TensorType([1, h, s, s], "float32"))
        with bb.function("main", [a]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.nn.softmax(a, axis=-1))
            bb.emit_func_output(out)
        feeds = [rng.standard_normal((1, h, m, n)).astype("float32")]
    elif kind == "layernorm":
        m, n = shape
        g, be = rng.standard_normal(n).astype("float32"), rng.standard_normal(n).astype("float32")
        a = relax.Var("a", relax.TensorType([1, s, n], "float32"))
        with bb.function("main", [a]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.nn.layer_norm(a, relax.const(g), relax.const(be), axes=[-1], epsilon=1e-12))
            bb.emit_func_output(out)
        feeds = [rng.standard_normal((1, m, n)).astype("float32")]
        consts = {"g": g, "b": be}
    vm = testing.build(bb.get(), target)
    args = [tvm.runtime.tensor(f) for f in feeds]
    fn = vm["main"]
    return (lambda: fn(*args)), (lambda: fn(*args).numpy()), feeds, consts


# ----------------------------------------------------------------------------- ONNX Runtime
def build_ort(kind, shape, feeds, consts, threads):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes, inputs = [], [], []
    if kind.startswith("dense"):
        inits = [numpy_helper.from_array(consts["w"], "w"), numpy_helper.from_array(consts["b"], "bias")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "bias"], ["y0"])]
        last = "y0"
        if kind == "dense_gelu":
            # erf GELU as exporters spell it; ORT fuses it (BiasGelu) with full optimizations
            inits.append(numpy_helper.from_array(np.array(2 ** 0.5, "float32"), "sqrt2"))
            inits.append(numpy_helper.from_array(np.array(1.0, "float32"), "one"))
            inits.append(numpy_helper.from_array(np.array(0.5, "float32"), "half"))
            nodes += [helper.make_node("Div", ["y0", "sqrt2"], ["g0"]), helper.make_node("Erf", ["g0"], ["g1"]),
                      helper.make_node("Add", ["g1", "one"], ["g2"]), helper.make_node("Mul", ["y0", "g2"], ["g3"]),
                      helper.make_node("Mul", ["g3", "half"], ["y1"])]
            last = "y1"
        names = ["x"]
        if kind == "dense_res":
            nodes.append(helper.make_node("Add", ["y0", "r"], ["y1"]))
            names.append("r")
            last = "y1"
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    elif kind == "bmm":
        names = ["a", "b"]
        nodes = [helper.make_node("MatMul", ["a", "b"], ["y"])]
    elif kind == "softmax":
        names = ["a"]
        nodes = [helper.make_node("Softmax", ["a"], ["y"], axis=-1)]
    elif kind == "layernorm":
        names = ["a"]
        inits = [numpy_helper.from_array(consts["g"], "g"), numpy_helper.from_array(consts["b"], "be")]
        nodes = [helper.make_node("LayerNormalization", ["a", "g", "be"], ["y"], axis=-1, epsilon=1e-12)]
    inputs = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, list(f.shape)) for nm, f in zip(names, feeds)]
    graph = helper.make_graph(nodes, "k", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = dict(zip(names, feeds))
    return lambda: sess.run(None, feed)[0]


# ----------------------------------------------------------------------------- attention
def attention_feeds(seq, rng):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    mask = np.where(rng.random((1, 1, seq, seq)) > 0.1, 0.0, -1e9).astype(np.float32)
    return [f(1, HEADS, seq, DH), f(1, HEADS, seq, DH), f(1, HEADS, seq, DH), mask]


def build_attention_optc(target, fused: bool):
    """One IR Attention node compiled with the fused kernel, or (``fused=False``) with the
    decomposition the lowering keeps for variants the kernel does not take."""
    from optc.codegen.build import build
    from optc.codegen.schedules import attention
    from optc.ir import DType, Graph, TensorType

    g = Graph("attention")
    t = TensorType(DType.FLOAT32, (1, HEADS, "seq", DH))
    q, k, v = g.add_input("q", t), g.add_input("k", t), g.add_input("v", t)
    m = g.add_input("m", TensorType(DType.FLOAT32, (1, 1, "seq", "seq")))
    g.set_outputs([g.op("Attention", q, k, v, m)])
    plan = attention.plan
    if not fused:
        attention.plan = lambda node, tgt: (None, "bench: the decomposition")
    try:
        cm = build(g, target)
    finally:
        attention.plan = plan
    return cm.load()


def attention_runner(model, feeds):
    import tvm

    args = [tvm.runtime.tensor(f) for f in feeds]
    fn = model._main
    return (lambda: fn(*args)), (lambda: fn(*args)[0].numpy())


def build_attention_ort(feeds, threads):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    names = ["q", "k", "v", "m"]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s0"]), helper.make_node("Mul", ["s0", "scale"], ["s1"]),
             helper.make_node("Add", ["s1", "m"], ["s2"]), helper.make_node("Softmax", ["s2"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    inits = [numpy_helper.from_array(np.array(DH ** -0.5, np.float32), "scale")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(f.shape)) for n, f in zip(names, feeds)]
    graph = helper.make_graph(nodes, "attn", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = dict(zip(names, feeds))
    return lambda: sess.run(None, feed)[0]


def bench_attention(target, rng, threads: int, rounds: int) -> bool:
    """Fused kernel vs decomposition (vs ORT, torch) at the MiniLM attention shapes, seq 128 and 32."""
    import torch
    import torch.nn.functional as F

    fused, decomposed = build_attention_optc(target, True), build_attention_optc(target, False)
    print(f"\n{'attention [1,12,seq,32], float mask':<38} {'fused us':>14} {'decomposed us':>14} {'ORT us':>14}"
          f" {'torch us':>14} {'fused/dec':>9} {'fused/ORT':>9} {'fused/torch':>11}")
    ok = True
    for seq in (SEQ, 32):
        feeds = attention_feeds(seq, rng)
        run_f, get_f = attention_runner(fused, feeds)
        run_d, get_d = attention_runner(decomposed, feeds)
        run_ort = build_attention_ort(feeds, threads)
        tq, tk, tv, tm = (torch.from_numpy(f) for f in feeds)
        run_torch = lambda: F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm)  # noqa: E731
        err = max(float(np.abs(get_f() - run_ort()).max()), float(np.abs(get_d() - run_ort()).max()))
        ok &= err <= 1e-4
        with torch.no_grad():
            r = time_rounds({"fused": run_f, "dec": run_d, "ort": run_ort, "torch": run_torch}, rounds, shuffle=True)
        cells = " ".join(f"{r[k][0] * 1e6:>7.1f} ({r[k][1] * 1e6:>5.1f})" for k in ("fused", "dec", "ort", "torch"))
        tf = r["fused"][0]
        print(f"{'seq ' + str(seq):<38} {cells} {tf / r['dec'][0]:>9.2f} {tf / r['ort'][0]:>9.2f}"
              f" {tf / r['torch'][0]:>11.2f}   [max|optc-ORT| {err:.1e}]")
    return ok


# ----------------------------------------------------------------------------- torch
def build_torch(kind, feeds, consts):
    import torch
    import torch.nn.functional as F

    t = [torch.from_numpy(f) for f in feeds]
    if kind.startswith("dense"):
        wt = torch.from_numpy(np.ascontiguousarray(consts["w"].T))
        b = torch.from_numpy(consts["b"])
        if kind == "dense_gelu":
            return lambda: F.gelu(F.linear(t[0], wt, b))
        if kind == "dense_res":
            return lambda: F.linear(t[0], wt, b) + t[1]
        return lambda: F.linear(t[0], wt, b)
    if kind == "bmm":
        return lambda: torch.matmul(t[0], t[1])
    if kind == "softmax":
        return lambda: torch.softmax(t[0], -1)
    g, b = torch.from_numpy(consts["g"]), torch.from_numpy(consts["b"])
    return lambda: F.layer_norm(t[0], (t[0].shape[-1],), g, b, 1e-12)


# ----------------------------------------------------------------------------- int8 dense
def build_int8(kind, shape, feeds, consts, target, quantize: bool):
    """optc's int8 dense on the fp32 layer's weight (symmetric int8 per column); ``quantize``
    includes the per-row quantization of the float input, else the codes are given (the GEMM and
    its epilogue alone). Returns ``(run, get)``."""
    import tvm
    from tvm import relax, tirx

    from optc.codegen.schedules import qdense, testing

    m, k, n = shape
    w = consts["w"]
    w_scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    w_int8 = np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8)
    qmax = qdense.activation_qmax(target)
    s = tirx.Var("s", "int64")
    bb = relax.BlockBuilder()
    if quantize:
        params = [relax.Var("x", relax.TensorType([1, s, k], "float32"))]
        args = [feeds[0]]
    else:
        params = [relax.Var("xq", relax.TensorType([1, s, k], "uint8")), relax.Var("zp", relax.TensorType([s], "int32")),
                  relax.Var("sc", relax.TensorType([s], "float32"))]
        args = list(_quantize_rows(feeds[0].reshape(m, k), qmax))
        args[0] = args[0].reshape(1, m, k)
    if kind == "dense_res":
        params.append(relax.Var("r", relax.TensorType([1, s, n], "float32")))
        args.append(feeds[1])
    with bb.function("main", params):
        with bb.dataflow():
            codes = qdense.quantize_rows_call(bb, params[0], qmax) if quantize else params[:3]
            y = qdense.qdense_call(bb, *codes, w_int8, w_scale, consts["b"], target)
            if kind == "dense_gelu":
                y = bb.emit(relax.op.nn.gelu(y))
            if kind == "dense_res":
                y = bb.emit(relax.op.add(y, params[-1]))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    fn = testing.build(bb.get(), target)["main"]
    targs = [tvm.runtime.tensor(a) for a in args]
    return (lambda: fn(*targs)), (lambda: fn(*targs).numpy())


def _quantize_rows(x, qmax):
    """The per-row quantization (the formulas of ``qdense.quantize_rows_te``) in numpy."""
    lo, hi = np.minimum(0, x.min(1)), np.maximum(0, x.max(1))
    scale = ((hi - lo) / np.float32(qmax)).astype(np.float32)
    scale[scale == 0] = 1
    zp = np.clip(np.rint(-lo / scale), 0, qmax).astype(np.int32)
    return np.clip(np.rint(x / scale[:, None]) + zp[:, None], 0, qmax).astype(np.uint8), zp, scale


def bench_int8(target, rng, rounds: int, only: str = "", clock=time.perf_counter) -> bool:
    """int8 vs fp32 dense at the MiniLM shapes (see the module doc)."""
    from optc.codegen.schedules.int8 import int8_microkernel

    kernel = int8_microkernel(target)
    if kernel is None:
        print(f"target {target.name} has no int8 dense kernel")
        return False
    print(f"int8 microkernel: {' + '.join(kernel.mnemonics)} ({kernel.lanes} int32 lanes), codes 0..{kernel.qmax}")
    print(f"{'dense (M=128)':<42} {'fp32 us':>14} {'int8 us':>14} {'int8+quant us':>14} {'fp32/int8':>9}"
          f" {'fp32/(int8+q)':>13} {'int8 GOP/s':>10}")
    ok = True
    for name, kind, shape, flops in kernels():
        if not kind.startswith("dense") or (only and only not in name):
            continue
        run_f, get_f, feeds, consts = build_optc(kind, shape, rng, target)
        run_i, get_i = build_int8(kind, shape, feeds, consts, target, quantize=False)
        run_q, get_q = build_int8(kind, shape, feeds, consts, target, quantize=True)
        ref = get_f()
        err = float(np.abs(get_q() - ref).max() / np.abs(ref).max())
        ok &= err < 0.05 and np.array_equal(get_q(), get_i())
        r = time_rounds({"fp32": run_f, "int8": run_i, "int8q": run_q}, rounds, shuffle=True, clock=clock)
        (tf, mf), (ti, mi), (tq, mq) = r["fp32"], r["int8"], r["int8q"]
        print(f"{name:<42} {tf * 1e6:>7.1f} ({mf * 1e6:>5.1f}) {ti * 1e6:>7.1f} ({mi * 1e6:>5.1f})"
              f" {tq * 1e6:>7.1f} ({mq * 1e6:>5.1f}) {tf / ti:>9.2f} {tf / tq:>13.2f} {flops / ti / 1e9:>10.1f}"
              f"   [max|int8-fp32| / max|fp32| {err:.1e}]")
    return ok


def time_rounds(fns: dict, rounds: int, min_time: float = 0.05, shuffle: bool = False, clock=time.perf_counter) -> dict:
    """Interleave the candidates: per round, each runs a batch of calls; returns median/min per call.
    ``shuffle`` varies the order per round (ORT's and torch's worker threads spin for a while after
    a call and slow whichever candidate runs next). ``clock=time.thread_time`` times the calling
    thread's CPU time: with one thread (TVM runs it on the caller) it ignores time lost to other
    processes on a loaded machine."""
    for f in fns.values():
        for _ in range(5):
            f()
    per = {}
    for name, f in fns.items():
        t0 = clock()
        f()
        per[name] = max(1, int(min_time / max(clock() - t0, 1e-6)))
    res = {name: [] for name in fns}
    order = list(fns.items())
    rng = np.random.default_rng(1)
    for _ in range(rounds):
        if shuffle:
            order = [order[i] for i in rng.permutation(len(order))]
        for name, f in order:
            n = per[name]
            t0 = clock()
            for _ in range(n):
                f()
            res[name].append((clock() - t0) / n)
    return {name: (statistics.median(v), min(v)) for name, v in res.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", default="", help="substring of the kernel names to run")
    ap.add_argument("--target", default="x86")
    ap.add_argument("--int8", action="store_true", help="optc's int8 dense vs its fp32 dense (dense layers only)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="with --int8 --threads 1: time the thread's CPU time, not wall time (a loaded machine)")
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    if os.environ["TVM_NUM_THREADS"] != str(args.threads):
        print(f"note: TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']} overrides --threads for optc")
    import torch

    from optc.targets import get_target

    torch.set_num_threads(args.threads)
    target = get_target(args.target)
    rng = np.random.default_rng(0)
    print(f"target {target.name} ({target.vector_bits}-bit vectors, {target.num_cores} cores), "
          f"{args.threads} threads, {args.rounds} interleaved rounds; times are medians (min)")
    if args.int8:
        if args.cpu_time and args.threads != 1:
            ap.error("--cpu-time measures the calling thread: use it with --threads 1")
        clock = time.thread_time if args.cpu_time else time.perf_counter
        return 0 if bench_int8(target, rng, args.rounds, args.only, clock) else 1
    hdr = f"{'kernel':<42} {'optc us':>14} {'ORT us':>14} {'torch us':>14} {'optc GF/s':>9} {'ORT GF/s':>9} {'optc/ORT':>8} {'optc/torch':>10}"
    print(hdr)
    ok = True
    for name, kind, shape, flops in kernels():
        if args.only and args.only not in name:
            continue
        t0 = time.perf_counter()
        run_optc, get_optc, feeds, consts = build_optc(kind, shape, rng, target)
        t_compile = time.perf_counter() - t0
        run_ort = build_ort(kind, shape, feeds, consts, args.threads)
        run_torch = build_torch(kind, feeds, consts)
        err = float(np.abs(get_optc() - run_ort()).max())
        if err > 1e-3:
            ok = False
        with torch.no_grad():
            r = time_rounds({"optc": run_optc, "ort": run_ort, "torch": run_torch}, args.rounds)
        (to, mo), (tr, mr), (tt, mt) = r["optc"], r["ort"], r["torch"]
        print(f"{name:<42} {to * 1e6:>7.1f} ({mo * 1e6:>5.1f}) {tr * 1e6:>7.1f} ({mr * 1e6:>5.1f}) {tt * 1e6:>7.1f} ({mt * 1e6:>5.1f})"
              f" {flops / to / 1e9:>9.1f} {flops / tr / 1e9:>9.1f} {to / tr:>8.2f} {to / tt:>10.2f}"
              f"   [compile {t_compile:.1f}s, max|optc-ORT| {err:.1e}]")
    if not args.only or args.only in "attention":
        ok &= bench_attention(target, rng, args.threads, args.rounds)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
