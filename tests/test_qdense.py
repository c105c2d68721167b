"""optc's int8 dense for x86 (``codegen/schedules/qdense.py``): per-row activation quantization +
an int8 GEMM whose inner step is the target's microkernel, with a float epilogue.

* numerics, bit for bit, against a numpy reference of the formulas (codes, zero points, scales,
  and the float32 output in the stated order: the kernel fences the product against FMA
  contraction): rows 0, 1, 7, 128 (static and symbolic; ``[batch, seq]`` both symbolic), K 384 /
  100 (not a multiple of the vector width) / 99 (not a multiple of 4) / 1536, N 384 / 1000 (not a
  multiple of the panel) / 1536, with a bias and a fused residual add; a fused GELU is compared
  with a tolerance (it is the vectorizable ``fast_erf`` one);
* the qmax = 127 worst case (codes 127, weights -128 everywhere) is exact, and codes of 255 do
  saturate the AVX2 kernel (why its activations have 7 bits);
* the AVX512-VNNI tiling (16 lanes, 6 x 64, codes 0..255) replayed here with a portable 16-lane
  microkernel; the VNNI build itself runs only on a CPU with avx512_vnni;
* the disassembly: the x86-avx2 build's hot loop is ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd``
  with no spills, cascadelake's (AVX512-VNNI, zmm) and alderlake's (AVX-VNNI, ymm) ``vpdpbusd``,
  x86-avx512's zmm ``vpmaddubsw``; negative control: optc's fp32 dense fails the predicate.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402

import disasm  # noqa: E402
from optc.codegen.schedules import qdense as Q  # noqa: E402
from optc.codegen.schedules import testing  # noqa: E402
from optc.codegen.schedules.int8 import PMADD_256, VNNI_512, activation_qmax, int8_microkernel  # noqa: E402
from optc.targets import get_target  # noqa: E402
from optc.targets.x86 import host_cpu_flags  # noqa: E402

CASCADELAKE = '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake"}'
ALDERLAKE = '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake"}'
NO_NEON = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["-neon"]}'  # no int8 microkernel


@pytest.fixture(scope="module")
def target():
    t = get_target("x86")
    if int8_microkernel(t) is None:
        pytest.skip("this CPU has no int8 microkernel (no AVX2)")
    return t


# ----------------------------------------------------------------------------- numpy reference
def ref_quantize(x: np.ndarray, qmax: int):
    """The per-row quantization, in float32 as specified: (codes, zp, scale) of x [M, K]."""
    x = x.astype(np.float32)
    lo = np.minimum(np.float32(0), x.min(axis=1))
    hi = np.maximum(np.float32(0), x.max(axis=1))
    scale = (hi - lo) / np.float32(qmax)
    scale[scale == 0] = np.float32(1)
    zp = np.clip(np.rint(-lo / scale), 0, qmax).astype(np.int32)
    q = np.clip(np.rint(x / scale[:, None]) + zp[:, None], 0, qmax).astype(np.uint8)
    return q, zp, scale.astype(np.float32)


def ref_qdense(q, zp, scale, w, w_scale, bias):
    """y = float32(acc) * (x_scale * w_scale) + B, acc in exact integers (float64 products of
    bytes summed over K <= 1536 stay below 2^53: exact, and BLAS-fast)."""
    acc = np.rint(q.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
    acc -= zp.astype(np.int64)[:, None] * w.astype(np.int64).sum(axis=0)[None, :]
    y = acc.astype(np.int32).astype(np.float32) * (scale[:, None] * w_scale[None, :])
    return y + bias if bias is not None else y


def _gelu(x):
    return (x * 0.5 * (1.0 + np.vectorize(math.erf)(x / np.sqrt(2.0)))).astype(np.float32)


def _weights(k, n, seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w_scale = (rng.random(n) * 0.02 + 1e-3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    return w, w_scale, bias


# ----------------------------------------------------------------------------- modules
def quant_dense_module(target, lead, k, w, w_scale, bias, epilogue=None):
    """main(x [*lead, k] f32 [, r]) -> (xq, zp, scale, y): quantize_rows_call + qdense_call."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(lead) + [k], "float32"))
    params = [x]
    if epilogue == "residual":
        params.append(relax.Var("r", relax.TensorType(list(lead) + [w.shape[1]], "float32")))
    with bb.function("main", params):
        with bb.dataflow():
            xq, zp, sc = Q.quantize_rows_call(bb, x, activation_qmax(target))
            y = Q.qdense_call(bb, xq, zp, sc, w, w_scale, bias, target)
            if epilogue == "gelu":
                y = bb.emit(relax.op.nn.gelu(y))
            elif epilogue == "residual":
                y = bb.emit(relax.op.add(y, params[1]))
            out = bb.emit_output(relax.Tuple([xq, zp, sc, y]))
        bb.emit_func_output(out)
    return bb.get()


def codes_dense_module(target, k, w, w_scale, bias):
    """main(xq [s, k] u8, zp [s] i32, scale [s] f32) -> y: qdense_call on given codes."""
    s = tirx.Var("s", "int64")
    bb = relax.BlockBuilder()
    xq = relax.Var("xq", relax.TensorType([s, k], "uint8"))
    zp = relax.Var("zp", relax.TensorType([s], "int32"))
    sc = relax.Var("sc", relax.TensorType([s], "float32"))
    with bb.function("main", [xq, zp, sc]):
        with bb.dataflow():
            out = bb.emit_output(Q.qdense_call(bb, xq, zp, sc, w, w_scale, bias, target))
        bb.emit_func_output(out)
    return bb.get()


def _run(vm, *arrays):
    out = vm["main"](*(tvm.runtime.tensor(a) for a in arrays))
    return out.numpy() if hasattr(out, "numpy") else [o.numpy() for o in out]


def _check_exact(got, x2d, qmax, w, w_scale, bias):
    q, zp, scale = ref_quantize(x2d, qmax)
    gq, gzp, gscale, gy = got
    m = x2d.shape[0]
    np.testing.assert_array_equal(gq.reshape(m, x2d.shape[1]), q)
    np.testing.assert_array_equal(gzp, zp)
    np.testing.assert_array_equal(gscale, scale)
    np.testing.assert_array_equal(gy.reshape(m, w.shape[1]), ref_qdense(q, zp, scale, w, w_scale, bias))
    return q, zp, scale


# ----------------------------------------------------------------------------- target choices
def test_microkernel_follows_features():
    """The microkernel (and so the activation range) comes from the target's features: VNNI
    where ``vpdpbusd`` exists, 7-bit codes where pair sums go through int16, nothing elsewhere."""
    assert int8_microkernel(get_target("x86-avx2")) == PMADD_256
    assert activation_qmax(get_target("x86-avx2")) == 127
    assert int8_microkernel(get_target("x86-avx512")).mnemonics == ("vpmaddubsw", "vpmaddwd")  # no VNNI
    assert activation_qmax(get_target("x86-avx512")) == 127
    assert int8_microkernel(get_target(CASCADELAKE)) == VNNI_512
    assert activation_qmax(get_target(CASCADELAKE)) == 255
    alder = int8_microkernel(get_target(ALDERLAKE))  # AVX-VNNI, 256-bit
    assert alder.mnemonics == ("vpdpbusd",) and alder.lanes == 8 and alder.qmax == 255
    for name in (NO_NEON, "cuda-sm90"):  # arm64's kernels: tests/test_qdense_arm64.py
        assert int8_microkernel(get_target(name)) is None and activation_qmax(get_target(name)) == 255
    rules = {n: [type(r).__name__ for r in get_target(n).schedule_rules()] for n in ("x86-avx2", NO_NEON)}
    assert rules["x86-avx2"][0] == "QDenseRule"  # before DenseRule and the generic rules
    assert "QDenseRule" not in rules[NO_NEON]
    tiles = Q.QDenseTiles.for_target(get_target("x86-avx2"))
    assert (tiles.mi, tiles.nb) == (5, 16)  # 10 accumulators + 2 microkernel temporaries
    tiles = Q.QDenseTiles.for_target(get_target(CASCADELAKE))
    assert (tiles.mi, tiles.nb) == (6, 64)  # 24 accumulators, vpdpbusd needs no temporaries


def test_activation_qmax_needs_no_tvm():
    """Passes may ask ``activation_qmax`` (they must not import TVM)."""
    code = "import sys, optc.codegen.schedules.int8; assert 'tvm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pack_qweight_layout():
    t = get_target("x86-avx2")
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (10, 20)).astype(np.int8)  # K=10: 3 groups of 4; N=20: 2 panels of 16
    p = Q.pack_qweight(w, t)
    assert p.shape == (2, 3, 16, 4) and p.dtype == np.int8
    assert np.array_equal(p[1, 2, 3, :2], w[8:10, 19])  # panel 1, k-group 2, column 16+3, k 8..9
    assert not p[1, 2, 3, 2:].any() and not p[1, :, 4:, :].any()  # zero padding in K and N
    unpacked = p.transpose(1, 3, 0, 2).reshape(12, 32)[:10, :20]
    assert np.array_equal(unpacked, w)
    np.testing.assert_array_equal(Q.weight_colsum(w), w.astype(np.int64).sum(0))
    with pytest.raises(ValueError):
        Q.pack_qweight(w, get_target(NO_NEON))


# ----------------------------------------------------------------------------- numerics
# K 100 is a multiple of 4 but not of the 8/16-lane vectors; 99 is not a multiple of 4 (the codes
# get a zero column: a k-group must be whole)
KN = [(k, n) for k in (384, 100, 1536) for n in (384, 1000, 1536)] + [(99, 1000), (99, 384)]


@pytest.mark.parametrize("k,n", KN)
def test_quantize_and_dense_exact_symbolic_rows(target, k, n):
    """Symbolic rows ``[1, seq, K]``, seq 0 / 1 / 7 / 128: codes, zero points, scales and y bit-exact."""
    w, w_scale, bias = _weights(k, n, seed=k + n)
    s = tirx.Var("seq", "int64")
    low = testing.lower(quant_dense_module(target, [1, s], k, w, w_scale, bias), target)
    assert testing.unscheduled(low) == []
    vm = testing.build(low, target, scheduled=True)
    rng = np.random.default_rng(k * n)
    for m in (0, 1, 7, 128):
        x = (rng.standard_normal((1, m, k)) * rng.random((1, m, 1)) * 4).astype(np.float32)
        _check_exact(_run(vm, x), x.reshape(m, k), activation_qmax(target), w, w_scale, bias)


@pytest.mark.parametrize("m,k,n", [(1, 384, 1000), (7, 99, 384), (128, 1536, 384), (3, 6, 3)])
def test_quantize_and_dense_exact_static_rows(target, m, k, n):
    w, w_scale, bias = _weights(k, n, seed=m)
    vm = testing.build(quant_dense_module(target, [m], k, w, w_scale, None if m == 7 else bias), target)
    x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32) * 3
    _check_exact(_run(vm, x), x, activation_qmax(target), w, w_scale, None if m == 7 else bias)


def test_gelu_epilogue_fused(target):
    k, n = 384, 1536
    w, w_scale, bias = _weights(k, n, seed=3)
    s = tirx.Var("seq", "int64")
    low = testing.lower(quant_dense_module(target, [1, s], k, w, w_scale, bias, epilogue="gelu"), target)
    kernels = [gv.name_hint for gv, f in low.functions_items() if isinstance(f, tirx.PrimFunc)]
    dense = [nm for nm in kernels if "qdense" in nm]
    assert len(dense) == 1 and "gelu" in dense[0], f"GELU fuses into the int8 dense: {kernels}"
    text = low[dense[0]].script()
    assert 'scope="local"' in text, "the accumulator tile lives in registers"
    # the host's microkernel: AVX2 pair sums, or vpdpbusd on a VNNI CPU (CI lands on either)
    from optc.codegen.schedules.int8_intrin import _LLVM

    intrinsic = _LLVM[int8_microkernel(target).name][1]
    assert "T.parallel" in text and intrinsic in text, intrinsic
    vm = testing.build(low, target, scheduled=True)
    x = np.random.default_rng(5).standard_normal((1, 37, k)).astype(np.float32)
    xq, _, _, y = _run(vm, x)
    q, rzp, rsc = ref_quantize(x.reshape(37, k), activation_qmax(target))
    np.testing.assert_array_equal(xq.reshape(37, k), q)
    want = _gelu(ref_qdense(q, rzp, rsc, w, w_scale, bias))
    np.testing.assert_allclose(y.reshape(37, n), want, rtol=1e-5, atol=1e-5)


RES_K, RES_N = 99, 1000


@pytest.fixture(scope="module")
def residual_vm(target):
    w, w_scale, bias = _weights(RES_K, RES_N, seed=7)
    b, s = tirx.Var("b", "int64"), tirx.Var("s", "int64")
    low = testing.lower(quant_dense_module(target, [b, s], RES_K, w, w_scale, bias, epilogue="residual"), target)
    assert testing.unscheduled(low) == []
    return testing.build(low, target, scheduled=True), w, w_scale, bias


@pytest.mark.parametrize("batch,seq", [(2, 7), (1, 13), (3, 1)])
def test_batch_and_seq_symbolic_with_residual(target, residual_vm, batch, seq):
    """Two symbolic leading dims (the batched tiling) and a fused residual add, exact: the add
    reads the fenced ``y`` (no FMA of the product with the residual)."""
    vm, w, w_scale, bias = residual_vm
    k, n = RES_K, RES_N
    rng = np.random.default_rng(batch * 100 + seq)
    x = rng.standard_normal((batch, seq, k)).astype(np.float32)
    r = rng.standard_normal((batch, seq, n)).astype(np.float32)
    xq, _, _, y = _run(vm, x, r)
    q, rzp, rsc = ref_quantize(x.reshape(-1, k), activation_qmax(target))
    np.testing.assert_array_equal(xq.reshape(-1, k), q)
    want = ref_qdense(q, rzp, rsc, w, w_scale, bias) + r.reshape(-1, n)
    np.testing.assert_array_equal(y.reshape(-1, n), want)


def test_round_half_even_and_degenerate_rows(target):
    """Ties round to even (x / scale and -lo / scale), an all-zero row gets scale 1 and zero
    point 0, a negative row zero point qmax."""
    qmax = activation_qmax(target)
    k = 16
    w, w_scale, bias = _weights(k, 8, seed=11)
    vm = testing.build(quant_dense_module(target, [4], k, w, w_scale, bias), target)
    x = np.zeros((4, k), np.float32)
    x[0, :6] = [qmax, 0.5, 1.5, 2.5, -0.0, 3.5]  # scale 1: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4
    x[1, :2] = [-2.5, qmax - 2.5]  # scale 1, zero point round(2.5) = 2, code round(qmax - 2.5) + 2
    x[3, :3] = [-1.0, -3.0, -0.25]  # all <= 0: zero point qmax
    got = _run(vm, x)
    q, zp, scale = _check_exact(got, x, qmax, w, w_scale, bias)
    assert list(q[0, :6]) == [qmax, 0, 2, 2, 0, 4] and zp[1] == 2 and list(q[1, :2]) == [0, qmax - 1]
    assert scale[2] == 1 and zp[2] == 0 and not q[2].any()
    assert zp[3] == qmax


def test_nan_and_inf_rows_stay_in_their_row(target):
    """Non-finite inputs need no particular codes, but must not crash or leak into other rows."""
    k, n = 100, 384
    w, w_scale, bias = _weights(k, n, seed=17)
    vm = testing.build(quant_dense_module(target, [4], k, w, w_scale, bias), target)
    x = np.random.default_rng(17).standard_normal((4, k)).astype(np.float32)
    x[0, 3], x[1, 5], x[2, 7] = np.nan, np.inf, -np.inf
    xq, zp, scale, y = _run(vm, x)
    q, rzp, rscale = ref_quantize(x[3:], activation_qmax(target))
    assert np.array_equal(xq[3:], q) and np.array_equal(zp[3:], rzp) and np.array_equal(scale[3:], rscale)
    np.testing.assert_array_equal(y[3:], ref_qdense(q, rzp, rscale, w, w_scale, bias))


def test_reduce_range_worst_case(target):
    """Codes 127 times weights -128 everywhere: each vpmaddubsw pair is -32512, inside int16."""
    if int8_microkernel(target).qmax != 127:
        pytest.skip("the host's microkernel takes full-range codes")
    k, n = 1536, 384
    w = np.full((k, n), -128, np.int8)
    w_scale = np.full(n, 1e-3, np.float32)
    vm = testing.build(codes_dense_module(target, k, w, w_scale, None), target)
    m = 9
    q = np.full((m, k), 127, np.uint8)
    zp, scale = np.zeros(m, np.int32), np.ones(m, np.float32)
    y = _run(vm, q, zp, scale)
    assert np.all(y == np.float32(127 * -128 * k) * np.float32(1e-3))
    np.testing.assert_array_equal(y, ref_qdense(q, zp, scale, w, w_scale, None))
    # the same codes from quantize_rows (a constant positive row maps to qmax), zero point 0
    vmq = testing.build(quant_dense_module(target, [m], k, w, w_scale, None), target)
    xq, rzp, _, _ = _run(vmq, np.full((m, k), 0.75, np.float32))
    assert np.all(xq == 127) and not rzp.any()
    # 8-bit codes would saturate the pair sums: the reason for qmax 127 on this microkernel
    y255 = _run(vm, np.full((m, k), 255, np.uint8), zp, scale)
    assert np.all(y255 == np.float32(-32768 * (k // 2)) * np.float32(1e-3))


# ----------------------------------------------------------------------------- disassembly
def disassemble(path) -> dict[str, list[tuple[int, str, str]]]:
    return disasm.disassemble(path, "x86_64")


def innermost_loops(insns):
    """Bodies of the innermost loops of one function (a jump back closes a loop)."""
    return disasm.innermost_loops(insns, "x86_64")


def kernel_loops(funcs, pattern: str) -> list:
    """The innermost loops of every symbol of the kernels whose name matches ``pattern``."""
    return [loop for sym, insns in funcs.items() if re.search(pattern, re.sub(r"_compute_.*$", "", sym))
            for loop in innermost_loops(insns)]


def int8_hot_loop(loops, mnemonics) -> tuple[bool, str]:
    """The predicate: some innermost loop is an int8 register tile -- it holds every one of
    ``mnemonics`` (at least 8 of each: several accumulators) and spills no vector register."""
    reports = [collections.Counter(mn for _, mn, _ in body) for body in loops]
    hot = [(c, body) for c, body in zip(reports, loops) if all(c[mn] >= 8 for mn in mnemonics)]
    if not hot:
        busiest = max(reports, key=lambda c: sum(c.values()), default=collections.Counter())
        return False, f"no innermost loop with {mnemonics}; busiest: {dict(busiest.most_common(6))}"
    spills = [ops for c, body in hot for _, _, ops in body if "(%rsp)" in ops and re.search(r"%[yz]mm", ops)]
    if spills:
        return False, f"vector spills in the hot loop: {spills[:3]}"
    return True, str(dict(hot[0][0].most_common(6)))


@pytest.fixture(scope="module")
def disassembled(tmp_path_factory):
    if shutil.which("objdump") is None:
        pytest.skip("objdump (binutils) is not installed")
    cache = {}

    def get(target_name: str, kind: str = "int8"):
        key = (target_name, kind)
        if key not in cache:
            t = get_target(target_name)
            k, n = 384, 1536
            if kind == "int8":
                w, w_scale, bias = _weights(k, n, seed=0)
                s = tirx.Var("seq", "int64")
                mod = quant_dense_module(t, [1, s], k, w, w_scale, bias, epilogue="gelu")
            else:  # optc's fp32 dense on the same shape: the negative control
                bb = relax.BlockBuilder()
                x = relax.Var("x", relax.TensorType([1, tirx.Var("seq", "int64"), k], "float32"))
                wf = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
                with bb.function("main", [x]):
                    with bb.dataflow():
                        out = bb.emit_output(relax.op.matmul(x, relax.const(wf)))
                    bb.emit_func_output(out)
                mod = bb.get()
            path = tmp_path_factory.mktemp("qdense") / "lib.so"
            testing.compile_module(mod, t).export_library(str(path))
            cache[key] = disassemble(path)
        return cache[key]

    return get


def test_avx2_hot_loop_is_pmaddubsw_pmaddwd(disassembled):
    funcs = disassembled("x86-avx2")
    ok, why = int8_hot_loop(kernel_loops(funcs, r"optc_qdense"), ("vpmaddubsw", "vpmaddwd", "vpaddd"))
    assert ok, why
    # the quantization divides (no reciprocal multiply) and rounds with vroundps (to nearest even)
    quant = [mn for sym, insns in funcs.items() if "optc_quantize_rows" in sym for _, mn, _ in insns]
    assert "vdivps" in quant and "vroundps" in quant and not {"vrcpps", "vrcpss"} & set(quant)


@pytest.mark.parametrize("name,mnemonics,register", [
    (CASCADELAKE, ("vpdpbusd",), "%zmm"),  # AVX512-VNNI
    (ALDERLAKE, ("vpdpbusd",), "%ymm"),  # AVX-VNNI ({vex} vpdpbusd)
    ("x86-avx512", ("vpmaddubsw", "vpmaddwd", "vpaddd"), "%zmm"),  # AVX-512BW, no VNNI
])
def test_other_x86_hot_loops(disassembled, name, mnemonics, register):
    loops = kernel_loops(disassembled(name), r"optc_qdense")
    ok, why = int8_hot_loop(loops, mnemonics)
    assert ok, why
    ops = [o for body in loops for _, mn, o in body if mn == mnemonics[0]]
    assert ops and all(register in o for o in ops), f"{mnemonics[0]} on {register} registers: {ops[:2]}"


def test_predicate_rejects_fp32_dense(disassembled):
    loops = kernel_loops(disassembled("x86-avx2", "fp32"), r"optc_dense_packed")
    assert loops, "the fp32 dense kernel is in the library"
    assert any("vfmadd" in mn for body in loops for _, mn, _ in body)
    assert not int8_hot_loop(loops, ("vpmaddubsw", "vpmaddwd", "vpaddd"))[0]
    assert not int8_hot_loop(loops, ("vpdpbusd",))[0]


# ----------------------------------------------------------------------------- the VNNI tiling, replayed
def _portable_kernel():
    """A 16-lane microkernel in plain TIR (widening multiply-adds, any CPU): the tiling the
    AVX512-VNNI target gets (16 lanes, 6 x 64 tile, codes 0..255) with an instruction this CPU has."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    from optc.codegen.schedules import int8_intrin

    lanes = 16
    kernel = dataclasses.replace(VNNI_512, name="optc_test_dot_u8s8_portable16", mnemonics=())

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for k in range(4):
                C[T.ramp(T.int32(0), 1, lanes)] = C[T.ramp(T.int32(0), 1, lanes)] + T.Cast(
                    "int32x16", T.broadcast(A[k], lanes)) * T.Cast("int32x16", B[0, T.ramp(k, 4, lanes)])  # column k of each lane

    TensorIntrin.register(kernel.name, int8_intrin._desc(lanes), impl, override=True)
    return kernel


def test_vnni_tiling_replayed(target, monkeypatch):
    """The AVX512-VNNI tiling (16 lanes, 6 x 64, 8-bit codes) computes the right numbers: the
    same schedule with a portable 16-lane microkernel, run here."""
    from optc.codegen.schedules import int8

    kernel = _portable_kernel()
    replay = dataclasses.replace(target, name="x86-vnni-replay", vector_bits=512, vector_registers=32)
    for module in (int8, Q):
        monkeypatch.setattr(module, "int8_microkernel", lambda t: kernel)
    tiles = Q.QDenseTiles.for_target(replay)
    assert (tiles.kernel.lanes, tiles.mi, tiles.nb) == (16, 6, 64)
    k, n = 99, 1000
    w, w_scale, bias = _weights(k, n, seed=19)
    s = tirx.Var("seq", "int64")
    low = testing.lower(quant_dense_module(replay, [1, s], k, w, w_scale, bias), replay)
    assert testing.unscheduled(low) == []
    assert kernel.name not in str(low) and "T.Cast(\"int32x16\"" in str(low), "tensorized with the replay kernel"
    vm = testing.build(low, replay, scheduled=True)
    rng = np.random.default_rng(19)
    for m in (1, 7, 128):
        x = rng.standard_normal((1, m, k)).astype(np.float32)
        _check_exact(_run(vm, x), x.reshape(m, k), 255, w, w_scale, bias)


@pytest.mark.skipif("avx512_vnni" not in host_cpu_flags(), reason="needs a CPU with AVX512-VNNI to run vpdpbusd")
def test_vnni_numerics_full_range():
    t = get_target(CASCADELAKE)
    k, n = 100, 1000
    w, w_scale, bias = _weights(k, n, seed=13)
    s = tirx.Var("seq", "int64")
    vm = testing.build(quant_dense_module(t, [1, s], k, w, w_scale, bias), t)
    rng = np.random.default_rng(13)
    for m in (1, 7, 128):
        x = rng.standard_normal((1, m, k)).astype(np.float32)
        _check_exact(_run(vm, x), x.reshape(m, k), 255, w, w_scale, bias)
