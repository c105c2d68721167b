"""Weight quantization math for the quantize pass: round-to-nearest (RTN), GPTQ and an AWQ-style
scale search, for a weight ``W [K, N]`` in MatMul orientation (K input features, N outputs).

A quantized weight is integer codes ``q [K, N]``, float32 scales ``s`` and, for asymmetric codes,
integer zero points ``z``; it dequantizes as

    W_hat = (q - z) * s          (the integer difference, converted to float32, times s: one
                                  float32 rounding — what DequantizeLinear computes)

Granularity (``group_size``):

* ``0`` — per output channel: ``s``, ``z`` have shape ``[N]``;
* ``G`` — groups of G consecutive rows along K: ``s``, ``z`` have shape ``[ceil(K/G), N]`` and row
  ``k`` uses group ``k // G`` (the last group is shorter when G does not divide K). This is
  ``DequantizeLinear(axis=0, block_size=G)`` in optc's ``qparam_layout`` and MatMulNBits' layout
  after transposition.

Code ranges (``code_range``):

* **int8 symmetric: q in [-127, 127]**, ``s = absmax / 127``, no zero point. The restricted
  range keeps the grid symmetric (``q(-W) = -q(W)``), which is what ONNX Runtime's quantizer and
  TensorRT use for symmetric int8 weights, keeps products clear of the ``-128·-128`` corner in
  16-bit pair-sum instructions, and costs 1 of 255 levels (0.4 % resolution).
* **int4 symmetric: q in [-8, 7]**, ``s = absmax / 7.5``, no zero point (the GPTQ reference's
  symmetric quantizer, MatMulNBits with zero point 8). At 4 bits the 16th level is worth 7 %
  resolution; the price is that the extremes ``±absmax`` sit on the ±7.5 ties and land on ±7,
  half a step away (with the scale rounded up, RTN reaches code -8 only when the float32 scale is
  exact; GPTQ's error-updated weights do reach it), so ``|W - W_hat| <= s/2`` still holds for
  every element. (On MiniLM's query weights this grid beats ``absmax / 7`` by 11 % in squared
  error at G=128; a sign-aware ``max(max/7, -min/8)`` would be 6 % better at G=32, 1.5 % worse at
  G=128.)
* **int4 asymmetric: q in [0, 15]**, ``z`` in [0, 15] per group (MatMulNBits / GPTQ), from the
  group's range widened to include 0: ``s = (max - min) / 15``, ``z = rint(-min / s)``.
  (uint8 asymmetric, [0, 255], is available with the same formulas.)
* **int4 min/max: q in [0, 15]** with a *float32* zero point ``z = -min / s``, ``s = (max -
  min) / 15`` from the group's own range (0 not included): the grid is exactly the group's range
  cut in 15 steps, ``W_hat = (q - z) * s`` (two float32 roundings). This is GGUF's Q4_1 block
  (``d · q + m``) and MatMulNBits with float zero points; on weights that were Q4_1 blocks it
  gives the same codes back (an integer zero point cannot: ``-m / d`` is rarely an integer).

``grid`` names these: ``symmetric``, ``asymmetric`` (integer zero point) and ``minmax`` (float zero
point); ``True`` / ``False`` are accepted for the first two.

Every scale is rounded *up* to float32 (never below the float64 value), so ``|W| / s`` cannot
exceed the half-range and the bound ``|W - W_hat| <= s/2`` holds exactly for the stored scale (up
to the one float32 rounding of the product). Rounding is half to even (``np.rint``). An all-zero
group gets scale 1 and codes 0 (and zero point 0); a constant group is exact except for int4 symmetric
codes (``±c`` → code ±7 at ``s = |c|/7.5``, error ``s/2``).

GPTQ (Frantar et al. 2022) follows the reference implementation (IST-DASLab/gptq ``fasterquant``)
transposed to ``[K, N]``; differences are listed in ``quantize_gptq``'s docstring. All arithmetic
is float64 numpy (the per-row loop is K small outer products; a 384×1536 or 1536×384 layer takes
0.3–1 s on 2 cores), and nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED = ((8, True), (4, True), (4, False), (8, False))
"""(bits, symmetric) combinations: int8 sym, int4 sym, uint4 asym, uint8 asym (the min/max grid
uses the asymmetric codes)."""
GRIDS = ("symmetric", "asymmetric", "minmax")
GROUP_SIZES = (0, 32, 64, 128)
"""Granularities the quantized linear op supports (0: per output channel). Other positive sizes
work in this module too; ``check_group_size(strict=True)`` enforces the list."""


def grid_name(grid: bool | str) -> str:
    """``grid`` as one of ``GRIDS`` (``True`` is symmetric, ``False`` asymmetric)."""
    if isinstance(grid, (bool, np.bool_)):
        return "symmetric" if grid else "asymmetric"
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    return grid


def code_range(bits: int, grid: bool | str) -> tuple[int, int]:
    """``(qmin, qmax)`` of the codes (see the module docstring for the choice)."""
    symmetric = grid_name(grid) == "symmetric"
    if (bits, symmetric) not in SUPPORTED:
        raise ValueError(f"unsupported quantization: {bits}-bit {'symmetric' if symmetric else 'asymmetric'}"
                         f" (supported: int8/int4 symmetric, uint4/uint8 asymmetric)")
    if symmetric:
        return (-127, 127) if bits == 8 else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return 0, (1 << bits) - 1


def check_group_size(group_size: int, strict: bool = False) -> int:
    g = int(group_size)
    if g < 0 or (strict and g not in GROUP_SIZES):
        raise ValueError(f"group_size must be {'one of ' + str(GROUP_SIZES) if strict else '>= 0'}, got {group_size}")
    return g


def num_groups(k: int, group_size: int) -> int:
    return -(-k // group_size) if group_size else 1


def group_index(k: int, group_size: int) -> np.ndarray:
    """The group of each row ``0..k-1`` (all 0 for per-channel)."""
    return np.arange(k) // group_size if group_size else np.zeros(k, np.int64)


@dataclass
class QuantizedWeight:
    """Integer codes of ``W [K, N]`` with their scales and zero points (see the module docstring).

    ``codes``: int8 for symmetric codes, uint8 for asymmetric ones, one code per element (int4
    codes too: ``typed()`` gives the ml_dtypes int4/uint4 arrays the IR holds). ``scale``:
    float32 ``[N]`` (per channel) or ``[ceil(K/G), N]``; ``zero_point``: same shape as ``scale``
    in the codes' dtype (float32 for the min/max grid), or None for symmetric codes."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    group_size: int
    grid: str

    @property
    def symmetric(self) -> bool:
        return self.grid == "symmetric"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    def expanded(self, p: np.ndarray) -> np.ndarray:
        """A scale/zero-point array broadcast to ``[K, N]`` rows (row k takes group k // G)."""
        return p[None, :] if self.group_size == 0 else p[group_index(self.codes.shape[0], self.group_size)]

    def dequantize(self) -> np.ndarray:
        """``W_hat = (q - z) * s`` in float32: the integer difference (exact), then one float32
        product (a float32 zero point: the difference rounded to float32 first)."""
        q = self.codes.astype(np.int32)
        if self.zero_point is not None and self.zero_point.dtype == np.float32:
            q = q.astype(np.float32) - self.expanded(self.zero_point)
        elif self.zero_point is not None:
            q = q - self.expanded(self.zero_point).astype(np.int32)
        return q.astype(np.float32) * self.expanded(self.scale).astype(np.float32)

    def typed(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Codes and zero point in the element type the IR stores: int8 / uint8, or ml_dtypes
        int4 / uint4 for 4-bit codes."""
        if self.bits == 8:
            return self.codes, self.zero_point
        import ml_dtypes

        dt = ml_dtypes.int4 if self.symmetric else ml_dtypes.uint4
        z = self.zero_point
        return self.codes.astype(dt), None if z is None else z if z.dtype == np.float32 else z.astype(dt)

    def dequantize_params(self) -> dict:
        """The ``DequantizeLinear`` attributes that reproduce ``dequantize()`` on ``typed()``
        codes: per axis along N, or blocked along K (integer zero points only: DequantizeLinear
        takes no float32 zero point of the min/max grid)."""
        return {"axis": 1, "block_size": 0} if self.group_size == 0 else {"axis": 0, "block_size": self.group_size}


# -- the shared quantizer ------------------------------------------------------------------------

def _round_up_f32(s: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounded towards +inf (so the stored scale is never below ``s``)."""
    s32 = s.astype(np.float32)
    low = s32.astype(np.float64) < s
    if np.any(low):
        s32 = np.where(low, np.nextafter(s32, np.float32(np.inf)), s32)
    return s32


def group_params(w: np.ndarray, bits: int, grid: bool | str) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (float64 holding integers, or float32 values for the
    min/max grid; 0 when symmetric) per column of ``w [rows, N]`` (one group)."""
    grid = grid_name(grid)
    qmin, qmax = code_range(bits, grid)
    w = np.asarray(w, np.float64)
    if grid == "symmetric":
        amax = np.max(np.abs(w), axis=0)
        s = amax / ((qmax - qmin) / 2.0)
    elif grid == "asymmetric":
        lo = np.minimum(np.min(w, axis=0), 0.0)
        hi = np.maximum(np.max(w, axis=0), 0.0)
        s = (hi - lo) / float(qmax - qmin)
    else:
        lo, hi = np.min(w, axis=0), np.max(w, axis=0)
        s = (hi - lo) / float(qmax - qmin)
    zero = s == 0
    s32 = _round_up_f32(np.where(zero, 1.0, s))
    if grid == "symmetric":
        z = np.zeros(w.shape[1])
    elif grid == "asymmetric":
        z = np.where(zero, 0.0, np.clip(np.rint(-lo / s32.astype(np.float64)), qmin, qmax))
    else:  # a constant group: scale 1, code 0 is the constant (z = -c)
        z = (-lo / s32.astype(np.float64)).astype(np.float32).astype(np.float64)
    return s32, z


def quantize_codes(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, grid: bool | str) -> np.ndarray:
    """``clip(rint(w / s + z))`` as float64 integers (rows of ``w`` share ``scale``, ``zero``;
    the same as ``rint(w / s) + z`` for an integer zero point)."""
    qmin, qmax = code_range(bits, grid)
    return np.clip(np.rint(np.asarray(w, np.float64) / scale.astype(np.float64) + zero), qmin, qmax)


def _dequant_rows(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """The float32 dequantization of float64 integer codes, as float64 (``q - zero`` is exact in
    float64 for integer and float32 zero points alike; its float32 rounding is the kernels')."""
    return ((q - zero).astype(np.float32) * scale).astype(np.float64)


def _weight(w) -> np.ndarray:
    w = np.asarray(w, np.float64)
    if w.ndim != 2:
        raise ValueError(f"the weight must be 2-D [in, out], got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("the weight holds NaN or infinity")
    return w


def _pack(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, group_size: int,
          grid: bool | str) -> QuantizedWeight:
    grid = grid_name(grid)
    dt = np.int8 if grid == "symmetric" else np.uint8
    if group_size == 0:
        scales, zeros = scales[0], zeros[0]
    zdt = np.float32 if grid == "minmax" else dt
    return QuantizedWeight(q.astype(dt), np.ascontiguousarray(scales, np.float32),
                           None if grid == "symmetric" else zeros.astype(zdt), bits, group_size, grid)


def quantize_rtn(w: np.ndarray, bits: int = 4, group_size: int = 128, grid: bool | str = True) -> QuantizedWeight:
    """Round-to-nearest (half to even) quantization of ``w [K, N]`` with each group's scale from
    its abs-max (symmetric), its 0-including min/max range (asymmetric) or its own range (minmax);
    ``grid`` as ``grid_name`` takes it."""
    w = _weight(w)
    g = check_group_size(group_size)
    k, n = w.shape
    ng = num_groups(k, g)
    q = np.empty((k, n))
    scales, zeros = np.empty((ng, n), np.float32), np.empty((ng, n))
    step = g or k
    for j in range(ng):
        rows = slice(j * step, min((j + 1) * step, k))
        scales[j], zeros[j] = group_params(w[rows], bits, grid)
        q[rows] = quantize_codes(w[rows], scales[j], zeros[j], bits, grid)
    return _pack(q, scales, zeros, bits, g, grid)


# -- calibration statistics ----------------------------------------------------------------------

class HessianAccumulator:
    """``H = 2 XᵀX / n`` over calibration rows, accumulated batch by batch in float64 (the sum
    ``XᵀX`` and the row count are kept, so the result does not depend on the batching)."""

    def __init__(self, features: int):
        self.features = int(features)
        self.gram = np.zeros((self.features, self.features))
        self.rows = 0

    def add(self, x: np.ndarray) -> HessianAccumulator:
        """Add activations ``[..., K]`` (every leading position is a row; drop padded positions
        first, e.g. with ``activations.rows``)."""
        x = np.asarray(x, np.float64)
        if x.shape[-1] != self.features:
            raise ValueError(f"expected {self.features} input features, got shape {x.shape}")
        x = x.reshape(-1, self.features)
        self.gram += x.T @ x
        self.rows += x.shape[0]
        return self

    def add_gram(self, gram: np.ndarray, rows: int) -> HessianAccumulator:
        """Add precomputed ``XᵀX`` over ``rows`` rows (what ``activations.input_gram`` returns)."""
        self.gram += np.asarray(gram, np.float64)
        self.rows += int(rows)
        return self

    def hessian(self) -> np.ndarray:
        return hessian_from_gram(self.gram, self.rows)


def hessian_from_gram(gram: np.ndarray, rows: int) -> np.ndarray:
    """``2 · gram / rows`` (zeros when there are no rows)."""
    g = np.asarray(gram, np.float64)
    return 2.0 * g / rows if rows > 0 else np.zeros_like(g)


def hessian_from_inputs(x_rows: np.ndarray) -> np.ndarray:
    """``H = 2 XᵀX / n`` (float64) of activation rows ``[n, K]`` (or ``[..., K]``)."""
    x = np.asarray(x_rows)
    return HessianAccumulator(x.shape[-1]).add(x).hessian()


def output_error(w: np.ndarray, w_hat: np.ndarray, x: np.ndarray | None = None,
                 gram: np.ndarray | None = None) -> float:
    """``‖X (W − W_hat)‖_F`` on rows ``x``, or ``sqrt(tr(Eᵀ G E))`` from ``gram = XᵀX`` (the same
    number without the rows); ``‖W − W_hat‖_F`` with neither."""
    e = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    if x is not None:
        return float(np.linalg.norm(np.asarray(x, np.float64).reshape(-1, e.shape[0]) @ e))
    if gram is not None:
        return float(np.sqrt(max(np.einsum("kn,kn->", e, np.asarray(gram, np.float64) @ e), 0.0)))
    return float(np.linalg.norm(e))


# -- GPTQ ----------------------------------------------------------------------------------------

def _inverse_cholesky_upper(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper ``U`` with ``UᵀU = (H + λI)⁻¹``, ``λ = damp · mean(diag H)``; λ grows tenfold (up to
    five times) while the damped matrix is not numerically positive definite."""
    k = h.shape[0]
    mean_diag = float(np.mean(np.diag(h))) if k else 1.0
    if not np.isfinite(mean_diag) or mean_diag <= 0:
        mean_diag = 1.0
    eye = np.eye(k)
    lam = max(float(damp), 0.0) * mean_diag
    for _ in range(6):
        try:
            low = np.linalg.cholesky(h + lam * eye)
            low_inv = np.linalg.solve(low, eye)
            h_inv = low_inv.T @ low_inv
            return np.linalg.cholesky(0.5 * (h_inv + h_inv.T)).T
        except np.linalg.LinAlgError:
            lam = max(lam * 10.0, 1e-6 * mean_diag)
    raise np.linalg.LinAlgError("the damped Hessian is not positive definite (raise damp)")


def quantize_gptq(w: np.ndarray, hessian: np.ndarray, bits: int = 4, group_size: int = 128,
                  grid: bool | str = True, damp: float = 0.01, block_size: int = 128,
                  act_order: bool = False) -> QuantizedWeight:
    """GPTQ: quantize ``w [K, N]`` row by row along K (the reference's columns), feeding each
    row's error, weighted by the inverse Hessian's Cholesky factor, into the rows not yet
    quantized, so the calibration output error ``‖X W − X W_hat‖`` is (approximately) minimal.

    ``hessian``: ``2 XᵀX / n`` of the layer's calibration inputs (``hessian_from_inputs``,
    ``HessianAccumulator``; any positive multiple gives the same result). As in the reference:
    inputs whose diagonal is 0 (dead: never non-zero on calibration data) get their weight rows
    zeroed and diagonal 1; ``damp · mean(diag H)`` is added to the diagonal; the error feedback is
    exact inside blocks of ``block_size`` rows and applied lazily (one matmul) across blocks;
    per-channel scales are fixed up front; a group's scales are computed when its first row is
    reached, from the not-yet-quantized weights as updated so far *across* blocks (the reference
    reads the global weight, which does not yet hold the in-block updates of earlier rows of the
    same block; reading the block's working copy instead made no systematic difference, ±0.3 % of
    the output error on MiniLM and synthetic layers, so the reference's choice is kept and
    results stay comparable with published GPTQ numbers).

    Differences from the reference, each deliberate:

    * ``act_order=True`` (rows quantized in order of decreasing ``diag H``) uses *static groups*:
      every group's scale comes from the original (dead-zeroed) weight before any update, so row
      ``k`` keeps group ``k // G`` of the original order and ``dequantize()`` is unchanged;
    * per-channel scales are computed after the dead rows are zeroed;
    * when the damped Hessian is not positive definite the damping grows instead of failing.
    """
    w = _weight(w)
    g = check_group_size(group_size)
    k, n = w.shape
    h = np.array(hessian, np.float64)
    if h.shape != (k, k):
        raise ValueError(f"the Hessian must be [{k}, {k}] for a weight with {k} input features, got {h.shape}")
    if not np.all(np.isfinite(h)):
        raise ValueError("the Hessian holds NaN or infinity")
    code_range(bits, grid)
    h = 0.5 * (h + h.T)
    w = w.copy()
    dead = np.diag(h) <= 0
    if np.any(dead):
        h[dead, :] = 0.0
        h[:, dead] = 0.0
        h[dead, dead] = 1.0
        w[dead, :] = 0.0

    ng = num_groups(k, g)
    scales, zeros = np.empty((ng, n), np.float32), np.empty((ng, n))
    static = g == 0 or act_order
    if static:  # every group's parameters from the weight before any update
        step = g or k
        for j in range(ng):
            scales[j], zeros[j] = group_params(w[j * step:(j + 1) * step], bits, grid)

    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    if act_order:
        w, h = w[perm], h[perm][:, perm]
    groups = group_index(k, g)[perm]  # the (original) group of each row in quantization order
    u = _inverse_cholesky_upper(h, damp)

    bs = max(int(block_size), 1)
    q = np.empty((k, n))
    for i1 in range(0, k, bs):
        i2 = min(i1 + bs, k)
        w1 = w[i1:i2].copy()
        err1 = np.empty_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = i1 + i
            j = groups[row]
            if not static and row % g == 0:
                scales[j], zeros[j] = group_params(w[row:row + g], bits, grid)
            qi = quantize_codes(w1[i], scales[j], zeros[j], bits, grid)
            q[row] = qi
            e = (w1[i] - _dequant_rows(qi, scales[j], zeros[j])) / u1[i, i]
            w1[i + 1:] -= np.outer(u1[i, i + 1:], e)
            err1[i] = e
        if i2 < k:
            w[i2:] -= u[i1:i2, i2:].T @ err1
    if act_order:
        q = q[np.argsort(perm)]
    return _pack(q, scales, zeros, bits, g, grid)


# -- AWQ-style per-input-channel scaling ----------------------------------------------------------

@dataclass
class AwqResult:
    """``W ≈ diag(1/scales) · quantized.dequantize()``: the caller divides the layer's input by
    ``scales`` (folded into the producer, as ``smoothquant.apply_smoothing`` describes) and
    stores ``quantized``. ``error`` and ``rtn_error`` are calibration output errors
    ``‖X(W − Ŵ)‖_F``; ``alpha == 0`` (scales all 1) is plain RTN, so ``error <= rtn_error``."""

    scales: np.ndarray  # [K] float64
    quantized: QuantizedWeight  # of diag(scales) · W
    alpha: float
    error: float
    rtn_error: float


def awq_search(w: np.ndarray, act_mean_abs: np.ndarray, gram: np.ndarray, bits: int = 4,
               group_size: int = 128, weight_grid: bool | str = True, alpha_steps: int = 20) -> AwqResult:
    """AWQ's scale search (Lin et al. 2023): ``s_k = mean|x_k|^alpha`` (normalized by
    ``sqrt(max · min)``; inactive channels get 1) for ``alpha`` in ``0, 1/n, …, (n-1)/n`` (``n = alpha_steps``);
    the one whose RTN-quantized ``diag(s) W`` has the smallest output error ``tr(Eᵀ G E)`` on the
    calibration second moment ``gram = XᵀX`` wins."""
    w = _weight(w)
    a = np.asarray(act_mean_abs, np.float64).reshape(-1)
    if a.shape[0] != w.shape[0]:
        raise ValueError(f"act_mean_abs has {a.shape[0]} channels, the weight {w.shape[0]} input features")
    live = np.isfinite(a) & (a > 0)
    best = None
    for i in range(max(int(alpha_steps), 1)):
        alpha = i / max(int(alpha_steps), 1)
        s = np.ones_like(a)
        if alpha > 0 and np.any(live):
            s[live] = np.maximum(a[live] ** alpha, 1e-4)
            s[live] /= np.sqrt(s[live].max() * s[live].min())
        qw = quantize_rtn(w * s[:, None], bits, group_size, weight_grid)
        err = output_error(w, qw.dequantize().astype(np.float64) / s[:, None], gram=gram)
        if best is None or err < best[0]:
            best = (err, alpha, s, qw)
        if i == 0:
            rtn = err
    err, alpha, s, qw = best
    return AwqResult(s, qw, alpha, err, rtn)


def error_ratio(w: np.ndarray, first: QuantizedWeight, second: QuantizedWeight,
                x: np.ndarray | None = None, gram: np.ndarray | None = None) -> float:
    """``output_error(first) / output_error(second)`` (e.g. GPTQ over RTN)."""
    a = output_error(w, first.dequantize(), x, gram)
    b = output_error(w, second.dequantize(), x, gram)
    return a / b if b > 0 else (0.0 if a == 0 else float("inf"))


def quantize(w: np.ndarray, method: str = "gptq", bits: int = 4, group_size: int = 128, grid: bool | str = True,
             hessian: np.ndarray | None = None, **options) -> QuantizedWeight:
    """``quantize_rtn`` or ``quantize_gptq`` by name (GPTQ needs ``hessian``)."""
    if method == "rtn":
        return quantize_rtn(w, bits, group_size, grid)
    if method == "gptq":
        if hessian is None:
            raise ValueError("gptq needs the layer's input Hessian")
        return quantize_gptq(w, hessian, bits, group_size, grid, **options)
    raise ValueError(f"method must be rtn or gptq, got {method!r}")

