"""SmoothQuant's math (Xiao et al. 2022): move activation outliers into the weights with a
per-input-channel factor ``s [K]``, so that both ``X / s`` and ``diag(s) W`` quantize well:

    X W = (X diag(s)⁻¹) (diag(s) W)        (exact; weights in MatMul orientation [K, N])

``smoothing_factors`` computes ``s``, ``apply_smoothing`` scales the weight(s); the division of
the input is folded into whatever produces it (``fold_into_layernorm``, ``fold_into_producer``).
Only the arithmetic lives here; the quantize pass finds the producer and rewrites the graph.
All arithmetic is float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SCALE = 1e-4
MAX_SCALE = 1e4
"""Default clip range of the factors. Four decades either way covers the outliers of trained
transformers (activation channels ~100x the median, alpha 0.5: s ~ 10-30) while keeping a folded
LayerNorm gamma / beta and the scaled weight far inside float32's range and precision, and it
stops a nearly-zero weight row (``max|W_k| -> 0``) from dividing its input channel into nothing."""


def _weights(w: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    ws = [w] if isinstance(w, np.ndarray) else list(w)
    if not ws:
        raise ValueError("at least one weight is needed")
    out = [np.asarray(x, np.float64) for x in ws]
    k = out[0].shape[0]
    for x in out:
        if x.ndim != 2 or x.shape[0] != k:
            raise ValueError(f"weights sharing an input must all be [K={k}, N_i], got {[y.shape for y in out]}")
    return out


def weight_absmax(w: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """``max_j |W_kj|`` per input channel over every weight that reads the input."""
    return np.max(np.stack([np.max(np.abs(x), axis=1) for x in _weights(w)]), axis=0)


def smoothing_factors(act_absmax: np.ndarray, w: np.ndarray | Sequence[np.ndarray], alpha: float = 0.5,
                      min_scale: float = MIN_SCALE, max_scale: float = MAX_SCALE) -> np.ndarray:
    """``s_k = max|X_k|^alpha / max|W_k,:|^(1-alpha)``, clipped to ``[min_scale, max_scale]``.

    ``act_absmax [K]``: the calibration max of |X| per input channel. ``w``: the weight ``[K, N]``,
    or a list of the weights that share this input (Q, K and V; gate and up): their rows' max is
    taken together, since one ``s`` must serve them all. ``alpha`` is the migration strength
    (0: nothing moves; 1: every activation channel becomes 1, all the range goes to W). A channel
    with zero activation or zero weight row (or a non-finite ratio) gets ``s = 1``."""
    a = np.asarray(act_absmax, np.float64).reshape(-1)
    wmax = weight_absmax(w)
    if a.shape != wmax.shape:
        raise ValueError(f"act_absmax has {a.size} channels, the weight {wmax.size} input features")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0 < min_scale <= 1 <= max_scale:
        raise ValueError("need 0 < min_scale <= 1 <= max_scale")
    live = (a > 0) & (wmax > 0) & np.isfinite(a) & np.isfinite(wmax)
    s = np.ones_like(a)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        s[live] = a[live] ** alpha / wmax[live] ** (1.0 - alpha)
    s[~np.isfinite(s)] = 1.0
    return np.clip(s, min_scale, max_scale)


def apply_smoothing(w: np.ndarray | Sequence[np.ndarray], s: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """``W' = diag(s) W`` (float64) for one weight ``[K, N]`` or each of a list sharing the input.

    The caller must divide the layer's input by ``s`` in the same rewrite, or the output changes
    — ``(X / s) W' = X W``. Where the division goes:

    * the input is a LayerNorm / RMSNorm output: ``gamma / s`` and ``beta / s``
      (``fold_into_layernorm``). Valid only when *every* consumer of the norm's output is
      smoothed with the same ``s`` — a post-LN BERT block's LayerNorm also feeds the residual
      Add, so there the division must stay an explicit ``Mul(x, 1/s)`` (or the residual branch
      must be multiplied back by ``s``);
    * the input is another projection's output (V → attention → O; a linear before a reshape):
      divide that projection's output columns and bias by ``s`` (``fold_into_producer``), valid
      when everything in between commutes with a per-channel scale (attention's ``P·V``,
      reshapes/transposes that keep the channel's identity — not GELU, not softmax, not a norm);
    * otherwise insert ``Mul(x, 1/s)`` before the (quantize of the) input.

    The activation range the input quantizer must then cover is ``act_absmax / s``
    (``smoothed_absmax``)."""
    s = np.asarray(s, np.float64).reshape(-1, 1)
    ws = _weights(w)
    if s.shape[0] != ws[0].shape[0]:
        raise ValueError(f"s has {s.shape[0]} channels, the weight {ws[0].shape[0]} input features")
    out = [s * x for x in ws]
    return out[0] if isinstance(w, np.ndarray) else out


def smoothed_absmax(act_absmax: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-channel activation max after the input is divided by ``s``."""
    return np.asarray(act_absmax, np.float64) / np.asarray(s, np.float64)


def fold_into_layernorm(gamma: np.ndarray, beta: np.ndarray | None, s: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(gamma / s, beta / s)``: the norm's affine part producing ``X / s`` (see
    ``apply_smoothing`` for when this is valid)."""
    s = np.asarray(s, np.float64)
    return np.asarray(gamma, np.float64) / s, None if beta is None else np.asarray(beta, np.float64) / s


def fold_into_producer(w_prev: np.ndarray, b_prev: np.ndarray | None, s: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """``(W_prev / s, b_prev / s)`` for the projection ``[J, K]`` whose output columns are the
    smoothed layer's input channels."""
    s = np.asarray(s, np.float64)
    return np.asarray(w_prev, np.float64) / s[None, :], None if b_prev is None else np.asarray(b_prev, np.float64) / s
