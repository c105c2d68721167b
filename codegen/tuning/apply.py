"""Give a module's kernels the tuned schedules a tuning database kept for them."""

from __future__ import annotations

import tvm
from tvm import tirx

from .database import TuningDatabase

__all__ = ["apply_tuned"]


def apply_tuned(mod: tvm.IRModule, db: TuningDatabase) -> tuple[tvm.IRModule, list[str]]:
    """``mod`` with every unscheduled PrimFunc whose verdict in ``db`` is "tuned" replaced by its
    tuned schedule (marked scheduled, so the default rules leave it alone), and their names."""
    if not db.tuned_count():
        return mod, []
    applied = []
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tirx.PrimFunc) or (func.attrs is not None and "tirx.is_scheduled" in func.attrs):
            continue
        sch = db.tuned_schedule(func)
        if sch is None:
            continue
        tuned = sch.mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
        mod[gv] = tuned
        applied.append(gv.name_hint)
    return mod, sorted(applied)
