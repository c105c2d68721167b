"""Arithmetic on symbolic dimensions.

Transformer graphs only ever multiply and divide their symbolic dims (``batch*seq`` rows after a
flatten, ``-1`` in a reshape), so a dim is modelled as a monomial: an integer coefficient times a
product of named symbols. Anything outside that (sums, data-dependent sizes) becomes ``None``.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from .types import Dim


class Monomial:
    __slots__ = ("coef", "symbols")

    def __init__(self, coef: int, symbols: Counter):
        self.coef = coef
        self.symbols = +symbols  # drop zero counts

    @staticmethod
    def of(dim: Dim) -> "Monomial | None":
        if dim is None:
            return None
        if isinstance(dim, int):
            return Monomial(dim, Counter())
        coef, symbols = 1, Counter()
        for factor in dim.split("*"):
            factor = factor.strip()
            if factor.lstrip("-").isdigit():
                coef *= int(factor)
            elif factor.isidentifier():
                symbols[factor] += 1
            else:
                return None
        return Monomial(coef, symbols)

    def __mul__(self, other: "Monomial") -> "Monomial":
        return Monomial(self.coef * other.coef, self.symbols + other.symbols)

    def divide(self, other: "Monomial") -> "Monomial | None":
        """Exact division, or None when it does not divide."""
        if other.coef == 0 or self.coef % other.coef:
            return None
        rest = Counter(self.symbols)
        rest.subtract(other.symbols)
        if any(v < 0 for v in rest.values()):
            return None
        return Monomial(self.coef // other.coef, rest)

    def to_dim(self) -> Dim:
        if not self.symbols:
            return self.coef
        names = sorted(self.symbols.elements())
        if self.coef == 0:
            return 0
        parts = ([str(self.coef)] if self.coef != 1 else []) + names
        return "*".join(parts)


def mul_dims(dims: Iterable[Dim]) -> Dim:
    """The product of dims; None if any is unknown."""
    acc = Monomial(1, Counter())
    for d in dims:
        m = Monomial.of(d)
        if m is None:
            return None
        acc = acc * m
    return acc.to_dim()


def div_dims(a: Dim, b: Dim) -> Dim:
    ma, mb = Monomial.of(a), Monomial.of(b)
    if ma is None or mb is None:
        return None
    q = ma.divide(mb)
    return None if q is None else q.to_dim()


def add_dims(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if a == 0:
        return b
    if b == 0:
        return a
    ma, mb = Monomial.of(a), Monomial.of(b)
    if ma is not None and mb is not None and ma.symbols == mb.symbols:
        return Monomial(ma.coef + mb.coef, ma.symbols).to_dim()
    return None


def broadcast_dim(a: Dim, b: Dim) -> Dim:
    if a == 1:
        return b
    if b == 1:
        return a
    if a == b:
        return a
    if a is None or b is None:
        # One side is unknown: the other is the result unless it is 1 (handled above).
        return a if b is None else b
    if isinstance(a, int) and isinstance(b, int):
        raise ValueError(f"dims {a} and {b} do not broadcast")
    # Two different symbols: equal at run time or one of them is 1; the result is unknown.
    return None
