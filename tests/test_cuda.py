"""CUDA targets (issue #11): every kernel scheduled for the GPU, checked at compile time here, run
on a GPU where there is one.

Without a GPU (the default tier; needs only nvcc):

- the presets resolve and nvcc can generate code for each (CUDA 13 dropped sm_70: refused);
- ``gpu_check`` reports a kernel touching global memory outside any thread binding (negative
  controls: an unscheduled function, a half-bound one; a host-only assert is fine) and the build
  refuses to ship one;
- MiniLM compiles for ``cuda-sm90`` through the CLI (device code compiled by nvcc into the
  library) and for ``cuda-sm80``, with no unbound kernel, no fallback-only kernel and the fused
  attention; every kernel's rule is listed;
- numbers, without a GPU: the GPU attention kernel's algorithm (the TIR before thread binding)
  runs on the CPU against the reference interpreter; whole CUDA builds are *emulated* on the CPU
  (``codegen/gpu/emulate.py``: the scheduled TIR of every kernel, thread loops run serially) —
  MiniLM and a sample of ONNX backend node tests against their expected outputs, the run-time
  checks' device flag and host assert included;
- the ONNX backend sample compiles for ``cuda-sm90`` (nvcc included) with every kernel bound: a
  default-tier part (``FAST_SAMPLE``) and ~150 diverse node tests (``SAMPLE``, ``slow``).

With a GPU (``-m cuda``): MiniLM within 1e-3 of the reference at seq 128 (batch 1 and 32), from an
artifact built for ``cuda-sm90``, for the detected GPU and for ``cuda-sm80`` (PTX JIT on newer
GPUs); the backend sample numerically; the attention kernel at many lengths; a failing run-time
check raises the interpreter's error and leaves the GPU usable.
"""

from __future__ import annotations

import functools
import re
import time

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optc.codegen.build import BuildError, build
from optc.codegen.gpu import toolchain
from optc.codegen.gpu.attention import GPUAttention, GPUTiles
from optc.codegen.gpu.emulate import NotEmulable, build_emulated
from optc.codegen.gpu.report import kernel_inventory
from optc.codegen.gpu_check import unbound_accesses, unbound_kernels
from optc.ir import DType, Graph, TensorType, UnsupportedOpError
from optc.ir.interpreter import run
from optc.targets import TargetError, get_target, known_targets

needs_nvcc = pytest.mark.skipif(toolchain.find_nvcc() is None,
                                reason="needs nvcc (pip install nvidia-cuda-nvcc, or a CUDA toolkit)")
pytestmark = needs_nvcc

TOL = 1e-3
F32, F16, F64, BOOL = DType.FLOAT32, DType.FLOAT16, DType.FLOAT64, DType.BOOL
# Rules a kernel of a CUDA build may have been scheduled by (codegen/gpu/report.py).
RULES = {"Matmul", "GEMV", "Reduction", "GeneralReduction", "Transpose", "Injective", "Fallback", "pre-bound",
         "optc attention", "check flag", "host", "pre-scheduled"}


def _has_gpu() -> bool:
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001  (no CUDA runtime at all)
        return False


def gpu(fn):
    """A test that runs kernels on an NVIDIA GPU: ``-m cuda``, skipped without one."""
    return pytest.mark.cuda(pytest.mark.skipif(not _has_gpu(), reason="needs an NVIDIA GPU")(fn))


def _max_err(got: dict, want: dict) -> dict:
    return {k: float(np.abs(np.asarray(got[k], np.float64) - np.asarray(want[k], np.float64)).max()) for k in want}


# -- targets and toolchain ------------------------------------------------------------------------
def test_presets_and_nvcc_architectures():
    names = [n for n in known_targets() if n.startswith("cuda-")]
    assert {"cuda-sm75", "cuda-sm80", "cuda-sm86", "cuda-sm89", "cuda-sm90"} <= set(names)
    archs = toolchain.nvcc_archs(toolchain.find_nvcc())
    for name in names:
        t = get_target(name)
        assert t.kind == "cuda" and t.tvm_target["arch"] in archs, name
        assert t.describe()["features"] == [t.tvm_target["arch"]]
        t.check_toolchain()


def test_architecture_nvcc_cannot_generate_is_refused():
    archs = toolchain.nvcc_archs(toolchain.find_nvcc())
    if "sm_70" in archs:
        pytest.skip("this nvcc still generates sm_70 code")
    t = get_target('{"kind": "cuda", "arch": "sm_70"}')
    with pytest.raises(TargetError, match="sm_70"):
        t.check_toolchain()


def test_detected_gpu_target_without_a_gpu():
    if _has_gpu():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TargetError, match="has none"):
        get_target("cuda")
    from optc.targets import host_problem

    assert "no CUDA GPU" in host_problem(get_target("cuda-sm90").describe())


# -- gpu_check: negative controls and the build's refusal -----------------------------------------
def _elementwise_func():
    from tvm import te

    x = te.placeholder((1024,), "float32", name="x")
    y = te.compute((1024,), lambda i: x[i] * 2.0, name="y")
    return te.create_prim_func([x, y]).with_attr("global_symbol", "double_it")


def test_gpu_check_flags_unbound_kernels():
    import tvm
    from tvm.s_tir import dlight as dl
    from tvm.script import tirx as T

    func = _elementwise_func()
    assert sorted(unbound_accesses(func)) == ["load x", "store y"]
    mod = tvm.IRModule({"double_it": func})
    assert unbound_kernels(mod) == ["double_it"]
    with get_target("cuda-sm90").tvm():
        scheduled = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(mod)
    assert unbound_kernels(scheduled) == []

    @T.prim_func(s_tir=True)
    def half_bound(x: T.Buffer((256,), "float32"), y: T.Buffer((256,), "float32")):
        for i in T.thread_binding(256, thread="threadIdx.x"):
            y[i] = x[i]
        for j in range(256):  # a second stage left on the host
            y[j] = y[j] + T.float32(1)

    @T.prim_func(s_tir=True)
    def host_assert(x: T.Buffer((256,), "float32"), n: T.int64):
        assert n == T.int64(1), "a check on a shape value: host code, no tensor data"

    mod = tvm.IRModule({"half_bound": half_bound, "host_assert": host_assert})
    assert unbound_kernels(mod) == ["half_bound"]
    assert sorted(unbound_accesses(half_bound)) == ["load y", "store y"]


def test_build_refuses_an_unbound_kernel():
    import dataclasses

    from tvm import s_tir

    from optc.targets.cuda import CUDATarget

    class MarkOnly:  # "schedules" by doing nothing
        def apply(self, func, target, tunable):
            return s_tir.Schedule(func)

        def is_target_available(self, target):
            return True

    class Broken(CUDATarget):
        def schedule_rules(self):
            return []

        def fallback_rule(self):
            return MarkOnly()

    base = get_target("cuda-sm90")
    broken = Broken(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    g = Graph("relu")
    x = g.add_input("x", TensorType(F32, (4, 8)))
    g.set_outputs([g.op("Relu", x)])
    with pytest.raises(BuildError, match="no thread binding"):
        build(g, broken)
    assert not build(g, "cuda-sm90").fallback_funcs


# -- the attention kernel: its algorithm on the CPU, its binding, its plan -------------------------
def _algorithm_target(name: str = "x86"):
    """A CPU target whose Attention lowering emits the GPU kernel's algorithm (unbound TIR)."""
    import dataclasses

    base = get_target(name)

    class Algorithm(type(base)):
        def attention_kernel(self):
            return GPUAttention(bind=False)

    return Algorithm(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})


def _check(model, g, feed, tol=1e-4):
    got = model.run(feed)
    for name, want in run(g, feed).items():
        assert got[name].shape == want.shape, name
        assert not np.isnan(got[name]).any(), name
        np.testing.assert_allclose(got[name].astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol,
                                   err_msg=name)


@pytest.fixture(scope="module")
def mha():
    from test_attention_kernel import _mha_graph

    g = _mha_graph()
    return g, build(g, _algorithm_target())


def test_attention_algorithm_matches_interpreter(mha):
    """GQA (4 query heads over 2), bool masks (full and key-only), a float mask with -inf rows, a
    scale, causal; sequence lengths below, at and across the 32-key / 32-row tiles."""
    from test_attention_kernel import _mha_feed

    g, cm = mha
    assert cm.notes == []
    model = cm.load()
    for batch, seq in ((2, 1), (2, 7), (1, 32), (2, 33), (1, 45), (2, 128)):
        _check(model, g, _mha_feed(batch, seq, seed=seq))


def test_attention_algorithm_layouts_and_precisions():
    from test_attention_kernel import _cross_graph, _projection_graph, _rng, _typed_feed, _typed_graph

    target = _algorithm_target()
    g = _projection_graph()  # Q/K/V read in place from [b, s, h, d], output written for the transpose back
    model = build(g, target).load()
    for batch, seq in ((1, 45), (2, 128)):
        _check(model, g, {"x": _rng(seq).standard_normal((batch, seq, 128)).astype(np.float32)})
    g = _cross_graph()  # head_dim 64, Sq != Sk, rank-3 float mask, static shapes
    rng = _rng(1)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    _check(build(g, target).load(), g, {"q": f(2, 3, 5, 64), "k": f(2, 3, 70, 64), "v": f(2, 3, 70, 64),
                                        "m": f(1, 5, 70)})
    g = _typed_graph(F16)
    _check(build(g, target).load(), g, _typed_feed(np.float16, 70), tol=2e-3)


def test_attention_kernel_is_bound_with_static_shared_memory():
    from test_attention_kernel import _mha_graph

    cm = build(_mha_graph(), "cuda-sm90")
    assert cm.notes == [] and cm.fallback_funcs == []
    cuda = cm.executable.mod.imports[0].imports[0]
    src = cuda.inspect_source("cuda") or cuda.inspect_source("")
    kernels = re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', src)
    assert any(k.startswith("optc_gpu_attention") for k in kernels), kernels
    definitions = [d for d in re.split(r'(?=extern "C" __global__)', src)
                   if "optc_gpu_attention" in d.split("(", 2)[1] and "{" in d]
    assert len(definitions) == 6
    for d in definitions:  # static tiles in shared memory: nothing of [seq, seq] size anywhere
        shared = [int(n) for n in re.findall(r"__shared__ [^;]*\[(\d+)\];", d)]
        assert shared and sum(shared) * 4 <= 48 * 1024, shared
        assert "__syncthreads()" in d


def test_attention_plan_on_cuda():
    from test_attention_kernel import _typed_graph

    gpu_attention = GPUAttention()
    g = _typed_graph(F64)
    spec, why = gpu_attention.plan(g.nodes[0], get_target("cuda-sm90"))
    assert spec is None and "float64" in why
    cm = build(g, "cuda-sm90")  # the decomposition, listed, and bound like any other kernel
    assert len(cm.notes) == 1 and "decomposition" in cm.notes[0]
    big = Graph("attn_d512")
    t = TensorType(F32, (1, 2, "seq", 512))
    q, k, v = big.add_input("q", t), big.add_input("k", t), big.add_input("v", t)
    big.set_outputs([big.op("Attention", q, k, v)])
    spec, why = gpu_attention.plan(big.nodes[0], get_target("cuda-sm90"))
    assert spec is None and "shared memory" in why
    spec, _ = gpu_attention.plan(_typed_graph(F32).nodes[0], get_target("cuda-sm90"))
    assert GPUTiles.choose(spec) == GPUTiles(32, 32)


# -- MiniLM -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory):
    import models

    from optc import zoo
    from optc.frontend.onnx_import import import_onnx

    model, inputs = models.minilm(batch=1, seq=128)
    path = zoo.export_onnx(model, inputs, tmp_path_factory.mktemp("minilm") / "minilm.onnx", dynamo=False,
                           output_names=["last_hidden_state", "pooler_output"])
    return path, import_onnx(path)


@functools.lru_cache(maxsize=4)
def _fused(path):
    from optc.api import load_model, optimize

    g = load_model(path)
    optimize(g, "default", target="cuda-sm90")
    return g


def _feed(batch, seq, seed):
    import models

    _, inputs = models.minilm(batch=batch, seq=seq, seed=seed)
    return {k: v.numpy() for k, v in inputs.items()}


def _assert_all_bound_and_scheduled(graph, target):
    inv = kernel_inventory(graph, target)
    rules = {k.name: k.rule for k in inv}
    assert set(rules.values()) <= RULES, rules
    assert "Fallback" not in rules.values(), rules
    assert sum(r == "optc attention" for r in rules.values()) >= 1, rules
    assert all(k.device for k in inv if k.rule != "host"), rules
    assert {r for n, r in rules.items() if n.startswith("fused_matmul")} == {"Matmul"}, rules
    return inv


def test_minilm_cuda_sm90_cli(minilm_onnx, tmp_path, capsys):
    """``optc compile minilm.onnx --target cuda-sm90``: every kernel bound and scheduled, the
    attention fused, the device code compiled by nvcc into the library (a fatbin, no CUDA source)."""
    import json

    from optc.cli import main

    path, _ = minilm_onnx
    art = tmp_path / "art"
    t = time.perf_counter()
    assert main(["compile", str(path), "--target", "cuda-sm90", "-o", str(art)]) == 0
    elapsed = time.perf_counter() - t
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["target"]["name"] == "cuda-sm90" and manifest["target"]["kind"] == "cuda"
    kinds = _library_modules(art / "model.so")
    assert [fmt for kind, fmt in kinds if kind == b"cuda"] == [b"fatbin"], kinds
    _assert_all_bound_and_scheduled(_fused(str(path)), "cuda-sm90")
    capsys.readouterr()
    print(f"MiniLM cuda-sm90: compiled and exported in {elapsed:.1f} s")


def _library_modules(so) -> list[tuple[bytes, bytes | None]]:
    """``(kind, CUDA format)`` of every module in an exported library's blob."""
    import subprocess

    from optc.codegen.gpu.toolchain import _read_str, parse_library_blob

    syms = subprocess.run(["nm", "-S", "--defined-only", str(so)], capture_output=True, text=True).stdout
    addr, size = next((int(f[0], 16), int(f[1], 16)) for f in (ln.split() for ln in syms.splitlines())
                      if f[-1] == "__tvm_ffi__library_bin")
    segs = subprocess.run(["readelf", "-lW", str(so)], capture_output=True, text=True).stdout
    for f in (ln.split() for ln in segs.splitlines()):
        if f and f[0] == "LOAD" and int(f[2], 16) <= addr < int(f[2], 16) + int(f[4], 16):
            off = int(f[1], 16) + addr - int(f[2], 16)
    with open(so, "rb") as fh:
        fh.seek(off)
        data = fh.read(size)
    _, _, entries = parse_library_blob(data)
    return [(k, _read_str(b, 0)[0] if k == b"cuda" else None) for k, b in entries]


def test_minilm_cuda_sm80_builds(minilm_onnx):
    path, _ = minilm_onnx
    g = _fused(str(path))
    cm = build(g, "cuda-sm80")
    assert cm.fallback_funcs == [] and cm.unscheduled == [] and cm.notes == []
    inv = _assert_all_bound_and_scheduled(g, "cuda-sm80")
    assert len(inv) >= 10


def test_minilm_cuda_schedule_emulated_matches_reference(minilm_onnx):
    """The cuda-sm90 build's kernels (dlight matmuls and layer norms, the fused attention, the
    token-id checks) run serially on the CPU: MiniLM within 1e-3 of the reference interpreter."""
    from optc.ir.errors import InvalidValueError

    path, _ = minilm_onnx
    g = _fused(str(path))
    model = build_emulated(g, "cuda-sm90")
    for batch, seq in ((1, 128), (2, 45)):
        feed = _feed(batch, seq, seed=seq)
        errs = _max_err(model.run(feed), run(g, feed))
        assert max(errs.values()) <= TOL, (batch, seq, errs)
    bad = _feed(1, 16, seed=0)
    bad["input_ids"][0, 3] = 10**6
    with pytest.raises(InvalidValueError) as got:
        model.run(bad)
    with pytest.raises(InvalidValueError) as want:
        run(g, bad)
    assert str(got.value) == str(want.value)


# -- ONNX backend node tests -----------------------------------------------------------------------
# Drawn to cover every scheduling path: dlight rules, Injective, the fallback, optc's attention,
# the run-time check flag, the scan, TVM's pre-bound GPU kernels (scatter, top-k).
FAST_SAMPLE = [
    "test_add_bcast", "test_matmul_4d", "test_gemm_all_attributes", "test_softmax_axis_0",
    "test_layer_normalization_4d_axis_negative_2", "test_reduce_sum_keepdims_example", "test_reduce_max_keepdims_example",
    "test_argmax_default_axis_example", "test_gelu_tanh_2", "test_transpose_all_permutations_3",
    "test_gather_negative_indices", "test_gather_elements_negative_indices", "test_scatternd",
    "test_scatter_elements_with_negative_indices", "test_cumsum_1d_reverse_exclusive", "test_top_k",
    "test_attention_4d", "test_attention_4d_gqa", "test_attention_4d_attn_mask_bool", "test_attention_4d_causal",
    "test_conv_with_strides_padding", "test_maxpool_2d_pads", "test_col2im", "test_range_float_type_positive_delta",
    "test_cast_FLOAT_to_FLOAT16", "test_lstm_defaults", "test_if",
]
SAMPLE = sorted(set(FAST_SAMPLE) | {f"test_{n}" for n in """
abs acos and_bcast4v3d argmin_keepdims_example asinh atan attention_4d_attn_mask averagepool_2d_pads
batchnorm_epsilon bitshift_right_uint8 bitwise_and_i32_2d cast_FLOAT16_to_FLOAT castlike_FLOAT_to_DOUBLE ceil celu
clip clip_default_int8_min concat_3d_axis_negative_1 constant_pad constantofshape_float_ones convtranspose
convtranspose_1d cos cosh cumsum_1d cumsum_2d_axis_1 cumprod_1d depthtospace_crd_mode_example dequantizelinear
div_bcast dropout_default einsum_batch_matmul elu equal erf exp expand_dim_changed eyelike_with_dtype flatten_axis2
floor gather_0 gathernd_example_int32_batch_dim1 globalaveragepool globalmaxpool greater_equal gridsample
gru_defaults hardmax_axis_1 hardsigmoid hardswish identity instancenorm_epsilon isinf isnan leakyrelu less_equal log
logsoftmax_axis_1 loop11 lppool_2d_default lrn matmulinteger max_example maxpool_with_argmax_2d_precomputed_pads
mean_example min_example mish mod_mixed_sign_int32 mul_bcast mvn neg nllloss_NCd1 not_2d onehot_with_axis
or_bcast3v1d pow_bcast_array prelu_broadcast quantizelinear reciprocal reduce_l2_default_axes_keepdims_example
reduce_log_sum_exp_default_axes_keepdims_example reduce_mean_keepdims_example reduce_min_do_not_keepdims_example
reduce_prod_keepdims_example reduce_sum_square_keepdims_example relu reshape_negative_dim
resize_upsample_scales_linear reversesequence_batch rms_normalization_3d_axis_negative_1_epsilon rnn_seq_length
rotary_embedding round scan9_sum selu shape shrink_hard sigmoid sign sin size slice_negative_axes softplus softsign
spacetodepth split_variable_parts_2d_opset18 sqrt squeeze sub_bcast sum_example swish tan tanh tile top_k_smallest
tril triu_one_row unsqueeze_two_axes where_long_example xor_bcast4v4d
""".split()})


@functools.lru_cache(maxsize=1)
def _cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases

    return {c.name: c for c in collect_testcases(None)}


def _array(x) -> np.ndarray:
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


def case_graph(name: str):
    """``(graph, feed, expected outputs, rtol, atol)`` of an ONNX node test, shape operands bound
    as constants when the compiler needs their values (as ``optc.backend.CompiledRep`` does)."""
    from optc.backend import _is_operand
    from optc.frontend.onnx_import import import_onnx

    case = _cases()[name]
    inputs, expected = case.data_sets[0]
    inputs = [_array(x) for x in inputs]
    feed = dict(zip([i.name for i in case.model.graph.input], inputs))
    g = import_onnx(case.model)
    operands = [v.name for v in g.inputs if _is_operand(v)]
    try:
        build(g, "cuda-sm90")
    except UnsupportedOpError as e:
        if "known only at run time" not in str(e) or not operands:
            raise
        m = onnx.ModelProto()
        m.CopyFrom(case.model)
        keep = [i for i in m.graph.input if i.name not in operands]
        del m.graph.input[:]
        m.graph.input.extend(keep)
        for n in operands:
            m.graph.initializer.append(numpy_helper.from_array(np.asarray(feed[n]), n))
        g = import_onnx(m)
        feed = {k: v for k, v in feed.items() if k not in operands}
    return g, feed, [_array(x) for x in expected], case.rtol, case.atol


def _compare(outputs: list, expected: list, rtol, atol, what: str):
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        got = np.asarray(got)
        assert got.shape == want.shape and got.dtype == want.dtype, what
        if want.dtype.kind in "fc":
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)
        else:
            np.testing.assert_array_equal(got, want, err_msg=what)


def _compile_and_emulate(name: str, tmp_path):
    try:
        g, feed, expected, rtol, atol = case_graph(name)
    except UnsupportedOpError as e:
        pytest.skip(f"unsupported: {e}")
    cm = build(g, "cuda-sm90")
    cm.export(tmp_path / "model.so")  # nvcc compiles the device code
    inv = kernel_inventory(g, "cuda-sm90")
    assert {k.rule for k in inv} <= RULES, inv
    try:
        model = build_emulated(g, "cuda-sm90")
    except NotEmulable as e:
        pytest.skip(f"compiled, every kernel bound; numbers only on a GPU: {e}")
    out = model.run(feed)
    _compare([out[v.name] for v in g.outputs], expected, rtol, atol, f"{name} (cuda-sm90 emulated)")


@pytest.mark.parametrize("name", FAST_SAMPLE)
def test_backend_fast_sample_compiles_and_emulates(name, tmp_path):
    _compile_and_emulate(name, tmp_path)


@pytest.mark.slow
@pytest.mark.cuda  # ~120 nvcc builds: on the GPU machines' cuda tier (CI here keeps FAST_SAMPLE + MiniLM)
@pytest.mark.parametrize("name", [n for n in SAMPLE if n not in FAST_SAMPLE])
def test_backend_sample_compiles_and_emulates(name, tmp_path):
    _compile_and_emulate(name, tmp_path)


def test_sample_names_exist():
    assert len(SAMPLE) >= 100 and not [n for n in SAMPLE if n not in _cases()]


# -- on a GPU -------------------------------------------------------------------------------------
@gpu
@pytest.mark.parametrize("target", ["cuda-sm90", "cuda", "cuda-sm80"])
def test_minilm_on_gpu_matches_reference(target, minilm_onnx, tmp_path, capsys):
    """The artifact (device code compiled by nvcc when exported; ``cuda-sm80`` runs on newer GPUs
    through its PTX) at seq 128, batch 1 and 32, within 1e-3 of the reference interpreter."""
    import optc
    from optc.cli import main

    path, graph = minilm_onnx
    if target == "cuda-sm90" and int(get_target("cuda").tvm_target["arch"][3:]) < 90:
        pytest.skip("this GPU is older than sm_90")
    art = tmp_path / "art"
    assert main(["compile", str(path), "--target", target, "-o", str(art)]) == 0
    model = optc.load(art)
    for batch in (1, 32):
        feed = _feed(batch, 128, seed=batch)
        errs = _max_err(model.run(feed), run(graph, feed))
        assert max(errs.values()) <= TOL, (target, batch, errs)
    capsys.readouterr()


@gpu
def test_checks_on_gpu_raise_and_leave_the_gpu_usable(minilm_onnx):
    from optc.ir.errors import InvalidValueError

    _, graph = minilm_onnx
    model = build(graph, "cuda").load()
    bad = _feed(1, 16, seed=0)
    bad["input_ids"][0, 3] = 10**6
    with pytest.raises(InvalidValueError) as got:
        model.run(bad)
    with pytest.raises(InvalidValueError) as want:
        run(graph, bad)
    assert str(got.value) == str(want.value)
    good = _feed(1, 16, seed=1)
    assert max(_max_err(model.run(good), run(graph, good)).values()) <= TOL


@gpu
def test_attention_on_gpu(mha):
    from test_attention_kernel import _mha_feed

    g, _ = mha
    model = build(g, "cuda").load()
    for batch, seq in ((2, 1), (2, 7), (1, 32), (2, 33), (1, 45), (2, 128), (1, 300)):
        _check(model, g, _mha_feed(batch, seq, seed=seq))


@gpu
@pytest.mark.parametrize("name", FAST_SAMPLE)
def test_backend_fast_sample_on_gpu(name):
    _on_gpu(name)


@gpu
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SAMPLE if n not in FAST_SAMPLE])
def test_backend_sample_on_gpu(name):
    _on_gpu(name)


def _on_gpu(name):
    from optc.backend import CompiledRep

    case = _cases()[name]
    inputs, expected = case.data_sets[0]
    try:
        rep = CompiledRep(case.model, "cuda")
        outputs = rep.run([_array(x) for x in inputs])
    except UnsupportedOpError as e:
        pytest.skip(f"unsupported: {e}")
    _compare(list(outputs), [_array(x) for x in expected], case.rtol, case.atol, f"{name} (GPU)")
