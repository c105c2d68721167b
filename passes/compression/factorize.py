"""Low-rank factorizations of a weight ``W [in, out]``: plain SVD, and activation-aware
(whitened) SVD that minimizes the error of the layer's *output* on calibration inputs.

Both are computed once, at full rank, as a ``Spectrum``; the factors and the truncation error at
any rank are then read off it. Whitening (as in SVD-LLM): with the input second moment
``G = XᵀX / n`` (damped: ``G + damping·mean(diag G)·I``) and its symmetric square root ``S``,

    ‖X(W − AB)‖² = ‖S(W − AB)‖²   (up to the damping term),

so truncating the SVD of ``S W`` and mapping the left factor back through ``S⁻¹`` gives the
rank-r factors with the smallest output error. All arithmetic is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("whitened", "svd")


@dataclass(frozen=True)
class Spectrum:
    """``W = Σ_j left[:, j] · sigma[j] · right[j]`` (right rows orthonormal), with each
    component's share of the output energy ``‖XW‖²`` measured on the *undamped* statistics."""

    left: np.ndarray  # [in, k]
    sigma: np.ndarray  # [k], descending
    right: np.ndarray  # [k, out]
    energy: np.ndarray  # [k]: ‖X · left_j σ_j right_j‖² / n, the error its removal adds
    total: float  # ‖XW‖² / n (‖W‖² without statistics)

    @property
    def full_rank(self) -> int:
        return int(self.sigma.size)

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """``A [in, r]``, ``B [r, out]`` with ``A @ B`` the rank-r truncation (the singular
        values split evenly between the two, which keeps both well scaled in float32)."""
        r = int(rank)
        root = np.sqrt(self.sigma[:r])
        return self.left[:, :r] * root, root[:, None] * self.right[:r]

    def error(self, rank: int) -> float:
        """Relative squared output error of the rank-r truncation: ‖X(W − AB)‖² / ‖XW‖²."""
        return float(self.energy[int(rank):].sum() / self.total) if self.total > 0 else 0.0

    def errors(self) -> np.ndarray:
        """``error(r)`` for r = 0 .. full rank."""
        tail = np.concatenate([np.cumsum(self.energy[::-1])[::-1], [0.0]])
        return tail / self.total if self.total > 0 else np.zeros_like(tail)

    def rank_within(self, tolerance: float) -> int:
        """The smallest rank whose relative output error (a norm ratio, not squared) is at
        most ``tolerance``."""
        ok = np.nonzero(np.sqrt(np.maximum(self.errors(), 0.0)) <= tolerance)[0]
        return int(ok[0]) if ok.size else self.full_rank


def thin_svd(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m = u · diag(s) · vt`` (thin, s descending) through the eigendecomposition of the smaller
    Gram matrix. LAPACK's SVD (gesdd) through OpenBLAS slowed 80x with two threads on a busy
    2-core machine (8 s for 1536x384), eigh does not; and ``u_j s_j = m v_j`` exactly, so the
    factors reproduce ``m`` at full rank whatever the conditioning."""
    if m.shape[0] < m.shape[1]:
        v, s, ut = thin_svd(m.T)
        return ut.T, s, v.T
    lam, v = np.linalg.eigh(m.T @ m)
    v = v[:, ::-1]
    mv = m @ v
    s = np.linalg.norm(mv, axis=0)
    order = np.argsort(-s, kind="stable")
    v, mv, s = v[:, order], mv[:, order], s[order]
    u = np.divide(mv, s, out=np.zeros_like(mv), where=s > 0)
    return u, s, v.T


def whitener(gram: np.ndarray, rows: int, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """``S = G_d^½`` and ``S⁻¹`` for the damped second moment ``G_d`` (symmetric, via eigh:
    unlike Cholesky it does not fail on the rank-deficient statistics of a small calibration set)."""
    g = np.asarray(gram, np.float64) / max(rows, 1)
    scale = float(np.mean(np.diag(g)))
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    g = 0.5 * (g + g.T)
    g[np.diag_indices_from(g)] += max(damping, 1e-10) * scale
    lam, q = np.linalg.eigh(g)
    lam = np.maximum(lam, 1e-12 * scale)
    root = np.sqrt(lam)
    return (q * root) @ q.T, (q / root) @ q.T


def spectrum(weight: np.ndarray, method: str = "whitened", gram: np.ndarray | None = None, rows: int = 0,
             damping: float = 0.01, whitening: tuple[np.ndarray, np.ndarray] | None = None) -> Spectrum:
    """The full-rank factorization of ``weight [in, out]`` by ``method`` ("whitened" needs the
    input statistics ``gram = XᵀX`` over ``rows`` rows; "svd" uses them, when given, only to
    measure errors in output space). ``whitening``: ``whitener(gram, rows, damping)`` when the
    caller already has it (projections that share an input share it)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    w = np.asarray(weight, np.float64)
    g = None if gram is None else np.asarray(gram, np.float64) / max(rows, 1)
    if method == "whitened":
        if g is None:
            raise ValueError("the whitened method needs input statistics")
        s, s_inv = whitening if whitening is not None else whitener(gram, rows, damping)
        u, sigma, vt = thin_svd(s @ w)
        left = s_inv @ u
    else:
        left, sigma, vt = thin_svd(w)
    if g is None:
        energy = sigma ** 2 * np.einsum("ij,ij->j", left, left)
        total = float(np.sum(w * w))
    else:
        energy = sigma ** 2 * np.einsum("ij,ij->j", left, g @ left)
        total = float(np.einsum("ij,ij->", w, g @ w))
    return Spectrum(left, sigma, vt, np.maximum(energy, 0.0), total)


def output_error(weight: np.ndarray, a: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    """Measured relative output error ‖X(W − AB)‖ / ‖XW‖ on rows ``x`` (for tests and reports)."""
    w = np.asarray(weight, np.float64)
    x = np.asarray(x, np.float64)
    ref = x @ w
    return float(np.linalg.norm(ref - (x @ np.asarray(a, np.float64)) @ np.asarray(b, np.float64))
                 / max(np.linalg.norm(ref), 1e-300))


def break_even(in_features: int, out_features: int) -> float:
    """The rank at which two factors hold as many parameters (and cost as many FLOPs) as W."""
    return in_features * out_features / (in_features + out_features)


def saves(in_features: int, out_features: int, rank: int) -> bool:
    """Whether rank-r factors are strictly smaller than W (r < mn / (m + n))."""
    return 0 < rank and rank * (in_features + out_features) < in_features * out_features
