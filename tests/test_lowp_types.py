"""Low-precision element types (fp8, f8e8m0, f4e2m1, sub-byte integers): DType facts, packed
storage, the text form, ONNX import/export, the interpreter's Cast against ml_dtypes and the ONNX
reference, the compiled conversions against the interpreter, and the compile-time refusal of
ops that would compute on bit patterns."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference.ops.op_cast import cast_to as onnx_cast_to

from optc.codegen import lowp as clowp
from optc.codegen.storage import from_storage, to_storage
from optc.frontend.onnx_export import to_onnx
from optc.frontend.onnx_import import DTYPE_TO_ONNX, import_onnx
from optc.ir import DType, Graph, IRError, TensorType, UnsupportedOpError
from optc.ir.interpreter import Interpreter, run
from optc.ir.text import parse_graph, print_graph
from optc.ir.types import from_element_codes, from_packed_bytes, to_packed_bytes
from bits import same_bits

LOWP = [d for d in DType if d.is_low_precision]
FP8 = [DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ]
LOWP_FLOATS = FP8 + [DType.FLOAT8E8M0, DType.FLOAT4E2M1]
SUB_BYTE_INTS = [DType.INT4, DType.UINT4, DType.INT2, DType.UINT2]
RNG = np.random.default_rng(7)

SPECIALS = np.array([0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e6, -1e6, 1e-7, -1e-7, 0.47892547, 448.0,
                     464.0, 465.0, 57344.0, 61440.0, 240.0, 6.0, 5.0, 0.25, 0.75, 2.5, -3.5, 2.0**-9, 2.0**-10,
                     2.0**-17, 3.0 * 2.0**-10], np.float32)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


# -- DType ---------------------------------------------------------------------------------------
def test_dtype_facts():
    want_bits = {DType.INT4: 4, DType.UINT4: 4, DType.FLOAT4E2M1: 4, DType.INT2: 2, DType.UINT2: 2}
    for d in LOWP:
        assert DType.from_numpy(d.numpy) is d
        assert DType.parse(d.value) is d
        assert d.itemsize == 1  # ml_dtypes holds one element per byte
        assert d.bits == want_bits.get(d, 8)
        assert d.is_packed == (d in want_bits)
        assert d.is_float == (d in LOWP_FLOATS) and d.is_int == (d in SUB_BYTE_INTS)
    assert DType.INT4.is_signed and not DType.UINT4.is_signed and not DType.FLOAT8E8M0.is_signed
    assert DType.FLOAT8E5M2.is_signed and DType.FLOAT4E2M1.is_signed
    assert DType.INT4.nbytes(5) == 3 and DType.INT2.nbytes(5) == 2 and DType.FLOAT8E5M2.nbytes(5) == 5
    assert DType.BOOL.bits == 8 and DType.FLOAT32.bits == 32 and DType.BFLOAT16.long_name == "bfloat16"
    assert not DType.FLOAT32.is_low_precision and not DType.BFLOAT16.is_low_precision


@pytest.mark.parametrize("dtype", [DType.INT4, DType.UINT4, DType.FLOAT4E2M1, DType.INT2, DType.UINT2])
@pytest.mark.parametrize("n", [1, 5, 8])
def test_packed_bytes_match_onnx_raw_data(dtype, n):
    """optc's packed layout is ONNX's (element 0 in the low bits), odd lengths padded."""
    info_lo, info_hi = (-(1 << (dtype.bits - 1)), (1 << (dtype.bits - 1)) - 1) if dtype.is_signed and dtype.is_int \
        else (0, (1 << dtype.bits) - 1)
    if dtype.is_float:
        a = np.arange(16, dtype=np.uint8)[RNG.integers(0, 16, n)].view(dtype.numpy)
    else:
        a = RNG.integers(info_lo, info_hi + 1, n).astype(dtype.numpy)
    data = to_packed_bytes(a)
    assert len(data) == dtype.nbytes(n)
    assert data == numpy_helper.from_array(a, "t").raw_data
    back = from_packed_bytes(data, dtype, (n,))
    assert back.dtype == dtype.numpy and _bits(back).tolist() == _bits(a).tolist()
    with pytest.raises(ValueError):
        from_packed_bytes(data + b"\0", dtype, (n,))


# -- text form ---------------------------------------------------------------------------------
def _lowp_graph() -> Graph:
    g = Graph("lowp")
    x = g.add_input("x", TensorType(DType.FLOAT8E5M2, (2, 3)))
    outs = [g.op("Identity", x)]
    for d in LOWP:
        if d.is_float:
            vals = clowp.decode_table(d)[: 256 if d.bits == 8 else 16]
            vals = vals.astype(d.numpy)
        else:
            lo = -(1 << (d.bits - 1)) if d.is_signed else 0
            vals = np.arange(lo, lo + (1 << d.bits)).astype(d.numpy)
        outs.append(g.add_constant(vals[:5].copy(), f"small_{d.value}"))  # a literal
        outs.append(g.add_constant(np.resize(vals, 77), f"big_{d.value}"))  # by reference
    g.set_outputs(outs)
    return g


def test_text_round_trip_every_type():
    g = _lowp_graph()
    text = print_graph(g, weights="inline")
    for d in LOWP:
        assert f": {d.value}[" in text
    g2 = parse_graph(text)
    assert print_graph(g2, weights="inline") == text
    for name, v in g.constants.items():
        w = g2.constants[name]
        assert w.const.dtype == v.const.dtype and _bits(w.const).tolist() == _bits(v.const).tolist(), name


def test_text_nan_payloads_and_signed_nan_survive():
    g = Graph("nan")
    e5 = np.array([0x7D, 0x7E, 0x7F, 0xFD, 0xFF, 0x80], np.uint8).view(ml_dtypes.float8_e5m2)  # NaN payloads, -0
    e4 = np.array([0x7F, 0xFF, 0x80], np.uint8).view(ml_dtypes.float8_e4m3fn)
    g.set_outputs([g.add_constant(e5, "e5"), g.add_constant(e4, "e4")])
    g2 = parse_graph(print_graph(g))
    assert _bits(g2.constants["e5"].const).tolist() == _bits(e5).tolist()
    assert _bits(g2.constants["e4"].const).tolist() == _bits(e4).tolist()


@pytest.mark.parametrize("literal", ["i4[2] = [1, 8]", "u2[1] = [4]", "u4[1] = [-1]", "f8e4m3fn[1] = [1000.0]",
                                     "f4e2m1[1] = [true]", "i2[1] = [0.5]"])
def test_text_refuses_values_the_type_cannot_hold(literal):
    with pytest.raises(IRError):
        parse_graph(f"graph t() {{\n  const %c: {literal}\n  return %c\n}}")


def test_text_packed_base64_length_is_checked():
    with pytest.raises(IRError, match="needs 2 bytes"):
        parse_graph('graph t() {\n  const %c: i4[3] = base64 "AAAA"\n  return %c\n}')


# -- ONNX ----------------------------------------------------------------------------------------
def test_onnx_export_import_round_trip_keeps_every_type():
    g = _lowp_graph()
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: t for t in model.graph.initializer}
    assert len(inits["big_i4"].raw_data) == DType.INT4.nbytes(77)  # packed, two per byte
    g2 = import_onnx(model)
    feed = {"x": RNG.normal(size=(2, 3)).astype(ml_dtypes.float8_e5m2)}
    r1, r2 = run(g, feed), run(g2, feed)  # (constant outputs come back renamed: routed through Identity)
    assert len(r1) == len(r2)
    for (k, a), b in zip(r1.items(), r2.values()):
        assert a.dtype == b.dtype and _bits(a).tolist() == _bits(b).tolist(), k


def test_onnx_import_refuses_types_optc_lacks():
    node = helper.make_node("Identity", ["x"], ["y"])
    for code in (TensorProto.FLOAT6E2M3, TensorProto.STRING, TensorProto.COMPLEX64):
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", code, [2])],
                              [helper.make_tensor_value_info("y", code, [2])])
        with pytest.raises(UnsupportedOpError, match="element type"):
            import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 26)]))


# -- the interpreter -----------------------------------------------------------------------------
def _cast_graph(src: DType, dst: DType, shape, **attrs) -> Graph:
    g = Graph("cast")
    x = g.add_input("x", TensorType(src, shape))
    g.set_outputs([g.op("Cast", x, to=dst, **attrs)])
    return g


def _float_inputs(n: int = 4000) -> np.ndarray:
    rnd = RNG.normal(0, 1, n) * np.exp2(RNG.integers(-20, 20, n))
    return np.concatenate([SPECIALS, -SPECIALS, rnd.astype(np.float32)]).astype(np.float32)


@pytest.mark.parametrize("dst", FP8 + [DType.FLOAT4E2M1])
@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("src", [DType.FLOAT32, DType.FLOAT16, DType.FLOAT64])
def test_cast_to_float8_matches_onnx_reference(src, dst, saturate):
    x = _float_inputs().astype(src.numpy)
    got = run(_cast_graph(src, dst, (x.size,), saturate=saturate), {"x": x})["cast"]
    want = onnx_cast_to(x, DTYPE_TO_ONNX[dst], bool(saturate))
    assert got.dtype == want.dtype == dst.numpy
    assert _bits(got).tolist() == _bits(want).tolist()


@pytest.mark.parametrize("src", LOWP_FLOATS)
@pytest.mark.parametrize("dst", [DType.FLOAT32, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT64])
def test_cast_from_lowp_float_is_exact(src, dst):
    codes = np.arange(256 if src.bits == 8 else 16, dtype=np.uint8)
    x = codes.view(src.numpy)  # every code (f4e2m1: its 16)
    got = run(_cast_graph(src, dst, (x.size,)), {"x": x})["cast"]
    with np.errstate(all="ignore"):
        want = x.astype(dst.numpy)
    np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_cast_to_e8m0_matches_onnx_reference(round_mode, saturate):
    x = np.abs(_float_inputs())
    got = run(_cast_graph(DType.FLOAT32, DType.FLOAT8E8M0, (x.size,), saturate=saturate, round_mode=round_mode),
              {"x": x})["cast"]
    want = onnx.numpy_helper.to_float8e8m0(x, bool(saturate), round_mode)
    assert _bits(got).tolist() == _bits(want).tolist()


@pytest.mark.parametrize("dst", SUB_BYTE_INTS)
def test_cast_to_sub_byte_ints(dst):
    """Floats truncate and go to 0 out of range (ml_dtypes, the ONNX reference); ints wrap."""
    f = np.concatenate([np.arange(-20, 20, 0.5), [np.nan, np.inf, -np.inf, 1e9]]).astype(np.float32)
    got = run(_cast_graph(DType.FLOAT32, dst, (f.size,)), {"x": f})["cast"]
    with np.errstate(all="ignore"):
        want = f.astype(dst.numpy)
    assert got.dtype == dst.numpy and got.astype(np.int64).tolist() == want.astype(np.int64).tolist()
    i = np.arange(-300, 300, 7, dtype=np.int32)
    got = run(_cast_graph(DType.INT32, dst, (i.size,)), {"x": i})["cast"]
    bits, signed = dst.bits, dst.is_signed
    low = i & ((1 << bits) - 1)
    want = np.where(low >= (1 << (bits - 1)), low - (1 << bits), low) if signed else low
    assert got.astype(np.int64).tolist() == want.tolist()


def test_engine_rounds_low_precision_results_after_every_node():
    """Kernels compute widened; the engine rounds (fp8) or wraps (int4) each output."""
    g = Graph("arith")
    a = g.add_input("a", TensorType(DType.FLOAT8E4M3FN, (64,)))
    b = g.add_input("b", TensorType(DType.FLOAT8E4M3FN, (64,)))
    i = g.add_input("i", TensorType(DType.INT4, (16,)))
    g.set_outputs([g.op("Add", a, b), g.op("Add", i, i)])
    av = RNG.normal(0, 50, 64).astype(ml_dtypes.float8_e4m3fn)
    bv = RNG.normal(0, 50, 64).astype(ml_dtypes.float8_e4m3fn)
    iv = np.arange(-8, 8).astype(ml_dtypes.int4)
    out = run(g, {"a": av, "b": bv, "i": iv})
    want = (av.astype(np.float32) + bv.astype(np.float32)).astype(ml_dtypes.float8_e4m3fn)
    assert _bits(out["add"]).tolist() == _bits(want).tolist()
    w = (2 * np.arange(-8, 8)) & 15
    assert out["add_0"].astype(int).tolist() == np.where(w >= 8, w - 16, w).tolist()


def test_run_torch_takes_torch_fp8_and_refuses_sub_byte():
    g = _cast_graph(DType.FLOAT8E5M2, DType.FLOAT32, (4,))
    x = torch.tensor([0.5, -3.0, 1e4, float("nan")]).to(torch.float8_e5m2)
    out = Interpreter(g).run_torch({"x": x})["cast"]
    assert out.dtype == torch.float32 and out[:3].tolist() == [0.5, -3.0, 10240.0] and out[3].isnan()
    g4 = _cast_graph(DType.INT4, DType.FLOAT32, (4,))
    with pytest.raises(IRError, match="no torch dtype"):
        Interpreter(g4).run_torch({"x": torch.zeros(4, dtype=torch.int8)})


# -- compiled conversions: codegen/lowp.py against ml_dtypes and the interpreter ---------------
@pytest.mark.parametrize("dst", list(clowp.FORMATS) + [DType.FLOAT8E8M0])
def test_encode_arithmetic_matches_the_interpreter(dst):
    """The integer rounding the kernels run (numpy instance) equals the interpreter's Cast on
    every code boundary, its neighbours, specials and random bit patterns."""
    table = clowp.decode_table(dst if dst is not DType.FLOAT8E8M0 else DType.FLOAT8E4M3FN).astype(np.float64)
    fin = np.unique(table[np.isfinite(table)])
    mids = (fin[1:] + fin[:-1]) / 2
    base = np.concatenate([fin, mids, -fin, -mids, SPECIALS]).astype(np.float32)
    x = np.concatenate([base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(-np.inf)),
                        RNG.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    if dst is DType.FLOAT8E8M0:
        x = np.abs(x)
    for src_np in (np.float32, np.float64):
        xs = x.astype(src_np)
        for sat in (1, 0):
            modes = ("up", "down", "nearest") if dst is DType.FLOAT8E8M0 else ("up",)
            if dst is DType.FLOAT8E8M0 and src_np is np.float64:
                continue
            for mode in modes:
                src = DType.from_numpy(np.dtype(src_np))
                want = run(_cast_graph(src, dst, (xs.size,), saturate=sat, round_mode=mode), {"x": xs})["cast"]
                got = clowp.encode_numpy(xs, dst, bool(sat), mode)
                assert got.tolist() == (_bits(want) & (15 if dst.is_packed else 255)).tolist(), (src_np, sat, mode)


def test_storage_round_trip():
    for d in LOWP:
        a = from_element_codes(np.arange(1 << d.bits, dtype=np.uint8), d)  # every value of the type
        s = to_storage(a, d)
        assert s.dtype in (np.uint8, np.int8)
        back = from_storage(s, d)
        assert back.dtype == d.numpy and _bits(back).tolist() == _bits(a).tolist()


def _cast_module(full: bool):
    """One build holding many conversions to and from the low-precision types (``full``: every
    type and flag; otherwise one of each kind of conversion, which builds in seconds)."""
    n = SPECIALS.size * 2 + 200
    g = Graph("casts")
    x = g.add_input("x", TensorType(DType.FLOAT32, (n,)))
    xh = g.add_input("xh", TensorType(DType.FLOAT16, (n,)))
    xd = g.add_input("xd", TensorType(DType.FLOAT64, (n,)))
    xi = g.add_input("xi", TensorType(DType.INT32, (n,)))
    xe = g.add_input("xe", TensorType(DType.FLOAT8E4M3FN, (4, 64)))
    x4 = g.add_input("x4", TensorType(DType.INT4, (16,)))
    C = lambda v, d, **a: g.op("Cast", v, to=d, **a)  # noqa: E731
    if full:
        outs = []
        for d in FP8 + [DType.FLOAT4E2M1]:
            for sat in (1, 0):
                outs += [C(x, d, saturate=sat), C(xh, d, saturate=sat)]
            outs += [C(xd, d, saturate=0), C(xi, d)]
            back = C(x, d)
            outs += [C(back, DType.FLOAT32), C(back, DType.FLOAT16), C(back, DType.INT32), C(back, DType.BOOL)]
        ax = g.op("Abs", x)
        outs += [C(ax, DType.FLOAT8E8M0, saturate=sat, round_mode=m) for m in ("up", "down", "nearest") for sat in (1, 0)]
        for d in SUB_BYTE_INTS:
            for src in (x, xh, xi):
                c = C(src, d)
                outs += [c, C(c, DType.FLOAT32), C(c, DType.INT8)]
    else:
        e4 = C(x, DType.FLOAT8E4M3FN)
        i4 = C(x, DType.INT4)
        outs = [e4, C(x, DType.FLOAT8E5M2, saturate=0), C(xh, DType.FLOAT8E4M3FNUZ, saturate=0),
                C(xd, DType.FLOAT8E5M2FNUZ), C(x, DType.FLOAT4E2M1), C(xi, DType.FLOAT8E4M3FN),
                C(g.op("Abs", x), DType.FLOAT8E8M0, round_mode="nearest"),
                C(e4, DType.FLOAT32), C(e4, DType.INT32), C(e4, DType.BOOL), i4, C(i4, DType.FLOAT32),
                C(xi, DType.UINT2), C(xh, DType.UINT4)]
    outs += [C(xe, DType.FLOAT8E5M2), g.op("Transpose", xe, perm=(1, 0)), C(x4, DType.UINT4), C(x4, DType.FLOAT32),
             g.op("Reshape", x4, g.add_constant(np.array([4, 4], np.int64)))]
    g.set_outputs(outs)
    base = _float_inputs(200)[:n]
    with np.errstate(all="ignore"):
        feed = {"x": base, "xh": base.astype(np.float16), "xd": base.astype(np.float64) * 1.0000001,
                "xi": np.clip(np.nan_to_num(base), -3e4, 3e4).astype(np.int32),
                "xe": RNG.integers(0, 256, (4, 64), dtype=np.uint8).view(ml_dtypes.float8_e4m3fn),
                "x4": np.arange(-8, 8).astype(ml_dtypes.int4)}
    return g, feed


def _check_compiled_casts(full: bool):
    from optc.codegen.build import build

    g, feed = _cast_module(full)
    cm = build(g)
    assert not cm.unscheduled
    with np.errstate(all="ignore"):
        want = run(g, feed)
        got = cm.load().run(feed)
    for name, w in want.items():
        h = got[name]
        assert h.dtype == w.dtype and h.shape == w.shape, name
        assert same_bits(h, w), name  # bit for bit: -0, and every fp8 code (NaN payloads included)


def test_compiled_casts_equal_the_interpreter_bit_for_bit():
    _check_compiled_casts(full=False)


@pytest.mark.slow
def test_compiled_casts_every_type_and_flag():
    _check_compiled_casts(full=True)


def test_compiled_refuses_arithmetic_on_stored_types():
    from optc.codegen.lower import lower

    for dt in (DType.FLOAT8E4M3FN, DType.INT4):
        g = Graph("bad")
        a = g.add_input("a", TensorType(dt, (4,)))
        g.set_outputs([g.op("Add", a, a)])
        with pytest.raises(UnsupportedOpError, match=f"Add on {dt.value}"):
            lower(g)


def test_zero_d_low_precision_values():
    """0-d tensors keep their rank through every conversion (numpy's ascontiguousarray would not)."""
    for d in (DType.FLOAT8E5M2, DType.FLOAT8E4M3FN, DType.INT4, DType.FLOAT4E2M1, DType.FLOAT8E8M0):
        g = Graph("z")
        x = g.add_input("x", TensorType(DType.FLOAT32, ()))
        c = g.op("Cast", x, to=d)
        g.set_outputs([c, g.op("Cast", c, to=DType.FLOAT32), g.op("Identity", c)])
        out = run(g, {"x": np.array(-2.0, np.float32)})
        assert all(a.shape == () for a in out.values()) and float(out["cast_0"]) in (-2.0, 2.0)
        assert to_storage(out["cast"], d).shape == () and from_storage(to_storage(out["cast"], d), d).shape == ()


def test_text_round_trip_of_quantization_attributes():
    g = Graph("q")
    x = g.add_input("x", TensorType(DType.FLOAT32, (2, 8)))
    s = g.add_constant(np.full((2, 2), 0.5, np.float32))
    q = g.op("QuantizeLinear", x, s, axis=1, block_size=4, output_dtype=DType.INT4, precision=DType.FLOAT16)
    y = g.op("DequantizeLinear", q, s, axis=1, block_size=4, output_dtype=DType.BFLOAT16)
    g.set_outputs([y, g.op("Cast", x, to=DType.FLOAT8E8M0, round_mode="nearest", saturate=0)])
    text = print_graph(g)
    assert "output_dtype=i4" in text and "precision=f16" in text and 'round_mode="nearest"' in text
    assert print_graph(parse_graph(text)) == text
