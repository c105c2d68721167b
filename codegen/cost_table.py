"""Per-target cost table of dense layers at each precision, measured on the target's own kernels:
what ``assign-precision{latency=...}`` (and ``objective=latency``) trades accuracy against.

One entry per (K, N, rows, precision, int8 settings): a module holding one ``QLinear`` (or the
fp32 ``Linear``) with the layer's shape is compiled for the target and timed on this machine
(median of repeated runs). Entries are cached in ``<cache>/cost-table/<target>.json`` (the key
hashes the target description and the TVM version), written atomically, so a model's layers are
measured once per machine. A foreign-architecture target (arm64 here) cannot be timed on this
machine: that is a clear error, not numbers from another CPU.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from typing import Iterable

import ml_dtypes
import numpy as np

from ..ir import DType, Graph, TensorType
from ..ir.errors import OptcError

REPEAT = 30


def _key(k: int, n: int, rows: int, precision: str, cfg) -> str:
    extra = {"int8": f"{cfg.int8_act}-{cfg.act_qmax}", "int4": f"g{cfg.group_size}"}.get(precision, "")
    return f"{k}x{n}@{rows}:{precision}:{extra}"


def _graph(k: int, n: int, rows: int, precision: str, cfg) -> Graph:
    rng = np.random.default_rng(0)
    g = Graph("cost")
    x = g.add_input("x", TensorType(DType.FLOAT32, (rows, k)))
    b = g.add_constant(rng.standard_normal(n).astype(np.float32), "b")
    if precision == "fp32":
        y = g.op("Linear", x, g.add_constant(rng.standard_normal((k, n)).astype(np.float32), "w"), b)
    elif precision in ("bf16", "fp16"):
        wt = ml_dtypes.bfloat16 if precision == "bf16" else np.float16
        y = g.op("QLinear", x, g.add_constant(rng.standard_normal((k, n)).astype(wt), "w"), None, None, b)
    elif precision == "int8":
        act = cfg.int8_act
        extra = [g.add_constant(np.float32(0.05), "xs"), g.add_constant(np.uint8(64), "xz")] if act == "static" else []
        y = g.op("QLinear", x, g.add_constant(rng.integers(-127, 128, (k, n)).astype(np.int8), "w"),
                 g.add_constant(np.full(n, 0.01, np.float32), "s"), None, b, *extra, act_quant=act,
                 act_qmax=cfg.act_qmax)
    else:  # int4
        groups = -(-k // cfg.group_size)
        y = g.op("QLinear", x, g.add_constant(rng.integers(-8, 8, (k, n)).astype(ml_dtypes.int4), "w"),
                 g.add_constant(np.full((groups, n), 0.01, np.float32), "s"), None, b, group_size=cfg.group_size)
    g.set_outputs([y])
    g.infer_types()
    return g


def _measure(k: int, n: int, rows: int, precision: str, cfg, target) -> float:
    from .build import build

    module = build(_graph(k, n, rows, precision, cfg), target).load()
    feed = {"x": np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)}
    for _ in range(3):
        module.run(feed)
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        module.run(feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def dense_costs(shapes: Iterable[tuple[int, int, int]], precisions: Iterable[str], cfg, target) -> dict:
    """Seconds per call of a dense layer ``[rows, K] @ [K, N]`` at each precision on ``target``
    (an optc target or its name): ``{(K, N, rows, precision): seconds}``."""
    from ..fileio import atomic_write_bytes
    from ..native.toolchain import cache_root
    from ..targets import get_target, host_problem

    t = get_target(target)
    why = host_problem(t.describe())
    if why is not None:
        raise OptcError(f"cannot measure a latency cost table for {t.name} on this machine: {why}")
    import tvm

    ident = hashlib.sha256(json.dumps([t.describe(), tvm.__version__], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_root() / "cost-table" / f"{t.name}-{ident}.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    out, new = {}, False
    for k, n, rows in dict.fromkeys(shapes):
        for p in precisions:
            key = _key(k, n, rows, p, cfg)
            if key not in table:
                table[key] = _measure(k, n, rows, p, cfg, t)
                new = True
            out[(k, n, rows, p)] = table[key]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(table, indent=1, sort_keys=True).encode())
    return out
