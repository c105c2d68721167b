"""optc's own legalizations of Relax ops, where TVM's default does not suit: passed to
``LegalizeOps`` by every target (``Target.legalize_passes``)."""

from __future__ import annotations

from tvm import relax, te, topi


def take_in_range_te(data: te.Tensor, indices: te.Tensor, axis: int) -> te.Tensor:
    """``take`` that reads ``data`` at ``indices`` directly: TVM's "fast" mode, for indices the
    lowering proved inside ``[0, extent)``. topi's own fast take computes the same but warns at
    every build that it would segfault out of bounds — noise in every compile's output."""
    axis %= len(data.shape)
    k = len(indices.shape)
    shape = [*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]]

    def read(*ax):
        where = indices(*ax[axis:axis + k]) if k else indices()
        return data(*ax[:axis], where, *ax[axis + k:])

    return te.compute(shape, read, name="T_take", tag="injective")


def _take(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    axis = call.attrs.axis
    if str(call.attrs.mode) == "fast" and axis is not None:
        return bb.call_te(take_in_range_te, call.args[0], call.args[1], int(axis), primfunc_name_hint="take")
    return bb.call_te(topi.take, call.args[0], call.args[1], axis, mode=call.attrs.mode, primfunc_name_hint="take")


LEGALIZE = {"relax.take": _take}
