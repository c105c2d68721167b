"""Hostile inputs for the run-time checks (tests/test_runtime_checks.py): each case is a small graph
and feeds, some valid, some out of range. ``python tests/runtime_check_cases.py`` builds every
case with TVM, runs each feed through the reference interpreter and the compiled module, and
prints one JSON line per feed. It runs in a subprocess of the tests: a compiled kernel that reads
or writes out of bounds would kill this process with a signal, which fails the tests instead of
killing pytest. Before each run it prints a ``running`` line, so a crash names its case and feed.

A feed's ``expect`` is None (valid: both backends must agree on the outputs) or the text of the
one-line error both must raise (``ir/checks.py``'s wording). ``raw`` feeds skip the Python
runtime's input checks and call the module directly, to exercise the checks inside it.
"""

from __future__ import annotations

import json
import sys
from typing import Callable

import numpy as np

from optc.ir import DType, Graph, TensorType

F32, I32, I64, U8 = DType.FLOAT32, DType.INT32, DType.INT64, DType.UINT8
CASES: dict[str, Callable[[], tuple[Graph, list[dict]]]] = {}


def case(fn):
    CASES[fn.__name__.lstrip("_")] = fn
    return fn


def named(g: Graph, name: str, op: str, *inputs, **attrs):
    """``g.op`` with a node name (the messages name it)."""
    return g.add_node(op, inputs, attrs, name=name).output


def feed(expect: str | None = None, raw: bool = False, **arrays) -> dict:
    return {"arrays": {k: np.asarray(v) for k, v in arrays.items()}, "expect": expect, "raw": raw}


def _f(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- indices ---------------------------------------------------------------------------------------
@case
def _gather_token_ids():
    """Token ids past the vocabulary (the table is a constant, the ids symbolic [b, s])."""
    g = Graph("gather_ids")
    ids = g.add_input("ids", TensorType(I64, ("b", "s")))
    table = g.add_constant(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    g.set_outputs([named(g, "embed", "Gather", table, ids, axis=0)])
    err = "node embed (Gather): index out of range [-10, 10) on axis 0"
    return g, [feed(ids=[[1, 9, -3, -10]]), feed(err, ids=[[1, 10]]), feed(err, ids=[[-11, 0]]),
               feed(err, ids=[[3, 10**12]]), feed(err, ids=[[0], [2**62]])]


@case
def _gather_symbolic_table():
    """The table's gathered axis is symbolic: the message names the dim."""
    g = Graph("gather_sym")
    x = g.add_input("x", TensorType(F32, (3, "n")))
    i = g.add_input("i", TensorType(I32, (2,)))
    g.set_outputs([named(g, "pick", "Gather", x, i, axis=1)])
    err = "node pick (Gather): index out of range [-n, n) on axis 1"
    return g, [feed(x=_f(3, 5), i=np.int32([4, -5])), feed(err, x=_f(3, 5), i=np.int32([5, 0])),
               feed(err, x=_f(3, 2), i=np.int32([0, -3]))]


@case
def _gather_constant_index_symbolic_table():
    """A constant index into an axis known only at run time: checked once (against the dim),
    not element by element."""
    g = Graph("gather_const_sym")
    x = g.add_input("x", TensorType(F32, (3, "n")))
    g.set_outputs([named(g, "pick", "Gather", x, g.add_constant(np.int64([2, -1])), axis=1)])
    return g, [feed(x=_f(3, 5)), feed(x=_f(3, 3)),
               feed("node pick (Gather): index out of range [-n, n) on axis 1", x=_f(3, 2))]


@case
def _gather_elements():
    g = Graph("gather_el")
    x = g.add_input("x", TensorType(F32, (5, "m")))
    i = g.add_input("i", TensorType(I64, (2, "k")))
    g.set_outputs([named(g, "ge", "GatherElements", x, i, axis=0)])
    return g, [feed(x=_f(5, 3), i=[[0, -1, 4], [2, 3, -5]]),
               feed("node ge (GatherElements): index out of range [-5, 5) on axis 0", x=_f(5, 3), i=[[0, 1, 2], [5, 0, 0]]),
               feed("node ge (GatherElements): indices dim 1 (extent k) exceeds data dim 1 (extent m)",
                    x=_f(5, 2), i=[[0, 1, 2], [0, 0, 0]])]


@case
def _gather_nd():
    g = Graph("gather_nd")
    x = g.add_input("x", TensorType(F32, (5, 3)))
    i = g.add_input("i", TensorType(I64, ("n", 2)))
    g.set_outputs([named(g, "gnd", "GatherND", x, i)])
    return g, [feed(x=_f(5, 3), i=[[-1, -1], [0, 1], [4, 2]]),
               feed("node gnd (GatherND): index out of range [-5, 5) on axis 0", x=_f(5, 3), i=[[0, 0], [99999999, 1]]),
               feed("node gnd (GatherND): index out of range [-3, 3) on axis 1", x=_f(5, 3), i=[[0, 3]])]


@case
def _gather_nd_batch():
    g = Graph("gather_nd_b")
    x = g.add_input("x", TensorType(F32, ("b", 4, 3)))
    i = g.add_input("i", TensorType(I64, ("c", 2, 1)))
    g.set_outputs([named(g, "gndb", "GatherND", x, i, batch_dims=1)])
    return g, [feed(x=_f(2, 4, 3), i=[[[3], [-4]], [[0], [1]]]),
               feed("node gndb (GatherND): index out of range [-4, 4) on axis 1", x=_f(2, 4, 3), i=[[[4], [0]], [[0], [1]]]),
               feed("node gndb (GatherND): indices dim 0 (extent c) differs from data dim 0 (extent b)",
                    x=_f(2, 4, 3), i=[[[0], [0]]])]


@case
def _scatter_nd():
    g = Graph("scatter_nd")
    x = g.add_input("x", TensorType(F32, (5, 3)))
    i = g.add_input("i", TensorType(I64, ("n", 1)))
    u = g.add_input("u", TensorType(F32, ("m", 3)))
    g.set_outputs([named(g, "snd", "ScatterND", x, i, u), named(g, "snd_add", "ScatterND", x, i, u, reduction="add")])
    return g, [feed(x=_f(5, 3), i=[[1], [-1]], u=_f(2, 3, seed=1)),
               feed("node snd (ScatterND): index out of range [-5, 5) on axis 0", x=_f(5, 3), i=[[1], [99999999]], u=_f(2, 3)),
               feed("node snd (ScatterND): index out of range [-5, 5) on axis 0", x=_f(5, 3), i=[[-6]], u=_f(1, 3)),
               feed("node snd (ScatterND): updates shape must be [n, 3]", x=_f(5, 3), i=[[1], [2]], u=_f(3, 3))]


@case
def _scatter_elements():
    g = Graph("scatter_el")
    x = g.add_input("x", TensorType(F32, (5, 3)))
    i = g.add_input("i", TensorType(I64, ("n", 3)))
    u = g.add_input("u", TensorType(F32, ("m", 3)))
    g.set_outputs([named(g, "se", "ScatterElements", x, i, u, axis=0)])
    return g, [feed(x=_f(5, 3), i=[[1, -1, 0]], u=_f(1, 3)),
               feed("node se (ScatterElements): index out of range [-5, 5) on axis 0", x=_f(5, 3), i=[[1, 99999999, 0]], u=_f(1, 3)),
               feed("node se (ScatterElements): updates shape must be [n, 3]", x=_f(5, 3), i=[[1, 2, 0]], u=_f(2, 3))]


@case
def _onehot_out_of_range_is_all_off():
    """OneHot's out-of-range indices give all-off rows (ONNX): not an error, in both backends."""
    g = Graph("onehot")
    i = g.add_input("i", TensorType(I64, ("n",)))
    g.set_outputs([g.op("OneHot", i, g.add_constant(np.int64(4)), g.add_constant(np.float32([0, 1])))])
    return g, [feed(i=[0, 3, -1, 4, -5, 10**12])]


# -- integer division ------------------------------------------------------------------------------
@case
def _integer_division():
    """x86 kills the process (SIGFPE) on x / 0 and on INT_MIN / -1: a zero divisor is a one-line
    error in both backends; INT_MIN / -1 wraps to INT_MIN, INT_MIN % -1 is 0."""
    g = Graph("intdiv")
    a = g.add_input("a", TensorType(I64, ("n",)))
    b = g.add_input("b", TensorType(I64, ("n",)))
    a32 = g.op("Cast", a, to=I32)
    b32 = g.op("Cast", b, to=I32)
    g.set_outputs([named(g, "div", "Div", a, b), named(g, "mod", "Mod", a, b), named(g, "fmod", "Mod", a, b, fmod=1),
                   named(g, "div32", "Div", a32, b32)])
    lo = np.iinfo(np.int64).min
    return g, [feed(a=[7, -7, 7, -7, lo, lo, 5], b=[2, 2, -2, -2, -1, 1, -1]),
               feed(a=[lo // 2 ** 32, 5], b=[-1, -1])]


@case
def _division_by_zero():
    """One division per graph: independent checks may run in any order in the module, so a feed
    that two of them refuse could name either node."""
    g = Graph("div0")
    a = g.add_input("a", TensorType(I32, ("n",)))
    b = g.add_input("b", TensorType(I32, ("n",)))
    g.set_outputs([named(g, "div", "Div", a, b)])
    return g, [feed(a=np.int32([7, -7]), b=np.int32([2, -1])),
               feed("node div (Div): integer division by zero", a=np.int32([1, 2, 3]), b=np.int32([1, 0, 1]))]


@case
def _modulo_by_zero_alone():
    g = Graph("mod0")
    a = g.add_input("a", TensorType(U8, (3,)))
    b = g.add_input("b", TensorType(U8, (3,)))
    g.set_outputs([named(g, "m", "Mod", a, b)])
    return g, [feed(a=np.uint8([7, 200, 9]), b=np.uint8([2, 7, 255])),
               feed("node m (Mod): integer division by zero", a=np.uint8([7, 200, 9]), b=np.uint8([2, 0, 255]))]


# -- shapes ----------------------------------------------------------------------------------------
@case
def _expand_runtime_target():
    g = Graph("expand")
    x = g.add_input("x", TensorType(F32, (3, 1)))
    s = g.add_input("s", TensorType(I64, (2,)))
    g.set_outputs([named(g, "ex", "Expand", x, s)])
    return g, [feed(x=_f(3, 1), s=[3, 4]), feed(x=_f(3, 1), s=[1, 2]),
               feed("node ex (Expand): cannot broadcast dim 0 (extent 3) to the target", x=_f(3, 1), s=[5, 2])]


@case
def _expand_symbolic_input():
    """A symbolic input dim against a target known only at run time."""
    g = Graph("expand_sym")
    x = g.add_input("x", TensorType(F32, ("n",)))
    s = g.add_input("s", TensorType(I64, (1,)))
    g.set_outputs([named(g, "ex", "Expand", x, s)])
    return g, [feed(x=_f(4), s=[4]), feed(x=_f(4), s=[1]),
               feed("node ex (Expand): cannot broadcast dim 0 (extent n) to the target", x=_f(4), s=[3])]


@case
def _reshape_runtime_target():
    g = Graph("reshape")
    x = g.add_input("x", TensorType(F32, (2, 6)))
    s = g.add_input("s", TensorType(I64, (2,)))
    g.set_outputs([named(g, "rs", "Reshape", x, s)])
    err = "node rs (Reshape): cannot reshape [2, 6] to the target shape"
    return g, [feed(x=_f(2, 6), s=[-1, 3]), feed(x=_f(2, 6), s=[0, -1]), feed(err, x=_f(2, 6), s=[5, -1]),
               feed(err, x=_f(2, 6), s=[-1, -1]), feed(err, x=_f(2, 6), s=[-2, -6]), feed(err, x=_f(2, 6), s=[24, 1]),
               feed(err, x=_f(2, 6), s=[1, 5])]


@case
def _slice_start_past_end():
    """Slices whose start passes their end are empty (ONNX), with symbolic or run-time bounds."""
    g = Graph("slice")
    x = g.add_input("x", TensorType(F32, ("n", 2)))
    st = g.add_input("st", TensorType(I64, (1,)))
    en = g.add_input("en", TensorType(I64, (1,)))
    c = g.add_constant
    outs = [g.op("Slice", x, c(np.int64([5])), c(np.int64([2**62])), c(np.int64([0]))),
            g.op("Slice", x, c(np.int64([2])), c(np.int64([-2])), c(np.int64([0]))),
            g.op("Slice", x, c(np.int64([-5])), c(np.int64([2**62])), c(np.int64([0]))),
            g.op("Slice", x, st, en, c(np.int64([0])))]
    outs.append(g.op("Relu", g.op("Mul", outs[1], c(np.float32(-2.0)))))  # a clamped extent inside a fused kernel
    g.set_outputs(outs)
    return g, [feed(x=_f(3, 2), st=[2], en=[1]), feed(x=_f(8, 2), st=[-3], en=[100]),
               feed(x=_f(3, 2), st=[-100], en=[-1])]


@case
def _slice_runtime_negative_step():
    """Run-time bounds with a negative step (sliced backwards): ONNX's clamping to [0, d-1] and
    [-1, d-1], empty when the start does not pass the end."""
    g = Graph("slice_neg")
    x = g.add_input("x", TensorType(F32, (6, "n")))
    st = g.add_input("st", TensorType(I64, (2,)))
    en = g.add_input("en", TensorType(I64, (2,)))
    c = g.add_constant
    g.set_outputs([g.op("Slice", x, st, en, c(np.int64([0, 1])), c(np.int64([-1, 2])))])
    x0 = _f(6, 5)
    return g, [feed(x=x0, st=[-1, 0], en=[-100, 100]), feed(x=x0, st=[100, -3], en=[0, 5]),
               feed(x=x0, st=[2, 1], en=[4, 0]), feed(x=x0, st=[3, -100], en=[-100, -1]), feed(x=x0, st=[0, 4], en=[-1, 2])]


@case
def _range_runtime_limit():
    g = Graph("range")
    n = g.add_input("n", TensorType(I64, ()))
    c = g.add_constant
    g.set_outputs([g.op("Range", c(np.int64(2)), n, c(np.int64(1))), g.op("Range", c(np.int64(2)), n, c(np.int64(-2)))])
    return g, [feed(n=np.int64(5)), feed(n=np.int64(2)), feed(n=np.int64(-3))]


# -- the module's own assumptions --------------------------------------------------------------------
@case
def _assumption_checked_inside_module():
    """``table[:s]`` assumes s <= 8; a raw call (no Python input checks) still refuses s = 9, and
    zero-size inputs, inside the module."""
    g = Graph("assume")
    ids = g.add_input("ids", TensorType(I64, ("b", "s")))
    table = g.add_constant(np.arange(16, dtype=np.float32).reshape(8, 2))
    c = g.add_constant
    seq = g.op("Unsqueeze", g.op("Gather", g.op("Shape", ids), c(np.int64(1))), c(np.int64([0])))
    pos = named(g, "pos", "Slice", table, c(np.int64([0])), seq, c(np.int64([0])))
    g.set_outputs([g.op("Add", pos, g.op("Cast", g.op("Unsqueeze", ids, c(np.int64([2]))), to=F32))])
    return g, [feed(ids=np.ones((2, 8), np.int64)), feed(ids=np.ones((1, 3), np.int64), raw=True),
               feed("node pos (Slice): the module was compiled for s <= 8 (slice end of node pos)",
                    ids=np.ones((1, 9), np.int64), raw=True),
               feed("input 'ids': b, s must be >= 1 (zero-size inputs are not supported)",
                    ids=np.ones((0, 3), np.int64), raw=True),
               feed("input 'ids': dim 1 (s) is 0; a dim not fixed at compile time must be >= 1 (zero-size inputs are "
                    "not supported)", ids=np.ones((2, 0), np.int64))]


# -- the runner ------------------------------------------------------------------------------------
def _outcome(fn) -> dict:
    from optc.ir.errors import OptcError

    try:
        return {"ok": fn()}
    except OptcError as e:
        return {"error": type(e).__name__, "message": str(e)}


def _same(a: dict, b: dict) -> bool:
    if list(a) != list(b):
        return False
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.dtype.kind == "f":
            if not np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def run_case(name: str, checked: bool = True, out=sys.stdout) -> None:
    """Build case ``name``; print one JSON line per feed (interpreter vs compiled). Unchecked
    builds run the valid feeds only (they trust their inputs)."""
    from optc.codegen.build import build
    from optc.ir.interpreter import run

    g, feeds = CASES[name]()
    model = build(g, "x86", checked=checked).load()
    for k, f in enumerate(feeds):
        if not checked and (f["expect"] is not None or f["raw"]):
            continue
        print(json.dumps({"running": name, "feed": k}), file=out, flush=True)
        arrays = f["arrays"]
        ref = _outcome(lambda: run(g, arrays))
        if f["raw"]:
            def call():
                args = [model._tensor(np.ascontiguousarray(arrays[s.name])) for s in model.inputs]
                try:
                    res = model._main(*args)
                except Exception as e:  # noqa: BLE001  (the registered check kind arrives as InvalidValueError)
                    from optc.ir.errors import InvalidValueError

                    if isinstance(e, InvalidValueError):
                        raise InvalidValueError(str(e).strip().splitlines()[-1]) from None
                    raise
                return {s.name: res[i].numpy() for i, s in enumerate(model.outputs)}
            tvm = _outcome(call)
        else:
            tvm = _outcome(lambda: model.run(arrays))
        same = "ok" in ref and "ok" in tvm and _same(ref["ok"], tvm["ok"])
        strip = {k: v for k, v in ref.items() if k != "ok"}, {k: v for k, v in tvm.items() if k != "ok"}
        print(json.dumps({"case": name, "feed": k, "expect": f["expect"], "raw": f["raw"], "same": same,
                          "ref": strip[0] or "ok", "tvm": strip[1] or "ok"}), file=out, flush=True)


def main(argv: list[str]) -> int:
    checked = "--unchecked" not in argv
    names = [a for a in argv if not a.startswith("--")] or list(CASES)
    for name in names:
        run_case(name, checked)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
