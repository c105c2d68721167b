"""optc's int8 dense on arm64 (``codegen/schedules/{int8,int8_intrin,qdense}.py``): the microkernel
comes from the target's features -- ``usmmla`` on i8mm, ``sdot`` on dotprod, ``smull`` +
``sadalp`` on plain NEON -- and every one is exact for activation codes 0..255.

* everywhere (no toolchain needed): the choice per preset and from a TVM target JSON (features,
  never the name), ``activation_qmax``, the register tiles and the packing layout per k-group;
* ``-m arm64`` (aarch64 cross toolchain + qemu-user): for each preset one library holding five
  int8 dense layers -- K 384 / 99 / 1536, N 1000 / 384 / 1536, with and without bias, a fused
  residual add over two symbolic leading dims, a fused GELU, and given codes with the worst cases
  (codes 255 and 0, zero points 0 / 255, weight columns of -128 and 127) -- run under qemu at
  M = 1, 7 and 128 and compared bit for bit with a numpy int64 reference (GELU: 1e-5); the same
  library disassembled: in each int8 GEMM the hot loop is the preset's instructions with no scalar
  multiply-add and no stack traffic, and the fp32 dense kernel's loop fails that predicate
  (negative control); a QLinear
  graph (``act_quant=dynamic``, ``act_qmax=255``) built with ``codegen.build.build`` for
  arm64-dotprod equals the reference interpreter bit for bit.
"""

from __future__ import annotations

import collections
import re
import shutil

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402

from optc.codegen.schedules import qdense as Q  # noqa: E402
from optc.codegen.schedules import testing  # noqa: E402
from optc.codegen.schedules.int8 import (NEON_SDOT, NEON_SMULL, NEON_USMMLA, activation_qmax,  # noqa: E402
                                         int8_microkernel)
from optc.ir import DType  # noqa: E402
from optc.targets import get_target  # noqa: E402
from test_neon import OBJDUMP, disassemble, kernel_loops  # noqa: E402
from test_qdense import _gelu, ref_qdense, ref_quantize  # noqa: E402

PRESETS = ["arm64", "arm64-dotprod", "arm64-i8mm"]
NO_NEON = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["-neon"]}'
NEOVERSE_V1 = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-v1"}'
CORTEX_A76 = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}'
QDENSE_KERNELS = r"optc_qdense(?!_kpad|_rowpad)"  # the GEMMs, not the code-padding copies
# what the hot loop of each preset's int8 kernel must contain
HOT = {"arm64": ("smull", "sadalp"), "arm64-dotprod": ("sdot",), "arm64-i8mm": ("usmmla",)}
INT8_MNEMONICS = {"sdot", "udot", "usdot", "sudot", "smull", "smull2", "sadalp", "smmla", "usmmla", "ummla",
                  "smlal", "smlal2", "umull", "umlal"}
# scalar (general-register) multiplies and multiply-adds: never in an int8 hot loop
SCALAR_MUL = {"madd", "msub", "mul", "mneg", "smaddl", "umaddl", "smsubl", "umsubl", "smull", "umull", "smulh",
              "umulh"}


# ----------------------------------------------------------------------------- choices (default tier)
def test_microkernel_from_features():
    """Each preset gets the instruction its features offer, codes 0..255 everywhere; a TVM target
    JSON gets the kernel its CPU implies (features, not the name); no NEON: no kernel."""
    assert int8_microkernel(get_target("arm64")) == NEON_SMULL
    assert int8_microkernel(get_target("arm64-dotprod")) == NEON_SDOT
    assert int8_microkernel(get_target("arm64-i8mm")) == NEON_USMMLA
    assert int8_microkernel(get_target(NEOVERSE_V1)) == NEON_USMMLA  # v8.4 + i8mm
    assert int8_microkernel(get_target(CORTEX_A76)) == NEON_SDOT  # v8.2 + dotprod
    for name in PRESETS + [NEOVERSE_V1, CORTEX_A76]:
        assert activation_qmax(get_target(name)) == 255, name
        assert get_target(name).int8_activation_max() == 255, name
    no_neon = get_target(NO_NEON)
    assert "asimd" not in no_neon.features
    assert int8_microkernel(no_neon) is None and activation_qmax(no_neon) == 255
    assert "QDenseRule" not in [type(r).__name__ for r in no_neon.schedule_rules()]
    for name in PRESETS:
        assert type(get_target(name).schedule_rules()[0]).__name__ == "QDenseRule"
    # the codes enter sdot and smull as xq - 128 (s8 x s8); usmmla takes them as they are (u8 x s8)
    assert (NEON_SDOT.act_offset, NEON_SMULL.act_offset, NEON_USMMLA.act_offset) == (128, 128, 0)


def test_tiles_and_packing():
    """NEON register tiles leave a register per tile row for its codes (no memory operands) and
    the microkernel's temporaries free; the packed weight has the microkernel's k-group inside and
    K padded to the codes one call reads."""
    tiles = {n: Q.QDenseTiles.for_target(get_target(n)) for n in PRESETS}
    # sdot: 5 x 16 = 20 accumulators + 4 weight vectors + 5 row registers + 2 spares
    assert (tiles["arm64-dotprod"].mi, tiles["arm64-dotprod"].nb) == (5, 16)
    # usmmla: 4 x 4 blocks of 2 x 2 = 8 x 8 (16 accumulators + 8 row-pair operands + 2 weights + 2)
    assert (tiles["arm64-i8mm"].mi, tiles["arm64-i8mm"].nb) == (8, 8)
    # smull + sadalp: two int16 product temporaries -> 4 x 16 (16 accumulators)
    assert (tiles["arm64"].mi, tiles["arm64"].nb) == (4, 16)
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (21, 20)).astype(np.int8)  # N 20 -> panels of 16 (usmmla: of 8)
    # sdot and usmmla read 16 codes a call (K 21 -> 32); smull pairs of k (K 21 -> 22)
    for name, g, kp, nb in (("arm64-dotprod", 4, 32, 16), ("arm64-i8mm", 8, 32, 8), ("arm64", 2, 22, 16)):
        p = Q.pack_qweight(w, get_target(name))
        assert p.shape == (-(-20 // nb), kp // g, nb, g) and p.dtype == np.int8, name
        unpacked = p.transpose(1, 3, 0, 2).reshape(kp, p.shape[0] * nb)
        assert np.array_equal(unpacked[:21, :20], w) and not unpacked[21:].any() and not unpacked[:, 20:].any()
    p = Q.pack_qweight(w, get_target("arm64-dotprod"))
    assert np.array_equal(p[1, 2, 3, :], w[8:12, 19])  # panel 1, k-group 2, column 16 + 3
    p = Q.pack_qweight(w, get_target("arm64-i8mm"))  # a column pair's 8 k: 16 contiguous bytes
    assert np.array_equal(p[2, 1, 2:4, :], w[8:16, 18:20].T)  # panel 2, k-group 1, columns 16 + 2, 3
    with pytest.raises(ValueError):
        Q.pack_qweight(w, get_target(NO_NEON))


# ----------------------------------------------------------------------------- one library per preset
F32, U8, I32 = DType.FLOAT32, DType.UINT8, DType.INT32
WORST_K, WORST_N = 1536, 384


def _weights(k, n, seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    return w, (rng.random(n) * 0.02 + 1e-3).astype(np.float32), rng.standard_normal(n).astype(np.float32)


def worst_weights():
    """Columns of -128, of 127, alternating -128/127 along k, and random."""
    k, n = WORST_K, WORST_N
    w = np.random.default_rng(9).integers(-128, 128, (k, n)).astype(np.int8)
    w[:, 0::4] = -128
    w[:, 1::4] = 127
    w[:, 2::4] = np.where(np.arange(k)[:, None] % 2 == 0, -128, 127)
    return w, np.full(n, 1e-3, np.float32)


def worst_codes(m):
    """Rows of 255 (zero point 0), of 0 (zero point 255), alternating 255/0 (128) and random."""
    rng = np.random.default_rng(m)
    q = rng.integers(0, 256, (m, WORST_K)).astype(np.uint8)
    zp = rng.integers(0, 256, m).astype(np.int32)
    q[0::4], zp[0::4] = 255, 0
    q[1::4], zp[1::4] = 0, 255
    q[2::4], zp[2::4] = np.where(np.arange(WORST_K) % 2 == 0, 255, 0).astype(np.uint8), 128
    return q, zp, np.ones(m, np.float32)


LAYERS = {  # name: (K, N, bias, fused epilogue)
    "a": (384, 1000, True, None),  # [1, sa, 384]
    "b": (99, 384, False, None),  # [sb, 99]: K not a multiple of 16
    "c": (1536, 384, True, "residual"),  # [bc, sc, 1536] + residual: two symbolic leading dims
    "g": (384, 1536, True, "gelu"),  # [1, sg, 384]: GELU (fast_erf: compared with a tolerance)
}


def library_module(target):
    """main(xa, xb, xc, rc, qw, zw, sw) -> per layer (codes, zero points, scales, y), then y of the
    given worst-case codes."""
    sym = {n: tirx.Var(n, "int64") for n in ("sa", "sb", "sc", "bc", "sg", "sw")}
    lead = {"a": [1, sym["sa"]], "b": [sym["sb"]], "c": [sym["bc"], sym["sc"]], "g": [1, sym["sg"]]}
    bb = relax.BlockBuilder()
    xs = {n: relax.Var(f"x{n}", relax.TensorType(lead[n] + [LAYERS[n][0]], "float32")) for n in LAYERS}
    rc = relax.Var("rc", relax.TensorType(lead["c"] + [LAYERS["c"][1]], "float32"))
    qw = relax.Var("qw", relax.TensorType([sym["sw"], WORST_K], "uint8"))
    zw = relax.Var("zw", relax.TensorType([sym["sw"]], "int32"))
    sw = relax.Var("sw", relax.TensorType([sym["sw"]], "float32"))
    qmax = activation_qmax(target)
    with bb.function("main", [*xs.values(), rc, qw, zw, sw]):
        with bb.dataflow():
            outs = []
            for i, (n, (k, nn, bias, epilogue)) in enumerate(LAYERS.items()):
                w, ws, b = _weights(k, nn, seed=i)
                xq, zp, sc = Q.quantize_rows_call(bb, xs[n], qmax)
                y = Q.qdense_call(bb, xq, zp, sc, w, ws, b if bias else None, target)
                if epilogue == "residual":
                    y = bb.emit(relax.op.add(y, rc))
                elif epilogue == "gelu":
                    y = bb.emit(relax.op.nn.gelu(y))
                outs += [xq, zp, sc, y]
            w, ws = worst_weights()
            outs.append(Q.qdense_call(bb, qw, zw, sw, w, ws, None, target))
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    return bb.get()


def _signature():
    from optc.codegen.signature import TensorSpec as S

    shapes = {"a": ((1, "sa"), "sa"), "b": (("sb",), "sb"), "c": (("bc", "sc"), "bc*sc"), "g": ((1, "sg"), "sg")}
    inputs = [S(f"x{n}", F32, shapes[n][0] + (LAYERS[n][0],)) for n in LAYERS]
    inputs += [S("rc", F32, ("bc", "sc", LAYERS["c"][1])), S("qw", U8, ("sw", WORST_K)), S("zw", I32, ("sw",)),
               S("sw", F32, ("sw",))]
    outputs = []
    for n, (k, nn, _, _) in LAYERS.items():
        lead, m = shapes[n]
        outputs += [S(f"xq{n}", U8, lead + (k,)), S(f"zp{n}", I32, (m,)), S(f"sc{n}", F32, (m,)),
                    S(f"y{n}", F32, lead + (nn,))]
    return inputs, outputs + [S("yw", F32, ("sw", WORST_N))]


def _toolchain_or_skip(target):
    from optc.targets.arm64 import missing_host_features
    from optc.targets.base import host_arch

    for tool in (OBJDUMP, "aarch64-linux-gnu-g++", "qemu-aarch64"):
        if host_arch() != "aarch64" and shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs the aarch64 toolchain and qemu-user)")
    if host_arch() == "aarch64" and missing_host_features(list(target.features)):
        pytest.skip(f"this aarch64 host lacks {missing_host_features(list(target.features))}")


@pytest.fixture(scope="module")
def libraries():
    """preset -> (runnable module under qemu, disassembled library), built once per preset."""
    from optc.codegen.build import CompiledModule, embed_signature
    from optc.codegen.signature import Signature

    cache = {}

    def get(name):
        if name not in cache:
            t = get_target(name)
            _toolchain_or_skip(t)
            low = testing.lower(library_module(t), t)
            assert testing.unscheduled(low) == []
            inputs, outputs = _signature()
            ex = testing.compile_module(embed_signature(low, Signature(inputs, outputs, [], t.describe(), True)), t,
                                        scheduled=True)
            model = CompiledModule(ex, inputs, outputs, t).load()  # the native runner, under qemu here
            cache[name] = (model, disassemble(model.folder / "model.so"))
        return cache[name]

    return get


def _feeds(m, seed):
    """Inputs for M = m rows in every layer (layer c as [2, m/2] when m is even and > 2)."""
    rng = np.random.default_rng(seed)
    bc, sc = (2, m // 2) if m % 2 == 0 and m > 2 else (1, m)
    x = lambda *s: (rng.standard_normal(s) * rng.random(s[:-1] + (1,)) * 4).astype(np.float32)  # noqa: E731
    feed = {"xa": x(1, m, 384), "xb": x(m, 99), "xc": x(bc, sc, 1536), "rc": x(bc, sc, 384), "xg": x(1, m, 384)}
    feed["qw"], feed["zw"], feed["sw"] = worst_codes(m)
    return feed


@pytest.mark.arm64
@pytest.mark.parametrize("name", PRESETS)
def test_numerics_under_qemu_bit_exact(libraries, name):
    model, _ = libraries(name)
    qmax = activation_qmax(get_target(name))
    for m in (1, 7, 128):
        feed = _feeds(m, seed=m)
        got = model.run(feed)
        for i, (n, (k, nn, bias, epilogue)) in enumerate(LAYERS.items()):
            w, ws, b = _weights(k, nn, seed=i)
            x2d = feed[f"x{n}"].reshape(m, k)
            q, zp, sc = ref_quantize(x2d, qmax)
            where = f"{name} layer {n} (K {k}, N {nn}) at M {m}"
            np.testing.assert_array_equal(got[f"xq{n}"].reshape(m, k), q, err_msg=where)
            np.testing.assert_array_equal(got[f"zp{n}"], zp, err_msg=where)
            np.testing.assert_array_equal(got[f"sc{n}"], sc, err_msg=where)
            want = ref_qdense(q, zp, sc, w, ws, b if bias else None)
            if epilogue == "gelu":
                np.testing.assert_allclose(got[f"y{n}"].reshape(m, nn), _gelu(want), rtol=1e-5, atol=1e-5,
                                           err_msg=where)
                continue
            if epilogue == "residual":
                want = want + feed["rc"].reshape(m, nn)
            np.testing.assert_array_equal(got[f"y{n}"].reshape(m, nn), want, err_msg=where)
        w, ws = worst_weights()
        want = ref_qdense(feed["qw"], feed["zw"], feed["sw"], w, ws, None)
        np.testing.assert_array_equal(got["yw"], want, err_msg=f"{name} worst-case codes at M {m}")
        if m >= 2:  # the extremes really occur: 255 x -128 x K and 0 (zero point 255) x -128 x K
            assert want[0, 0] == np.float32(255 * -128 * WORST_K) * np.float32(1e-3)
            assert want[1, 0] == np.float32(255 * 128 * WORST_K) * np.float32(1e-3)


# ----------------------------------------------------------------------------- disassembly
def _is_scalar_mul(mnem, ops) -> bool:
    return mnem in SCALAR_MUL and re.match(r"[wx]\d+\b|[wx]zr\b", ops) is not None


def int8_loop_report(body) -> collections.Counter:
    """Vector int8 multiply instructions (by mnemonic), scalar multiplies and stack accesses."""
    c = collections.Counter()
    for _, mnem, ops in body:
        if mnem in INT8_MNEMONICS and ops.startswith("v"):
            c[mnem] += 1
        elif _is_scalar_mul(mnem, ops):
            c["scalar-mul"] += 1
        if "[sp" in ops:
            c["stack"] += 1
    c["instructions"] = len(body)
    return c


def int8_hot_loop(loops, mnemonics) -> tuple[bool, str]:
    """The predicate: some innermost loop is an int8 register tile -- at least 8 of each of
    ``mnemonics`` (``a|b``: either; several accumulators) -- and every such loop has no scalar
    multiply or multiply-add and no stack traffic (no spills)."""
    reports = [int8_loop_report(b) for b in loops]

    def count(c, alternatives):
        return sum(c[m] for m in alternatives.split("|"))

    hot = [c for c in reports if all(count(c, m) >= 8 for m in mnemonics)]
    if not hot:
        busiest = max(reports, key=lambda c: c["instructions"], default=collections.Counter())
        return False, f"no innermost loop with {mnemonics}; busiest: {dict(busiest)}"
    bad = [dict(c) for c in hot if c["scalar-mul"] or c["stack"]]
    if bad:
        return False, f"scalar multiplies or stack traffic in the hot loop: {bad}"
    return True, str([dict(c) for c in hot])


@pytest.mark.arm64
@pytest.mark.parametrize("name", PRESETS)
def test_hot_loop_instructions(libraries, name):
    """Each of the library's int8 kernels has a hot loop of the preset's instructions; the other
    presets' dot-product instructions appear nowhere in it (no feature the target lacks)."""
    _, funcs = libraries(name)
    kernels = kernel_loops(funcs, QDENSE_KERNELS)
    assert len(kernels) == len(LAYERS) + 1, sorted(kernels)
    all_loops = [b for loops in kernels.values() for b in loops]
    for kname, loops in kernels.items():
        ok, why = int8_hot_loop(loops, HOT[name])
        assert ok, f"{name} {kname}: {why}"
    used = {mn for body in all_loops for _, mn, _ in body}
    forbidden = {"arm64": {"sdot", "usdot", "sudot", "smmla", "usmmla"},
                 "arm64-dotprod": {"usdot", "sudot", "smmla", "usmmla"}, "arm64-i8mm": set()}[name]
    assert not used & forbidden, f"{name} uses {used & forbidden}"


@pytest.mark.arm64
def test_predicate_rejects_fp32_dense_and_scalar_loops(tmp_path):
    """Negative controls: optc's fp32 dense kernel (``fmla`` by element) fails the predicate for
    every preset's instructions, and so does a hand-made loop with a scalar ``madd`` or a spill."""
    t = get_target("arm64-dotprod")
    _toolchain_or_skip(t)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, tirx.Var("seq", "int64"), 384], "float32"))
    wf = np.random.default_rng(0).standard_normal((384, 1536)).astype(np.float32)
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(wf)))
        bb.emit_func_output(out)
    path = tmp_path / "fp32.so"
    t.export(testing.compile_module(bb.get(), t), str(path))
    loops = [b for v in kernel_loops(disassemble(path), r"optc_dense_packed").values() for b in v]
    assert loops and any(mn == "fmla" for body in loops for _, mn, _ in body)
    for mnemonics in HOT.values():
        assert not int8_hot_loop(loops, mnemonics)[0]
    sdots = [(4 * i, "sdot", f"v{i}.4s, v20.16b, v21.4b[0]") for i in range(8)]
    assert int8_hot_loop([sdots], ("sdot",))[0]
    assert not int8_hot_loop([sdots + [(64, "madd", "w0, w1, w2, w0")]], ("sdot",))[0]
    assert not int8_hot_loop([sdots + [(64, "str", "q0, [sp, #16]")]], ("sdot",))[0]


# ----------------------------------------------------------------------------- end to end
def _qlinear_graph(k, n, seed):
    from optc.ir import Graph, TensorType

    rng = np.random.default_rng(seed)
    g = Graph("qlinear_arm64")
    x = g.add_input("x", TensorType(F32, ("b", "s", k)))
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    ws = (rng.random(n) * 0.02 + 1e-3).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    y = g.op("QLinear", x, g.add_constant(w, "w"), g.add_constant(ws, "ws"), None, g.add_constant(b, "bias"),
             activation="relu", act_quant="dynamic", act_qmax=255)
    g.set_outputs([y])
    g.infer_types()
    return g


@pytest.mark.arm64
def test_qlinear_graph_on_dotprod_matches_interpreter():
    """A dynamically quantized QLinear (+ bias + ReLU) through ``codegen.build`` for arm64-dotprod:
    the int8 kernel (not a fallback) runs under qemu and equals the interpreter bit for bit."""
    from optc.codegen.build import build
    from optc.ir.interpreter import run

    t = get_target("arm64-dotprod")
    _toolchain_or_skip(t)
    g = _qlinear_graph(384, 1000, seed=3)
    cm = build(g, t)
    assert cm.fallback_funcs == [] and cm.unscheduled == []
    model = cm.load()
    loops = [b for v in kernel_loops(disassemble(model.folder / "model.so"), QDENSE_KERNELS).values() for b in v]
    ok, why = int8_hot_loop(loops, ("sdot",))
    assert ok, f"the QLinear layer runs on the sdot kernel: {why}"
    rng = np.random.default_rng(4)
    for shape in ((1, 1), (2, 7), (1, 128)):
        x = (rng.standard_normal(shape + (384,)) * 2).astype(np.float32)
        got, want = model.run({"x": x}), run(g, {"x": x})
        for name, ref in want.items():
            np.testing.assert_array_equal(got[name], ref, err_msg=f"{name} at {shape}")
