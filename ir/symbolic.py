"""Arithmetic on symbolic dimensions.

Encoder graphs only multiply and divide their symbolic dims (``batch*seq`` rows after a
flatten, ``-1`` in a reshape); a decoder's KV cache adds them (``past+seq`` keys after the new
ones are appended). A dim is an int, a name, or a polynomial written in canonical form: monomials
(an integer coefficient times a product of named symbols, ``2*batch*seq``) joined by ``+`` / ``-``,
highest degree first, names sorted (``past+seq``, ``batch*past+batch*seq``). Equal polynomials
have equal strings, so dims still compare with ``==``. Anything else (data-dependent sizes) is
``None``.
"""

from __future__ import annotations

import numbers
import re
from collections import Counter
from collections.abc import Iterable, Mapping

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


class Polynomial:
    """A sum of monomials: ``terms`` maps a sorted tuple of symbols (with repeats) to its
    coefficient; zero coefficients are dropped."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict[tuple[str, ...], int]):
        self.terms = {k: c for k, c in terms.items() if c}

    @staticmethod
    def of(dim: Dim) -> "Polynomial | None":
        if dim is None:
            return None
        if isinstance(dim, int):
            return Polynomial({(): dim})
        text = dim.replace(" ", "")
        if not text or text[-1] in "+-":
            return None
        terms: Counter = Counter()
        for term in re.split(r"(?<=[^*+-])(?=[+-])", text):  # split before a sign not after '*'
            sign = -1 if term.startswith("-") else 1
            m = Monomial.of(term.lstrip("+-") if term[:1] in "+-" else term)
            if m is None:
                return None
            terms[tuple(sorted(m.symbols.elements()))] += sign * m.coef
        return Polynomial(terms)

    def __add__(self, other: "Polynomial") -> "Polynomial":
        out = Counter(self.terms)
        out.update(other.terms)
        return Polynomial(out)

    def __mul__(self, other: "Polynomial") -> "Polynomial":
        out: Counter = Counter()
        for ka, ca in self.terms.items():
            for kb, cb in other.terms.items():
                out[tuple(sorted(ka + kb))] += ca * cb
        return Polynomial(out)

    def divide(self, other: "Polynomial") -> "Polynomial | None":
        """Exact division by a monomial (every term divides), or by an equal polynomial (1);
        None otherwise."""
        if self.terms == other.terms and self.terms:
            return Polynomial({(): 1})
        if len(other.terms) != 1:
            return None
        (kb, cb), = other.terms.items()
        out = {}
        for ka, ca in self.terms.items():
            q = Monomial(ca, Counter(ka)).divide(Monomial(cb, Counter(kb)))
            if q is None:
                return None
            out[tuple(sorted(q.symbols.elements()))] = q.coef
        return Polynomial(out)

    def evaluate(self, bindings: Mapping[str, int]) -> int | None:
        """The value with every symbol bound, or None when one is missing."""
        total = 0
        for syms, coef in self.terms.items():
            v = coef
            for s in syms:
                if s not in bindings:
                    return None
                v *= int(bindings[s])
            total += v
        return total

    @property
    def symbols(self) -> set[str]:
        return {s for syms in self.terms for s in syms}

    def to_dim(self) -> Dim:
        if not self.terms:
            return 0
        if set(self.terms) == {()}:
            return self.terms[()]
        text = ""
        for syms, coef in sorted(self.terms.items(), key=lambda kv: (-len(kv[0]), kv[0])):
            term = Monomial(abs(coef), Counter(syms)).to_dim()
            text += ("-" if coef < 0 else ("+" if text else "")) + str(term)
        return text


def mul_dims(dims: Iterable[Dim]) -> Dim:
    """The product of dims; None if any is unknown."""
    acc = Polynomial({(): 1})
    for d in dims:
        p = Polynomial.of(d)
        if p is None:
            return None
        acc = acc * p
    return acc.to_dim()


def div_dims(a: Dim, b: Dim) -> Dim:
    pa, pb = Polynomial.of(a), Polynomial.of(b)
    if pa is None or pb is None:
        return None
    q = pa.divide(pb)
    return None if q is None else q.to_dim()


def add_dims(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    pa, pb = Polynomial.of(a), Polynomial.of(b)
    if pa is None or pb is None:
        return None
    return (pa + pb).to_dim()


def sub_dims(a: Dim, b: Dim) -> Dim:
    pb = Polynomial.of(b)
    return None if pb is None else add_dims(a, (pb * Polynomial({(): -1})).to_dim())


def eval_dim(dim: Dim, bindings: Mapping[str, int]) -> int | None:
    """The value of a (possibly symbolic) dim under ``bindings``; None if not determined."""
    if isinstance(dim, int):
        return dim
    p = Polynomial.of(dim)
    return None if p is None else p.evaluate(bindings)


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


def substitute_dim(dim: Dim, sizes: Mapping[str, Dim]) -> Dim:
    """``dim`` with the symbols in ``sizes`` replaced by their values — sizes, or dims of other
    symbols (``past+seq`` with ``seq=1`` is ``past+1``; ``total`` with ``total=past+seq`` is
    ``past+seq``); unknown dims stay unknown."""
    if dim is None or isinstance(dim, int):
        return dim
    p = Polynomial.of(dim)
    if p is None or not (p.symbols & set(sizes)):
        return dim
    out = Polynomial({})
    for syms, coef in p.terms.items():
        term = Polynomial({tuple(s for s in syms if s not in sizes): coef})
        for s in syms:
            if s in sizes:
                value = Polynomial.of(int(sizes[s]) if isinstance(sizes[s], numbers.Integral) else sizes[s])
                if value is None:
                    return None
                term = term * value
        out = out + term
    return out.to_dim()
