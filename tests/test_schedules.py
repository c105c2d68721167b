"""optc's default CPU schedules: each rule applies to the PrimFuncs it targets, and the results
match numpy -- with a symbolic row count and row counts that are not a multiple of the tile.

Small shapes: each module compiles in well under a second; compiled once per module (fixtures).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx  # noqa: E402

from optc.codegen import schedules  # noqa: E402
from optc.codegen.schedules import testing  # noqa: E402
from optc.codegen.schedules.dense import DENSE_BLOCK, pack_weight  # noqa: E402
from optc.targets import get_target  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def target():
    return get_target("x86")


def _erf(x):
    return np.vectorize(math.erf)(x).astype(np.float32)


def _gelu(x):
    return x * 0.5 * (1.0 + _erf(x / np.sqrt(2.0)))


def _prims(mod):
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def _compile(fn_builder, target):
    bb = relax.BlockBuilder()
    fn_builder(bb)
    low = testing.lower(bb.get(), target)
    return low, testing.build(low, target, scheduled=True)


# --------------------------------------------------------------------------- dense
K, N = 48, 80  # N not a multiple of the 64-wide panel: exercises the zero-padded last panel
W = (RNG.standard_normal((K, N)) * 0.2).astype("float32")
B = RNG.standard_normal(N).astype("float32")


@pytest.fixture(scope="module")
def dense_gelu_res(target):
    s = tirx.Var("s", "int64")

    def build(bb):
        x = relax.Var("x", relax.TensorType([1, s, K], "float32"))
        r = relax.Var("r", relax.TensorType([1, s, N], "float32"))
        with bb.function("main", [x, r]):
            with bb.dataflow():
                y = bb.emit(relax.op.add(relax.op.matmul(x, relax.const(W)), relax.const(B)))
                y = bb.emit(relax.op.nn.gelu(y))
                y = bb.emit(relax.op.add(y, r))
                out = bb.emit_output(y)
            bb.emit_func_output(out)

    return _compile(build, target)


@pytest.fixture(scope="module")
def dense_transposed_weight(target):
    """matmul(x, permute_dims(W^T)) -- how torch's Linear reaches the IR -- on a 2-D input."""
    s = tirx.Var("m", "int64")

    def build(bb):
        x = relax.Var("x", relax.TensorType([s, K], "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                wt = bb.emit(relax.op.permute_dims(relax.const(np.ascontiguousarray(W.T))))
                out = bb.emit_output(relax.op.matmul(x, wt))
            bb.emit_func_output(out)

    return _compile(build, target)


def test_pack_weight_layout():
    w = np.arange(3 * 20, dtype=np.float32).reshape(3, 20)
    p = pack_weight(w, 8)
    assert p.shape == (3, 3, 8)
    assert np.array_equal(p[1, 2, :], w[2, 8:16])
    assert np.array_equal(p[2, 0, :4], w[0, 16:20]) and not p[2, :, 4:].any()


def test_dense_rule_applies_and_fuses_epilogue(dense_gelu_res):
    low, _ = dense_gelu_res
    assert testing.unscheduled(low) == []
    prims = _prims(low)
    dense = [f for f in prims.values() if DENSE_BLOCK in f.script()]
    assert len(dense) == 1, "bias, GELU and residual add fuse into the one dense kernel"
    text = dense[0].script()
    assert "T.parallel" in text and "T.vectorized" in text and "T.unroll" in text
    assert 'scope="local"' in text, "the accumulator tile lives in registers, not a global buffer"
    assert "erf" not in text.replace("fast_erf", ""), "GELU uses the vectorizable erf"
    assert len(prims) == 1


@pytest.mark.parametrize("seq", [1, 13, 24])
def test_dense_numerics_symbolic_rows(dense_gelu_res, seq):
    _, vm = dense_gelu_res
    x = RNG.standard_normal((1, seq, K)).astype("float32")
    r = RNG.standard_normal((1, seq, N)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(r)).numpy()
    want = _gelu(x @ W + B) + r
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [5, 6, 31])
def test_dense_transposed_constant_weight(dense_transposed_weight, rows):
    low, vm = dense_transposed_weight
    assert any(DENSE_BLOCK in f.script() for f in _prims(low).values())
    x = RNG.standard_normal((rows, K)).astype("float32")
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), x @ W, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- attention core
H, D = 2, 16


@pytest.fixture(scope="module")
def attention(target):
    s = tirx.Var("s", "int64")

    def build(bb):
        q = relax.Var("q", relax.TensorType([1, H, s, D], "float32"))
        k = relax.Var("k", relax.TensorType([1, H, D, s], "float32"))
        v = relax.Var("v", relax.TensorType([1, H, s, D], "float32"))
        with bb.function("main", [q, k, v]):
            with bb.dataflow():
                sc = bb.emit(relax.op.multiply(relax.op.matmul(q, k), relax.const(np.float32(D ** -0.5))))
                p = bb.emit(relax.op.nn.softmax(sc, axis=-1))
                out = bb.emit_output(relax.op.matmul(p, v))
            bb.emit_func_output(out)

    return _compile(build, target)


def test_attention_every_primfunc_scheduled(attention):
    low, _ = attention
    assert testing.unscheduled(low) == []
    matmuls = [f for f in _prims(low).values() if DENSE_BLOCK in f.script()]
    assert len(matmuls) == 2
    for f in _prims(low).values():
        assert "T.parallel" in f.script()


@pytest.mark.parametrize("seq", [7, 20])
def test_attention_numerics(attention, seq):
    _, vm = attention
    q = RNG.standard_normal((1, H, seq, D)).astype("float32")
    k = RNG.standard_normal((1, H, D, seq)).astype("float32")
    v = RNG.standard_normal((1, H, seq, D)).astype("float32")
    sc = q @ k * D ** -0.5
    p = np.exp(sc - sc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    got = vm["main"](*(tvm.runtime.tensor(a) for a in (q, k, v))).numpy()
    np.testing.assert_allclose(got, p @ v, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- layer norm, elementwise
@pytest.fixture(scope="module")
def layernorm_transpose(target):
    s = tirx.Var("s", "int64")
    g = RNG.standard_normal(D * H).astype("float32")
    b = RNG.standard_normal(D * H).astype("float32")

    def build(bb):
        x = relax.Var("x", relax.TensorType([1, s, H * D], "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                y = bb.emit(relax.op.nn.layer_norm(x, relax.const(g), relax.const(b), axes=[-1], epsilon=1e-5))
                y = bb.emit(relax.op.reshape(y, [1, s, H, D]))
                out = bb.emit_output(relax.op.permute_dims(y, [0, 2, 1, 3]))
            bb.emit_func_output(out)

    low, vm = _compile(build, target)
    return low, vm, g, b


def test_layernorm_and_transpose_scheduled(layernorm_transpose):
    low, _, _, _ = layernorm_transpose
    assert testing.unscheduled(low) == []
    for f in _prims(low).values():
        assert "T.parallel" in f.script()


@pytest.mark.parametrize("seq", [3, 17])
def test_layernorm_and_transpose_numerics(layernorm_transpose, seq):
    _, vm, g, b = layernorm_transpose
    x = RNG.standard_normal((1, seq, H * D)).astype("float32")
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    y = ((x - mu) / np.sqrt(var + 1e-5) * g + b).reshape(1, seq, H, D).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), y, rtol=1e-4, atol=1e-4)


def test_cpu_kernels_stay_on_cpu_targets():
    """The CPU targets take optc's CPU kernels; a GPU target brings its own (none of these)."""
    from optc.targets import get_target

    cpu, gpu = get_target("x86"), get_target("cuda-sm90")
    cpu_rules = {type(r).__name__ for r in cpu.schedule_rules()}
    assert {"DenseRule", "RowRule", "ReductionRule", "ElementwiseRule"} <= cpu_rules
    assert not cpu_rules & {type(r).__name__ for r in gpu.schedule_rules()}
    cpu_passes = {type(p).__name__ for p in cpu.relax_passes()}
    assert {"PackDenseWeights", "RowKernels"} <= cpu_passes  # CPU weight layouts and row kernels
    assert not {"PackDenseWeights", "RowKernels"} & {type(p).__name__ for p in gpu.relax_passes()}
    assert type(cpu.fallback_rule()).__name__ == "CPUFallback" != type(gpu.fallback_rule()).__name__


# --------------------------------------------------------------------------- dense with [batch, seq] rows
@pytest.fixture(scope="module")
def dense_batch_seq(target):
    """Both leading dims symbolic (how an ONNX model with dynamic batch and sequence arrives)."""
    b, s = tirx.Var("b", "int64"), tirx.Var("s", "int64")

    def build(bb):
        x = relax.Var("x", relax.TensorType([b, s, K], "float32"))
        r = relax.Var("r", relax.TensorType([b, s, N], "float32"))
        with bb.function("main", [x, r]):
            with bb.dataflow():
                y = bb.emit(relax.op.add(relax.op.matmul(x, relax.const(W)), relax.const(B)))
                out = bb.emit_output(relax.op.add(y, r))
            bb.emit_func_output(out)

    return _compile(build, target)


@pytest.mark.parametrize("batch,seq", [(1, 13), (2, 7), (3, 1)])
def test_dense_symbolic_batch_and_rows(dense_batch_seq, batch, seq):
    low, vm = dense_batch_seq
    assert testing.unscheduled(low) == []
    x = RNG.standard_normal((batch, seq, K)).astype("float32")
    r = RNG.standard_normal((batch, seq, N)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(r)).numpy()
    np.testing.assert_allclose(got, x @ W + B + r, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- row kernels
def _softmax(x):
    with np.errstate(invalid="ignore"):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module", params=["symbolic", 37, 64])
def softmax_masked(request, target):
    """softmax(x * scale + mask) with the Attention lowering's where(isnan) epilogue; the row
    length symbolic, static non-multiple of the vector width, static multiple."""
    s = tirx.Var("s", "int64")
    n = s if request.param == "symbolic" else request.param

    def build(bb):
        x = relax.Var("x", relax.TensorType([1, H, s, n], "float32"))
        m = relax.Var("m", relax.TensorType([1, 1, s, n], "float32"))
        with bb.function("main", [x, m]):
            with bb.dataflow():
                y = bb.emit(relax.op.add(relax.op.multiply(x, relax.const(np.float32(0.5))), m))
                p = bb.emit(relax.op.nn.softmax(y, axis=-1))
                out = bb.emit_output(relax.op.where(relax.op.isnan(p), relax.const(np.float32(0)), p))
            bb.emit_func_output(out)

    low, vm = _compile(build, target)
    return low, vm, request.param


def test_softmax_is_one_row_kernel(softmax_masked):
    low, _, _ = softmax_masked
    assert testing.unscheduled(low) == []
    prims = _prims(low)
    # kOutEWiseFusable: the isnan epilogue fuses in; the producers (scale, mask add) stay a kernel
    # of their own here (in an attention they fuse into the scores matmul instead)
    (text,) = [f.script() for f in prims.values() if "optc_row_max" in f.script()]
    assert "isnan" in text or "!=" in text
    assert "optc_row_max_part" in text and "T.parallel" in text
    assert "T.vectorized(T.int64(16))" in text or "T.vectorized(T.int64(8))" in text
    assert "exp" not in text.replace("optc_row_exp", ""), "no libm expf: the polynomial is inlined"


# 16, 32: a symbolic row length with no tail (n % lanes == 0): the tail reduction loop is empty
@pytest.mark.parametrize("rows", [1, 5, 16, 19, 32, 35])
def test_softmax_numerics(softmax_masked, rows):
    _, vm, n = softmax_masked
    cols = rows if n == "symbolic" else n  # symbolic: x is [1, H, s, s]
    x = (RNG.standard_normal((1, H, rows, cols)) * 4).astype("float32")
    m = np.where(RNG.random((1, 1, rows, cols)) > 0.2, 0, -np.inf).astype("float32")
    m[0, 0, 0, :] = -np.inf  # a fully masked row: NaN from softmax, 0 after the epilogue
    x[0, 1, -1, 0] = np.nan  # NaN propagates through its row
    want = _softmax(x * 0.5 + m)
    want = np.where(np.isnan(want), 0, want)
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(m)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_row_reductions_with_init_never_run_zero_times(softmax_masked):
    """A TIR block's ``init`` runs inside its reduce loop (``if t == 0``): a reduce loop that can
    be empty (the tail ``n % lanes`` of a symbolic row length, 0 for n = 16, 32, ..) would leave
    the result uninitialized (the combine then read garbage: MiniLM at seq 32/128)."""
    low, _, _ = softmax_masked
    (text,) = [f.script() for f in _prims(low).values() if "optc_row_max" in f.script()]
    assert not re.search(r"T\.axis\.reduce\([^,()]*% T\.int64\(\d+\)\s*,", text), text


@pytest.fixture(scope="module")
def norms(target):
    s = tirx.Var("s", "int64")
    n = 40  # 2 full vectors of 16 + a tail of 8
    g = RNG.standard_normal(n).astype("float32")
    b = RNG.standard_normal(n).astype("float32")

    def build(bb):
        x = relax.Var("x", relax.TensorType([s, n], "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                ln = bb.emit(relax.op.nn.layer_norm(x, relax.const(g), relax.const(b), axes=[-1], epsilon=1e-5))
                rms = bb.emit(relax.op.nn.rms_norm(x, relax.const(g), axes=[-1], epsilon=1e-6))
                out = bb.emit_output(relax.Tuple([ln, rms]))
            bb.emit_func_output(out)

    low, vm = _compile(build, target)
    return low, vm, g, b


@pytest.mark.parametrize("rows", [1, 6, 23])
def test_layer_norm_and_rms_norm_row_kernels(norms, rows):
    low, vm, g, b = norms
    assert testing.unscheduled(low) == []
    assert sum("optc_row_" in f.script() for f in _prims(low).values()) == 2
    x = (RNG.standard_normal((rows, g.size)) * 3 + 5).astype("float32")
    ln, rms = vm["main"](tvm.runtime.tensor(x))
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(ln.numpy(), (x - mu) / np.sqrt(var + 1e-5) * g + b, rtol=1e-4, atol=1e-4)
    want = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * g
    np.testing.assert_allclose(rms.numpy(), want, rtol=1e-4, atol=1e-4)
