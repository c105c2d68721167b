"""Handlers of the ops that move no data in the IR: aliases, copies, dropout at inference, and
dtype conversions (a ``Cast`` where the dtype changes)."""

from __future__ import annotations

from .importer import Importer, fake_of, out_dtype, out_fake
from .registry import handles, overload


@handles("alias", "detach", "detach_", "clone", "contiguous", "lift_fresh_copy", "lift_fresh", "dropout", "feature_dropout",
         "alpha_dropout", "feature_alpha_dropout", "view_as", "expand_as")
def _identity(m: Importer, node, a):
    src = a.get("input", a.get("self"))
    if node.target == overload("view_as"):
        return m.reshape(m.v(src), fake_of(src).shape, out_fake(node).shape)
    if node.target == overload("expand_as"):
        return m.expand(m.v(src), fake_of(src).shape, out_fake(node).shape)
    return m.v(src)


@handles("native_dropout")
def _native_dropout(m: Importer, node, a):
    x = m.v(a["input"])
    return [x, None]


@handles("_to_copy", "to.dtype", "to.dtype_layout", "to.device", "to.other", "to.prim_dtype", "to.prim_Device",
         "type_as", "_autocast_to_reduced_precision", "_autocast_to_full_precision")
def _to(m: Importer, node, a):
    return m.cast(m.v(a["self"]), out_dtype(node))
