"""NEON kernels on arm64 (issue #11): optc's dense, batched matmul, fused attention and row
kernels tile for AArch64's 32 x 128-bit vector registers, and their hot loops really are NEON.

* ``-m arm64`` (needs the aarch64 cross toolchain): a small MiniLM-shaped model — a dense layer
  ``[1, seq, 384] x [384, 1536]`` + bias + GELU, the Q/K/V projections and a fused Attention block
  in BERT's layout, LayerNorm, and a batched matmul without a constant operand — is cross-compiled
  for ``arm64`` and ``arm64-dotprod``, exported with the target's linker, and disassembled with
  ``aarch64-linux-gnu-objdump``. In every innermost loop of the dense, batched matmul and
  attention kernels that multiplies and adds, the multiply-adds are ``fmla`` on ``.4s`` vectors
  (by element, ``fmla v0.4s, v1.4s, v2.s[0]``, counts) and never scalar (``fmadd s..`` or
  ``fmla s..``). Negative controls: the same predicate rejects the generic fallback's matmuls
  (``fast_schedules=False``) and an attention kernel tiled for 1-lane "vectors".
* everywhere: the tile choices per target (x86 ones unchanged), and the NEON tiling's numerics —
  the same model built for x86 with the arm64 tiles (128-bit vectors, 32 registers, the board's
  core count: an SSE-width replay of the NEON schedule) against the reference interpreter.

End-to-end numerics of the arm64 library itself run under qemu with the native runner
(``tests/test_native_runner.py``).
"""

from __future__ import annotations

import collections
import dataclasses
import re
import shutil

import numpy as np
import pytest

import disasm
from optc.codegen.build import build
from optc.codegen.schedules.attention import AttentionSpec, AttentionTiles
from optc.codegen.schedules.common import CPUTiles
from optc.ir import DType, Graph, TensorType
from optc.ir.interpreter import run
from optc.targets import get_target

F32 = DType.FLOAT32
HID, FFN, HEADS, DH = 384, 1536, 12, 32  # all-MiniLM-L6-v2's widths
OBJDUMP = disasm.ARCHES["aarch64"][0]


def _graph() -> Graph:
    """Symbolic ``seq`` as in an exported model; outputs: FFN1 (dense + bias + GELU), LayerNorm of
    the attention block's output, softmax of a batched matmul of two inputs."""
    rng = np.random.default_rng(0)
    g = Graph("neon_kernels")
    c = g.add_constant

    def w(*shape):
        return c((rng.standard_normal(shape) * shape[0] ** -0.5).astype(np.float32))

    x = g.add_input("x", TensorType(F32, (1, "seq", HID)))
    ffn = g.op("Gelu", g.op("Add", g.op("MatMul", x, w(HID, FFN)), w(FFN)))

    def heads():  # [1, seq, 384] -> [1, 12, seq, 32] as exporters spell BERT
        proj = g.op("Add", g.op("MatMul", x, w(HID, HID)), w(HID))
        return g.op("Transpose", g.op("Reshape", proj, c(np.array([0, 0, HEADS, DH], np.int64))), perm=(0, 2, 1, 3))

    q, k, v = heads(), heads(), heads()
    mask = g.add_input("mask", TensorType(F32, (1, 1, 1, "seq")))
    att = g.op("Attention", q, k, v, mask)
    ctx = g.op("Reshape", g.op("Transpose", att, perm=(0, 2, 1, 3)), c(np.array([0, 0, HID], np.int64)))
    norm = g.op("LayerNormalization", g.op("Add", ctx, x), w(HID), w(HID), axis=-1)
    a = g.add_input("a", TensorType(F32, (1, HEADS, "seq", DH)))
    b = g.add_input("b", TensorType(F32, (1, HEADS, DH, "seq")))
    g.set_outputs([ffn, norm, g.op("Softmax", g.op("MatMul", a, b), axis=-1)])
    return g


def _feed(seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    mask = np.where(rng.random((1, 1, 1, seq)) > 0.25, 0.0, -1e4).astype(np.float32)
    mask[..., 0] = 0.0
    return {"x": f(1, seq, HID), "mask": mask, "a": f(1, HEADS, seq, DH), "b": f(1, HEADS, DH, seq)}


# ----------------------------------------------------------------------------- tile choices
def test_tiles_follow_the_register_file():
    """Register tiles come from the register file (vector bits, vector registers, registers per
    tile row), not the target's name: x86's are what they were; NEON (4 lanes, 32 registers, row
    operands read by element from registers) gets 5 x 4 vector accumulators for the dense kernel."""
    t = {n: CPUTiles.for_target(get_target(n)) for n in ("x86-avx2", "x86-avx512", "arm64", "arm64-dotprod")}
    assert (t["x86-avx2"].lanes, t["x86-avx2"].mi, t["x86-avx2"].nb) == (8, 6, 16)      # 6 x 2 vectors
    assert (t["x86-avx512"].lanes, t["x86-avx512"].mi, t["x86-avx512"].nb) == (16, 6, 64)  # 6 x 4
    for name in ("arm64", "arm64-dotprod"):
        assert get_target(name).vector_registers == 32
        assert (t[name].lanes, t[name].mi, t[name].nb) == (4, 5, 16)  # 5 x 4 vectors: 20 accumulators

    def attn(name, dh):
        a = AttentionTiles.choose(get_target(name), AttentionSpec(HEADS, HEADS, dh, dh, 0.125, False))
        return a.kt, a.ri, a.dv_lanes, a.dv_chunk

    assert attn("x86-avx2", 32) == (32, 2, 8, 4)
    assert attn("x86-avx512", 32) == (64, 4, 16, 2)
    assert attn("x86-avx512", 64) == (64, 4, 16, 4)
    # NEON: 4 query rows x 4 key vectors of scores (16 accumulators); p.V in passes of 4 of the
    # 8 (head dim 32) value vectors so 4 x 4 accumulators stay in registers
    assert attn("arm64", 32) == (16, 4, 4, 4)
    assert attn("arm64", 64) == (16, 4, 4, 4)


def _neon_replay_target():
    """x86 with arm64's tiling: 128-bit vectors, the register file's facts, the board's core count."""
    arm, x86 = get_target("arm64"), get_target("x86")
    return dataclasses.replace(x86, name="x86-neon-replay", vector_bits=arm.vector_bits,
                               vector_registers=arm.vector_registers, num_cores=arm.num_cores,
                               extra={**x86.extra, "row_operand_registers": arm.extra["row_operand_registers"]})


def test_neon_tiling_numerics_on_x86():
    """The NEON tile choices compute the right numbers: replayed at SSE width on this machine,
    against the reference interpreter, for sequence lengths on and off the tile sizes."""
    replay, arm = _neon_replay_target(), get_target("arm64")
    assert CPUTiles.for_target(replay) == CPUTiles.for_target(arm)
    spec = AttentionSpec(HEADS, HEADS, DH, DH, DH ** -0.5, False)
    assert AttentionTiles.choose(replay, spec) == AttentionTiles.choose(arm, spec)
    g = _graph()
    cm = build(g, replay)
    assert cm.fallback_funcs == [] and cm.unscheduled == [] and cm.notes == []
    model = cm.load()
    for seq in (1, 7, 16, 45, 128):
        feed = _feed(seq, seed=seq)
        got, want = model.run(feed), run(g, feed)
        for name, ref in want.items():
            assert got[name].shape == ref.shape, name
            np.testing.assert_allclose(got[name], ref, rtol=2e-4, atol=2e-4, err_msg=f"{name} at seq {seq}")


# ----------------------------------------------------------------------------- disassembly
_SCALAR_FMA = {"fmadd", "fmsub", "fnmadd", "fnmsub"}


def disassemble(path) -> dict[str, list[tuple[int, str, str]]]:
    """symbol -> [(address, mnemonic, operands)] of the aarch64 library's code."""
    return disasm.disassemble(path, "aarch64")


def innermost_loops(insns) -> list[list[tuple[int, str, str]]]:
    return disasm.innermost_loops(insns, "aarch64")


def _is_vector_fmla(mnem, ops) -> bool:
    return mnem in ("fmla", "fmls") and re.match(r"v\d+\.4s\b", ops) is not None


def _is_scalar_fma(mnem, ops) -> bool:
    return mnem in _SCALAR_FMA or (mnem in ("fmla", "fmls") and re.match(r"[hsd]\d+\b", ops) is not None)


def loop_report(body) -> collections.Counter:
    c = collections.Counter()
    for _, mnem, ops in body:
        if _is_vector_fmla(mnem, ops):
            c["fmla.4s"] += 1
        elif _is_scalar_fma(mnem, ops):
            c["scalar"] += 1
        if "[sp" in ops:
            c["stack"] += 1
    return c


def hot_loops_are_neon(loops) -> tuple[bool, str]:
    """The predicate: the innermost loops that multiply-add (vector or scalar) exist, and each
    has ``fmla .4s`` and no scalar multiply-add."""
    hot = [loop_report(b) for b in loops]
    hot = [c for c in hot if c["fmla.4s"] or c["scalar"]]
    if not hot:
        return False, "no innermost loop multiplies and adds"
    bad = [dict(c) for c in hot if c["scalar"] or not c["fmla.4s"]]
    return not bad, f"loops with scalar multiply-adds: {bad}" if bad else f"{[dict(c) for c in hot]}"


def kernel_loops(funcs, pattern: str) -> dict[str, list]:
    """kernel name -> its innermost loops, over every symbol of the kernel (the exported wrapper
    ``__tvm_ffi_<name>``, the function and its parallel bodies ``<name>_compute_...``)."""
    out: dict[str, list] = collections.defaultdict(list)
    for sym, insns in funcs.items():
        name = re.sub(r"_compute_.*$", "", sym.removeprefix("__tvm_ffi_"))
        if re.search(pattern, name):
            out[name] += innermost_loops(insns)
    return dict(out)


KERNELS = {  # family -> the kernel names it covers (FuseTIR prefixes/suffixes them)
    "dense": r"optc_dense_packed",
    "batched matmul": r"optc_matmul_packed",
    "attention": r"optc_attention(?!_pack_k)",
    "layer norm": r"optc_layer_norm",
}


def _toolchain_or_skip():
    for tool in (OBJDUMP, "aarch64-linux-gnu-g++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install binutils-aarch64-linux-gnu g++-aarch64-linux-gnu)")


@pytest.fixture(scope="module")
def arm64_libs(tmp_path_factory):
    """target -> disassembled library of the model, built once per target."""
    _toolchain_or_skip()
    cache: dict[str, dict] = {}

    def get(target, **kw):
        key = f"{target if isinstance(target, str) else target.name}{sorted(kw.items())}"
        if key not in cache:
            cm = build(_graph(), target, **kw)
            path = tmp_path_factory.mktemp("neon") / "model.so"
            cm.export(path)
            cache[key] = {"funcs": disassemble(path), "fallback": cm.fallback_funcs}
        return cache[key]

    return get


@pytest.mark.arm64
@pytest.mark.parametrize("target", ["arm64", "arm64-dotprod"])
def test_hot_loops_are_neon_fmla(arm64_libs, target):
    lib = arm64_libs(target)
    assert lib["fallback"] == []
    for family, pattern in KERNELS.items():
        kernels = kernel_loops(lib["funcs"], pattern)
        assert kernels, f"no {family} kernel in the {target} library"
        for name, loops in kernels.items():
            ok, why = hot_loops_are_neon(loops)
            assert ok, f"{target} {family} kernel {name}: {why}"
            if family == "layer norm":
                continue
            # a register tile: the busiest loop issues several vector FMAs and keeps its
            # accumulators in registers (no stack traffic)
            busiest = max((loop_report(b) for b in loops), key=lambda c: c["fmla.4s"])
            assert busiest["fmla.4s"] >= 8, f"{target} {family} kernel {name}: busiest loop {dict(busiest)}"
            assert busiest["stack"] == 0, f"{target} {family} kernel {name} spills in its hot loop: {dict(busiest)}"


@pytest.mark.arm64
def test_predicate_rejects_scalar_kernels(arm64_libs):
    """Negative controls for the predicate above: the generic fallback's matmuls (a serial k loop
    of scalar ``fmadd``) and an attention kernel tiled for 1-lane vectors fail it."""
    slow = arm64_libs("arm64", fast_schedules=False)
    matmuls = kernel_loops(slow["funcs"], r"matmul")
    assert matmuls and not kernel_loops(slow["funcs"], KERNELS["dense"])
    for name, loops in matmuls.items():
        assert not hot_loops_are_neon(loops)[0], f"fallback kernel {name} passed the NEON predicate"
    scalar = arm64_libs(dataclasses.replace(get_target("arm64"), name="arm64-1lane", vector_bits=32))
    attention = kernel_loops(scalar["funcs"], KERNELS["attention"])
    assert attention
    for name, loops in attention.items():
        assert not hot_loops_are_neon(loops)[0], f"1-lane attention kernel {name} passed the NEON predicate"
