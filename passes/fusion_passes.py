"""Fusion rewrites (``passes/fusion/*.py``, each ``def fuse_<pattern>(graph) -> int``) wrapped as
registered passes: ``fuse-<pattern>`` for each, and ``fuse`` running them all in order.

The functions are discovered when ``optc.passes`` is imported; while ``passes/fusion`` holds
none, no fusion pass is registered and the default pipeline has no ``fuse`` step.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, ClassVar

from .base import Pass, PassResult, register_pass

# Patterns that must run before others (bigger patterns first); the rest follow by name.
ORDER = ["attention", "layernorm", "rmsnorm", "gelu", "silu", "rotary", "residual_layernorm", "linear",
         "conv_bn", "conv_bias_relu"]

_FUSIONS: dict[str, Callable] = {}


def discover() -> dict[str, Callable]:
    try:
        pkg = importlib.import_module(f"{__package__}.fusion")
    except ImportError:
        return {}
    if getattr(pkg, "ALL_FUSIONS", None):  # the package's own order, bigger patterns first
        return {fn.__name__[len("fuse_"):]: fn for fn in pkg.ALL_FUSIONS}
    found: dict[str, Callable] = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name.startswith("test"):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for attr, fn in vars(mod).items():
            if attr.startswith("fuse_") and callable(fn) and getattr(fn, "__module__", None) == mod.__name__:
                found[attr[len("fuse_"):]] = fn
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def _make_pass(pattern: str, fn: Callable) -> type[Pass]:
    doc = (fn.__doc__ or f"Fuse the {pattern} pattern.").strip().splitlines()[0]

    def run(self, graph, ctx) -> PassResult:
        n = int(fn(graph))
        return PassResult(n > 0, {"matched": {pattern: n}})

    cls = type(f"Fuse_{pattern}", (Pass,), {"__doc__": doc, "name": f"fuse-{pattern.replace('_', '-')}", "run": run,
                                            "__annotations__": {}})
    return register_pass(dataclass(cls))


@dataclass
class Fuse(Pass):
    """Run every fusion rewrite (fuse-<pattern> passes) in order; reports matches per pattern."""

    name: ClassVar[str] = "fuse"

    def run(self, graph, ctx) -> PassResult:
        matched = {p: int(fn(graph)) for p, fn in _FUSIONS.items()}
        return PassResult(any(matched.values()), {"matched": matched})


def register_fusions() -> None:
    found = discover()
    if found:
        register_pass(Fuse)
    for pattern, fn in found.items():
        if pattern not in _FUSIONS:
            _FUSIONS[pattern] = fn
            _make_pass(pattern, fn)


register_fusions()
