"""optc's default schedules: untuned code must already be fast.

``relax_passes(target)`` run on the Relax module before legalization (e.g. rewriting a matmul
with a constant weight into a kernel that reads the weight pre-packed at compile time), and
``schedule_rules(target)`` are dlight-style rules applied to every TIR function after fusion.
"""

from __future__ import annotations


def relax_passes(target) -> list:
    """Relax passes that choose kernel implementations and weight layouts for ``target``."""
    return []


def schedule_rules(target) -> list:
    """Schedule rules, most specific first, for ``tvm.s_tir.dlight.ApplyDefaultSchedule``."""
    return []
